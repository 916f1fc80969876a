package api

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/ratelimit"
)

// principalKey is where the bearer guard leaves the authenticated caller.
const principalKey = "mana.principal"

// authRoutes registers the auth endpoints of SPEC §5 on the /api/v1 group
// and the JWKS at the server root.
func (s *Server) authRoutes(id domain.Identity) {
	h := &authHandlers{id: id}
	g := s.api.Group("/auth")
	// Per-IP limits come first, before the body is read (SPEC §7).
	g.POST("/register", h.register, s.limitByIP(ratelimit.RegisterIP))
	g.POST("/login", h.login, s.limitByIP(ratelimit.LoginIP))
	g.POST("/refresh", h.refresh, s.limitByIP(ratelimit.RefreshIP))
	g.POST("/validate", h.validate)
	g.GET("/jwks", h.jwks)
	bearer := s.Bearer(id)
	g.POST("/logout", h.logout, bearer)
	g.GET("/sessions", h.sessions, bearer)
	g.DELETE("/sessions/:id", h.revokeSession, bearer)
	g.GET("/security-events", h.securityEvents, bearer)
	s.echo.GET("/.well-known/jwks.json", h.jwks)
}

// Bearer returns the guard for endpoints that need an access token: a
// valid signature and claims and a live session, checked against
// write-side state on every request. Failures are 401 with the precise
// code (UNAUTHORIZED without a token).
func (s *Server) Bearer(id domain.Identity) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c *echo.Context) error {
			tok, ok := bearerToken(c.Request())
			if !ok {
				return domain.Errorf(domain.CodeUnauthorized, "A Bearer access token is required.")
			}
			p, _, err := id.Authenticate(c.Request().Context(), tok)
			if err != nil {
				return err
			}
			c.Set(principalKey, p)
			return next(c)
		}
	}
}

func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// PrincipalOf returns the caller the bearer guard authenticated.
func PrincipalOf(c *echo.Context) (domain.Principal, bool) {
	p, ok := c.Get(principalKey).(domain.Principal)
	return p, ok
}

func requestMeta(c *echo.Context) domain.RequestMeta {
	return domain.RequestMeta{RequestID: RequestID(c), IP: c.RealIP(), UserAgent: c.Request().UserAgent()}
}

func writePosition(c *echo.Context, w domain.Written) {
	if w.Position != "" {
		c.Response().Header().Set(HeaderPosition, w.Position)
	}
}

type authHandlers struct {
	id domain.Identity
}

func (h *authHandlers) register(c *echo.Context) error {
	var req struct {
		Email    string `json:"email"`
		Password string `json:"password"`
		Name     string `json:"name"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	u, w, err := h.id.Register(c.Request().Context(), domain.RegisterInput{Email: req.Email, Password: req.Password, Name: req.Name}, requestMeta(c))
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.JSON(http.StatusCreated, u)
}

func (h *authHandlers) login(c *echo.Context) error {
	var req struct {
		Email      string `json:"email"`
		Password   string `json:"password"`
		DeviceID   string `json:"deviceId"`
		DeviceName string `json:"deviceName"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	// The per-account limit, like the per-IP one, comes before the lock
	// check and the password (SPEC §7).
	if err := serverFrom(c).limitAccount(c, ratelimit.LoginAccount, req.Email); err != nil {
		return err
	}
	pair, w, err := h.id.Login(c.Request().Context(), domain.LoginInput{Email: req.Email, Password: req.Password,
		DeviceID: req.DeviceID, DeviceName: req.DeviceName}, requestMeta(c))
	// With 2FA on, a right password answers 200 {twoFactorRequired:true,
	// challengeToken}; POST /auth/login/2fa completes (and counts) it.
	if ok, err := loginChallenge(c, err); ok {
		return err
	}
	serverFrom(c).countLogin(err)
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.JSON(http.StatusOK, pair)
}

func (h *authHandlers) refresh(c *echo.Context) error {
	var req struct {
		RefreshToken string `json:"refreshToken"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	if req.RefreshToken == "" {
		return invalidField("refreshToken", "is required")
	}
	pair, w, err := h.id.Refresh(c.Request().Context(), req.RefreshToken, requestMeta(c))
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.JSON(http.StatusOK, pair)
}

// logout accepts an empty body or the shared client's {refreshToken}; the
// Bearer's session is what gets revoked.
func (h *authHandlers) logout(c *echo.Context) error {
	if c.Request().ContentLength != 0 {
		var req struct {
			RefreshToken string `json:"refreshToken"`
		}
		if err := Bind(c, &req); err != nil {
			return err
		}
	}
	p, _ := PrincipalOf(c)
	w, err := h.id.Logout(c.Request().Context(), p, requestMeta(c))
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.JSON(http.StatusOK, map[string]bool{"success": true})
}

// validate answers 200 either way: {valid:true, payload} or {valid:false,
// error: TOKEN_EXPIRED | TOKEN_INVALID | SESSION_REVOKED}.
func (h *authHandlers) validate(c *echo.Context) error {
	var req struct {
		Token string `json:"token"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	_, claims, err := h.id.Authenticate(c.Request().Context(), req.Token)
	if err != nil {
		var de *domain.Error
		if !errors.As(err, &de) {
			return err
		}
		code := de.Code
		switch code {
		case domain.CodeTokenExpired, domain.CodeSessionRevoked:
		case domain.CodeSessionExpired:
			code = domain.CodeTokenExpired
		default:
			code = domain.CodeTokenInvalid
		}
		return c.JSON(http.StatusOK, map[string]any{"valid": false, "error": code})
	}
	return c.JSON(http.StatusOK, map[string]any{"valid": true, "payload": tokenPayload(claims)})
}

func tokenPayload(c domain.Claims) map[string]any {
	p := map[string]any{
		"sub": c.Subject, "email": c.Email, "role": c.Role, "sid": c.SessionID,
		"iss": c.Issuer, "aud": c.Audience, "iat": c.IssuedAt.Unix(), "exp": c.ExpiresAt.Unix(), "jti": c.ID,
	}
	if c.DeviceID != "" {
		p["did"] = c.DeviceID
	}
	return p
}

func (h *authHandlers) sessions(c *echo.Context) error {
	p, _ := PrincipalOf(c)
	list, err := h.id.Sessions(c.Request().Context(), p, c.QueryParam("minPosition"))
	if err != nil {
		return err
	}
	if list == nil {
		list = []domain.SessionView{}
	}
	return c.JSON(http.StatusOK, list)
}

func (h *authHandlers) revokeSession(c *echo.Context) error {
	p, _ := PrincipalOf(c)
	sid, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return domain.Errorf(domain.CodeNotFound, "Session not found.")
	}
	w, err := h.id.RevokeSession(c.Request().Context(), p, sid, requestMeta(c))
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.NoContent(http.StatusNoContent)
}

func (h *authHandlers) securityEvents(c *echo.Context) error {
	p, _ := PrincipalOf(c)
	limit := 50
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 200 {
			return invalidField("limit", "must be an integer from 1 to 200")
		}
		limit = n
	}
	list, err := h.id.SecurityEvents(c.Request().Context(), p, c.QueryParam("minPosition"), limit)
	if err != nil {
		return err
	}
	if list == nil {
		list = []domain.SecurityEventView{}
	}
	return c.JSON(http.StatusOK, list)
}

func (h *authHandlers) jwks(c *echo.Context) error {
	b, err := h.id.JWKS(c.Request().Context())
	if err != nil {
		return err
	}
	c.Response().Header().Set("Cache-Control", "public, max-age=300")
	return c.JSONBlob(http.StatusOK, b)
}

// SetIdentity registers the auth endpoints, served by id. Like every route
// registration it must happen before the server starts serving.
func (s *Server) SetIdentity(id domain.Identity) {
	s.identity = id
	s.authRoutes(id)
}
