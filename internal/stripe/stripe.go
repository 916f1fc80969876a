// Package stripe is the adapter to Stripe, on stripe-go: it creates the
// PaymentIntents and Checkout Sessions of purchases and verifies and decodes
// webhooks. It is the one place that turns Stripe's errors into domain
// errors. Nothing here logs: the secret key, client secrets and webhook
// secrets never leave this package except as return values.
package stripe

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/google/uuid"
	stripego "github.com/stripe/stripe-go/v85"

	"github.com/manacore/mana/domain"
)

// APIVersion is the Stripe API version the pinned stripe-go sends and
// expects webhooks in. Webhooks of another version are accepted all the
// same: only the few fields this package decodes matter, and they are
// stable across versions.
const APIVersion = stripego.APIVersion

// Metadata keys set on every PaymentIntent and Checkout Session; webhooks
// carry them back.
const (
	MetaPurchaseID = "purchase_id"
	MetaUserID     = "user_id"
)

// requestTimeout bounds one call to Stripe, retries included.
const requestTimeout = 30 * time.Second

// Config configures a Client.
type Config struct {
	// SecretKey is STRIPE_SECRET_KEY; required.
	SecretKey string
	// APIBase, when set (STRIPE_API_BASE), replaces https://api.stripe.com,
	// e.g. http://127.0.0.1:12111 for stripe-mock. It must be an absolute
	// http or https URL.
	APIBase string
	// HTTPClient makes the requests; a client with a 30 s timeout when nil.
	HTTPClient *http.Client
}

// Client creates payments at Stripe. It is safe for concurrent use.
type Client struct {
	sc *stripego.Client
}

// New returns a Client for cfg. It fails when the secret key is missing or
// APIBase is not an absolute http(s) URL.
func New(cfg Config) (*Client, error) {
	if cfg.SecretKey == "" {
		return nil, errors.New("stripe: a secret key is required")
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: requestTimeout}
	}
	bc := &stripego.BackendConfig{
		HTTPClient: cfg.HTTPClient,
		// stripe-go's own logger writes to stderr outside our structured
		// log; failures come back as errors and are reported by callers.
		LeveledLogger:     &stripego.LeveledLogger{Level: stripego.LevelNull},
		MaxNetworkRetries: stripego.Int64(2),
		EnableTelemetry:   stripego.Bool(false),
	}
	if cfg.APIBase != "" {
		u, err := url.Parse(cfg.APIBase)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("stripe: API base %q is not an absolute http(s) URL", cfg.APIBase)
		}
		bc.URL = stripego.String(cfg.APIBase)
	}
	return &Client{sc: stripego.NewClient(cfg.SecretKey, stripego.WithBackends(stripego.NewBackendsWithConfig(bc)))}, nil
}

// Order is what a purchase asks Stripe to collect.
type Order struct {
	PurchaseID  uuid.UUID
	UserID      uuid.UUID
	AmountCents int64
	// Currency is the lower-case ISO code, "eur".
	Currency string
	// Name is the package's name, shown to the payer.
	Name    string
	Credits int64
}

// Intent is a created PaymentIntent. ClientSecret lets the client confirm
// the payment: hand it to the user, never log it.
type Intent struct {
	ID           string
	ClientSecret string
}

// Session is a created Checkout Session and the URL of its hosted page.
type Session struct {
	ID  string
	URL string
}

func (p Order) metadata() map[string]string {
	return map[string]string{MetaPurchaseID: p.PurchaseID.String(), MetaUserID: p.UserID.String()}
}

func (p Order) description() string {
	return p.Name + " (" + strconv.FormatInt(p.Credits, 10) + " credits)"
}

// CreatePaymentIntent creates the PaymentIntent of p, with the purchase and
// user ids as metadata and the purchase id as idempotency key, so a retried
// call never creates a second intent. Stripe's failures are UNAVAILABLE
// (*Error tells more).
func (c *Client) CreatePaymentIntent(ctx context.Context, p Order) (Intent, error) {
	params := &stripego.PaymentIntentCreateParams{
		Amount:                  stripego.Int64(p.AmountCents),
		Currency:                stripego.String(p.Currency),
		Description:             stripego.String(p.description()),
		Metadata:                p.metadata(),
		AutomaticPaymentMethods: &stripego.PaymentIntentCreateAutomaticPaymentMethodsParams{Enabled: stripego.Bool(true)},
	}
	params.SetIdempotencyKey("purchase:" + p.PurchaseID.String())
	pi, err := c.sc.V1PaymentIntents.Create(ctx, params)
	if err != nil {
		return Intent{}, providerError("create payment intent", err)
	}
	if pi.ID == "" || pi.ClientSecret == "" {
		return Intent{}, providerError("create payment intent", errors.New("answer without id or client secret"))
	}
	return Intent{ID: pi.ID, ClientSecret: pi.ClientSecret}, nil
}

// CreateCheckoutSession creates a hosted Checkout Session (mode payment) for
// p, with the purchase id as client reference, the ids as metadata on the
// session and on the PaymentIntent it creates, and the purchase id as
// idempotency key. Stripe's failures are UNAVAILABLE.
func (c *Client) CreateCheckoutSession(ctx context.Context, p Order) (Session, error) {
	params := &stripego.CheckoutSessionCreateParams{
		Mode:              stripego.String(string(stripego.CheckoutSessionModePayment)),
		ClientReferenceID: stripego.String(p.PurchaseID.String()),
		Metadata:          p.metadata(),
		PaymentIntentData: &stripego.CheckoutSessionCreatePaymentIntentDataParams{
			Description: stripego.String(p.description()),
			Metadata:    p.metadata(),
		},
		LineItems: []*stripego.CheckoutSessionCreateLineItemParams{{
			Quantity: stripego.Int64(1),
			PriceData: &stripego.CheckoutSessionCreateLineItemPriceDataParams{
				Currency:    stripego.String(p.Currency),
				UnitAmount:  stripego.Int64(p.AmountCents),
				ProductData: &stripego.CheckoutSessionCreateLineItemPriceDataProductDataParams{Name: stripego.String(p.description())},
			},
		}},
	}
	params.SetIdempotencyKey("purchase:" + p.PurchaseID.String())
	s, err := c.sc.V1CheckoutSessions.Create(ctx, params)
	if err != nil {
		return Session{}, providerError("create checkout session", err)
	}
	if s.ID == "" || s.URL == "" {
		return Session{}, providerError("create checkout session", errors.New("answer without id or url"))
	}
	return Session{ID: s.ID, URL: s.URL}, nil
}

// Error is a failed call to Stripe. It unwraps to a *domain.Error coded
// UNAVAILABLE (what the client is told) and says what failed in terms
// safe to log: Stripe's error type, code, HTTP status and request id, never
// the request or Stripe's message.
type Error struct {
	Op        string
	Type      string
	Code      string
	Status    int
	RequestID string
	cause     error
}

// Error implements error.
func (e *Error) Error() string {
	if e.Type == "" {
		return fmt.Sprintf("stripe: %s: %v", e.Op, e.cause)
	}
	return fmt.Sprintf("stripe: %s: %s %s (status %d, request %s)", e.Op, e.Type, e.Code, e.Status, e.RequestID)
}

// Unwrap returns the domain error, so domain.ErrorCode and errors.As see
// UNAVAILABLE.
func (e *Error) Unwrap() error {
	return &domain.Error{Code: domain.CodeUnavailable, Message: "The payment provider is unavailable; retry shortly.", RetryAfterSeconds: 5}
}

func providerError(op string, err error) error {
	e := &Error{Op: op, cause: err}
	var se *stripego.Error
	if errors.As(err, &se) {
		e.Type, e.Code, e.Status, e.RequestID = string(se.Type), string(se.Code), se.HTTPStatusCode, se.RequestID
		e.cause = nil
	} else if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		e.cause = err
	} else {
		// Transport errors name the URL, which holds no secret; keep
		// only their text.
		e.cause = errors.New(err.Error())
	}
	return e
}
