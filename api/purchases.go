package api

import (
	"errors"
	"io"
	"net/http"

	"github.com/google/uuid"
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
)

// WebhookBodyLimit is the largest webhook body accepted (SPEC §2): Stripe's
// events are a few KiB.
const WebhookBodyLimit int64 = 256 << 10

// SetPurchases registers the purchase endpoints of SPEC §6 (Bearer): POST
// /credits/purchase (a Stripe PaymentIntent), POST /credits/payment-link (a
// Stripe Checkout Session, for bots that send the payer a link), GET
// /credits/purchase/:id and GET /credits/purchases; and the Stripe webhook,
// POST /webhooks/stripe, which needs no token (the signature authenticates
// it) and accepts at most WebhookBodyLimit bytes. Call before serving,
// after SetIdentity.
func (s *Server) SetPurchases(p domain.Purchases, id domain.Identity) {
	h := &purchaseHandlers{p: p}
	bearer := s.Bearer(id)
	s.api.POST("/credits/purchase", h.start, bearer)
	s.api.POST("/credits/payment-link", h.paymentLink, bearer)
	s.api.GET("/credits/purchase/:id", h.purchase, bearer)
	s.api.GET("/credits/purchases", h.list, bearer)
	s.api.POST("/webhooks/stripe", h.webhook, BodyLimit(WebhookBodyLimit))
}

type purchaseHandlers struct {
	p domain.Purchases
}

type purchaseRequest struct {
	PackageID string `json:"packageId"`
}

func (h *purchaseHandlers) begin(c *echo.Context, checkout bool) error {
	var req purchaseRequest
	if err := Bind(c, &req); err != nil {
		return err
	}
	pkg, err := uuid.Parse(req.PackageID)
	if err != nil || pkg == uuid.Nil {
		return invalidField("packageId", "must be the id of a credit package")
	}
	_, user := userCaller(c)
	started, w, err := h.p.Start(c.Request().Context(), user, pkg, checkout, requestMeta(c))
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.JSON(http.StatusCreated, started)
}

// start answers 201 {purchaseId, clientSecret, amount, credits}.
func (h *purchaseHandlers) start(c *echo.Context) error { return h.begin(c, false) }

// paymentLink answers 201 {purchaseId, url, amount, credits}.
func (h *purchaseHandlers) paymentLink(c *echo.Context) error { return h.begin(c, true) }

func (h *purchaseHandlers) purchase(c *echo.Context) error {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return domain.Errorf(domain.CodeNotFound, "Purchase not found.")
	}
	_, user := userCaller(c)
	v, err := h.p.Purchase(c.Request().Context(), user, id, c.QueryParam("minPosition"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}

func (h *purchaseHandlers) list(c *echo.Context) error {
	_, user := userCaller(c)
	list, err := h.p.List(c.Request().Context(), user, c.QueryParam("minPosition"))
	if err != nil {
		return err
	}
	if list == nil {
		list = []domain.PurchaseView{}
	}
	return c.JSON(http.StatusOK, list)
}

// webhook passes the raw body, byte for byte (the signature covers it),
// and the Stripe-Signature header to the port, and answers 200
// {received:true} once the event is handled or deliberately ignored.
func (h *purchaseHandlers) webhook(c *echo.Context) error {
	var body []byte
	var err error
	if r := c.Request(); r.Body != nil {
		body, err = io.ReadAll(r.Body)
	}
	if err != nil {
		var de *domain.Error
		if errors.As(err, &de) {
			return de
		}
		return invalid("The request body could not be read.")
	}
	if err := h.p.Webhook(c.Request().Context(), body, c.Request().Header.Get("Stripe-Signature")); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]bool{"received": true})
}
