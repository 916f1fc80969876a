package api

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/ratelimit"
)

// callerKey is where the service-key guard leaves the calling app.
const callerKey = "mana.caller"

// SetCredits registers the credit endpoints of SPEC §6: the user's own
// (Bearer), the apps' server-to-server ones (X-Service-Key + X-App-Id) and
// the admin ones (Bearer with role admin). Call before serving, after
// SetIdentity.
func (s *Server) SetCredits(cs domain.CreditsService, id domain.Identity) {
	h := &creditHandlers{cs: cs}
	bearer := s.Bearer(id)
	// Credit writes are rate limited per user (the principal, admins
	// included) and per app, after authentication (SPEC §7).
	userWrites, appWrites := s.limitByUser(ratelimit.CreditsUser), s.limitByApp(ratelimit.CreditsApp)
	g := s.api.Group("/credits", bearer)
	g.GET("/balance", h.balance)
	g.POST("/use", h.use, userWrites)
	g.GET("/transactions", h.transactions)
	g.GET("/usage", h.usage)
	g.POST("/holds", h.placeHold, userWrites)
	g.POST("/holds/:id/capture", h.captureHold, userWrites)
	g.POST("/holds/:id/release", h.releaseHold, userWrites)

	in := s.api.Group("/internal/credits", h.serviceKey)
	in.GET("/balance/:userId", h.appBalance)
	in.POST("/use", h.appUse, appWrites)
	in.POST("/refund", h.appRefund, appWrites)
	in.POST("/holds", h.appPlaceHold, appWrites)
	in.POST("/holds/:id/capture", h.appCaptureHold, appWrites)
	in.POST("/holds/:id/release", h.appReleaseHold, appWrites)

	adm := s.api.Group("/admin", bearer, requireAdmin)
	adm.POST("/credits/grant", h.adminGrant, userWrites)
	adm.POST("/credits/adjust", h.adminAdjust, userWrites)
	adm.POST("/credits/refund", h.adminRefund, userWrites)
	adm.GET("/accounts/:userId/balance", h.adminBalance)
	adm.GET("/users", func(c *echo.Context) error {
		email := c.QueryParam("email")
		if email == "" {
			return invalidField("email", "is required")
		}
		u, err := id.FindUser(c.Request().Context(), email)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, u)
	})
}

type creditHandlers struct {
	cs domain.CreditsService
}

func requireAdmin(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		if p, ok := PrincipalOf(c); !ok || !p.IsAdmin() {
			return domain.Errorf(domain.CodeForbidden, "This endpoint needs the admin role.")
		}
		return next(c)
	}
}

// serviceKey authenticates an app by X-Service-Key and X-App-Id.
func (h *creditHandlers) serviceKey(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		key, app := c.Request().Header.Get("X-Service-Key"), c.Request().Header.Get("X-App-Id")
		if key == "" || app == "" {
			return domain.Errorf(domain.CodeUnauthorized, "X-Service-Key and X-App-Id are required.")
		}
		caller, err := h.cs.AuthenticateApp(c.Request().Context(), app, key)
		if err != nil {
			return err
		}
		caller.Meta = requestMeta(c)
		c.Set(callerKey, caller)
		return next(c)
	}
}

func userCaller(c *echo.Context) (domain.Caller, uuid.UUID) {
	p, _ := PrincipalOf(c)
	kind := "user"
	return domain.Caller{Kind: kind, UserID: p.UserID, Meta: requestMeta(c)}, p.UserID
}

func adminCaller(c *echo.Context) domain.Caller {
	p, _ := PrincipalOf(c)
	return domain.Caller{Kind: "admin", UserID: p.UserID, Meta: requestMeta(c)}
}

func appCaller(c *echo.Context) domain.Caller {
	caller, _ := c.Get(callerKey).(domain.Caller)
	return caller
}

func (h *creditHandlers) balance(c *echo.Context) error {
	_, user := userCaller(c)
	b, err := h.cs.Balance(c.Request().Context(), user, c.QueryParam("minPosition"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, b)
}

type useRequest struct {
	Amount         int64          `json:"amount"`
	AppID          string         `json:"appId"`
	Description    string         `json:"description"`
	IdempotencyKey string         `json:"idempotencyKey"`
	Metadata       map[string]any `json:"metadata"`
}

func (r useRequest) input(c *echo.Context) (domain.UseInput, error) {
	key, err := IdempotencyKey(c, r.IdempotencyKey)
	return domain.UseInput{Amount: r.Amount, AppID: r.AppID, Description: r.Description, Metadata: r.Metadata, IdempotencyKey: key}, err
}

func (h *creditHandlers) use(c *echo.Context) error {
	var req useRequest
	if err := Bind(c, &req); err != nil {
		return err
	}
	in, err := req.input(c)
	if err != nil {
		return err
	}
	caller, user := userCaller(c)
	r, err := h.cs.Use(c.Request().Context(), caller, user, in)
	if err != nil {
		return err
	}
	countSpend(c, r)
	return WriteReceipt(c, r)
}

func (h *creditHandlers) transactions(c *echo.Context) error {
	limit, err := intParam(c, "limit", 50, 1, 200)
	if err != nil {
		return err
	}
	offset, err := intParam(c, "offset", 0, 0, 1<<31-1)
	if err != nil {
		return err
	}
	_, user := userCaller(c)
	list, err := h.cs.Transactions(c.Request().Context(), user, limit, offset, c.QueryParam("minPosition"))
	if err != nil {
		return err
	}
	if list == nil {
		list = []domain.Transaction{}
	}
	return c.JSON(http.StatusOK, list)
}

func intParam(c *echo.Context, name string, def, lo, hi int) (int, error) {
	v := c.QueryParam(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, invalidField(name, "must be an integer from "+strconv.Itoa(lo)+" to "+strconv.Itoa(hi))
	}
	return n, nil
}

func dateParam(c *echo.Context, name string, def time.Time) (time.Time, error) {
	v := c.QueryParam(name)
	if v == "" {
		return def, nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t.UTC(), nil
	}
	return time.Time{}, invalidField(name, "must be a date (YYYY-MM-DD) or an RFC 3339 time")
}

func (h *creditHandlers) usage(c *echo.Context) error {
	now := time.Now().UTC()
	to, err := dateParam(c, "to", now)
	if err != nil {
		return err
	}
	from, err := dateParam(c, "from", to.AddDate(0, 0, -30))
	if err != nil {
		return err
	}
	if from.After(to) {
		return invalidField("from", "must not be after to")
	}
	_, user := userCaller(c)
	list, err := h.cs.Usage(c.Request().Context(), user, from, to, c.QueryParam("minPosition"))
	if err != nil {
		return err
	}
	if list == nil {
		list = []domain.UsageDay{}
	}
	return c.JSON(http.StatusOK, list)
}

type holdRequest struct {
	Amount         int64  `json:"amount"`
	AppID          string `json:"appId"`
	TTLSeconds     int    `json:"ttlSeconds"`
	IdempotencyKey string `json:"idempotencyKey"`
}

func (h *creditHandlers) placeHold(c *echo.Context) error {
	var req holdRequest
	if err := Bind(c, &req); err != nil {
		return err
	}
	key, err := IdempotencyKey(c, req.IdempotencyKey)
	if err != nil {
		return err
	}
	caller, user := userCaller(c)
	r, err := h.cs.PlaceHold(c.Request().Context(), caller, user, domain.HoldInput{Amount: req.Amount, AppID: req.AppID, TTLSeconds: req.TTLSeconds, IdempotencyKey: key})
	if err != nil {
		return err
	}
	return WriteReceipt(c, r)
}

type captureRequest struct {
	Amount         int64  `json:"amount"`
	IdempotencyKey string `json:"idempotencyKey"`
}

func holdID(c *echo.Context) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return uuid.Nil, domain.Errorf(domain.CodeHoldNotFound, "Hold not found.")
	}
	return id, nil
}

func (h *creditHandlers) captureHold(c *echo.Context) error {
	var req captureRequest
	if err := Bind(c, &req); err != nil {
		return err
	}
	id, err := holdID(c)
	if err != nil {
		return err
	}
	key, err := IdempotencyKey(c, req.IdempotencyKey)
	if err != nil {
		return err
	}
	caller, user := userCaller(c)
	r, err := h.cs.CaptureHold(c.Request().Context(), caller, user, id, req.Amount, key)
	if err != nil {
		return err
	}
	countSpend(c, r)
	return WriteReceipt(c, r)
}

type releaseRequest struct {
	IdempotencyKey string `json:"idempotencyKey"`
}

func (h *creditHandlers) releaseHold(c *echo.Context) error {
	var req releaseRequest
	if c.Request().ContentLength != 0 {
		if err := Bind(c, &req); err != nil {
			return err
		}
	}
	id, err := holdID(c)
	if err != nil {
		return err
	}
	key, err := IdempotencyKey(c, req.IdempotencyKey)
	if err != nil {
		return err
	}
	caller, user := userCaller(c)
	r, err := h.cs.ReleaseHold(c.Request().Context(), caller, user, id, key)
	if err != nil {
		return err
	}
	return WriteReceipt(c, r)
}

// --- apps (service keys) ---

func pathUser(c *echo.Context, name string) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Param(name))
	if err != nil {
		return uuid.Nil, domain.Errorf(domain.CodeNotFound, "User not found.")
	}
	return id, nil
}

func (h *creditHandlers) appBalance(c *echo.Context) error {
	user, err := pathUser(c, "userId")
	if err != nil {
		return err
	}
	b, err := h.cs.Balance(c.Request().Context(), user, c.QueryParam("minPosition"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, b)
}

func (h *creditHandlers) appUse(c *echo.Context) error {
	var req struct {
		useRequest
		UserID uuid.UUID `json:"userId"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	if req.UserID == uuid.Nil {
		return invalidField("userId", "is required")
	}
	in, err := req.input(c)
	if err != nil {
		return err
	}
	r, err := h.cs.Use(c.Request().Context(), appCaller(c), req.UserID, in)
	if err != nil {
		return err
	}
	countSpend(c, r)
	return WriteReceipt(c, r)
}

func (h *creditHandlers) appRefund(c *echo.Context) error {
	return h.adminWrite(c, appCaller(c), h.cs.Refund)
}

func (h *creditHandlers) appPlaceHold(c *echo.Context) error {
	var req struct {
		holdRequest
		UserID uuid.UUID `json:"userId"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	if req.UserID == uuid.Nil {
		return invalidField("userId", "is required")
	}
	key, err := IdempotencyKey(c, req.IdempotencyKey)
	if err != nil {
		return err
	}
	r, err := h.cs.PlaceHold(c.Request().Context(), appCaller(c), req.UserID, domain.HoldInput{Amount: req.Amount, AppID: req.AppID, TTLSeconds: req.TTLSeconds, IdempotencyKey: key})
	if err != nil {
		return err
	}
	return WriteReceipt(c, r)
}

// appHoldTarget checks what an app's capture or release names: the user,
// the hold in the path and the idempotency key.
func appHoldTarget(c *echo.Context, user uuid.UUID, bodyKey string) (uuid.UUID, string, error) {
	if user == uuid.Nil {
		return uuid.Nil, "", invalidField("userId", "is required")
	}
	id, err := holdID(c)
	if err != nil {
		return uuid.Nil, "", err
	}
	key, err := IdempotencyKey(c, bodyKey)
	return id, key, err
}

func (h *creditHandlers) appCaptureHold(c *echo.Context) error {
	var req struct {
		captureRequest
		UserID uuid.UUID `json:"userId"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	id, key, err := appHoldTarget(c, req.UserID, req.IdempotencyKey)
	if err != nil {
		return err
	}
	r, err := h.cs.CaptureHold(c.Request().Context(), appCaller(c), req.UserID, id, req.Amount, key)
	if err != nil {
		return err
	}
	countSpend(c, r)
	return WriteReceipt(c, r)
}

func (h *creditHandlers) appReleaseHold(c *echo.Context) error {
	var req struct {
		releaseRequest
		UserID uuid.UUID `json:"userId"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	id, key, err := appHoldTarget(c, req.UserID, req.IdempotencyKey)
	if err != nil {
		return err
	}
	r, err := h.cs.ReleaseHold(c.Request().Context(), appCaller(c), req.UserID, id, key)
	if err != nil {
		return err
	}
	return WriteReceipt(c, r)
}

// --- admin ---

type adminRequest struct {
	UserID         uuid.UUID `json:"userId"`
	Amount         int64     `json:"amount"`
	Bucket         string    `json:"bucket"`
	TransactionID  uuid.UUID `json:"transactionId"`
	Reason         string    `json:"reason"`
	IdempotencyKey string    `json:"idempotencyKey"`
}

type adminOp func(ctx context.Context, c domain.Caller, in domain.AdminCreditInput) (domain.Receipt, error)

// adminWrite decodes a grant, adjustment or refund and runs it as caller.
func (h *creditHandlers) adminWrite(c *echo.Context, caller domain.Caller, op adminOp) error {
	var req adminRequest
	if err := Bind(c, &req); err != nil {
		return err
	}
	key, err := IdempotencyKey(c, req.IdempotencyKey)
	if err != nil {
		return err
	}
	r, err := op(c.Request().Context(), caller, domain.AdminCreditInput{UserID: req.UserID, Amount: req.Amount, Bucket: req.Bucket,
		TransactionID: req.TransactionID, Reason: req.Reason, IdempotencyKey: key})
	if err != nil {
		return err
	}
	return WriteReceipt(c, r)
}

func (h *creditHandlers) adminGrant(c *echo.Context) error {
	return h.adminWrite(c, adminCaller(c), h.cs.Grant)
}

func (h *creditHandlers) adminAdjust(c *echo.Context) error {
	return h.adminWrite(c, adminCaller(c), h.cs.Adjust)
}

func (h *creditHandlers) adminRefund(c *echo.Context) error {
	return h.adminWrite(c, adminCaller(c), h.cs.Refund)
}

func (h *creditHandlers) adminBalance(c *echo.Context) error {
	user, err := pathUser(c, "userId")
	if err != nil {
		return err
	}
	var b domain.Balance
	if at := c.QueryParam("at"); at != "" {
		b, err = h.cs.BalanceAt(c.Request().Context(), user, at)
	} else {
		b, err = h.cs.Balance(c.Request().Context(), user, "")
	}
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, b)
}
