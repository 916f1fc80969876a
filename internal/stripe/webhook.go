package stripe

import (
	"encoding/json"
	"errors"
	"strings"
	"time"

	stripego "github.com/stripe/stripe-go/v85"
	"github.com/stripe/stripe-go/v85/webhook"

	"github.com/manacore/mana/domain"
)

// Tolerance is how old a webhook's signature timestamp may be: Stripe's
// default, five minutes. Older deliveries are refused as replays.
const Tolerance = 300 * time.Second

// Outcome is what a webhook says happened to a payment.
type Outcome int

// Outcomes.
const (
	// Succeeded: the money arrived (payment_intent.succeeded,
	// checkout.session.completed with payment_status "paid",
	// checkout.session.async_payment_succeeded).
	Succeeded Outcome = iota + 1
	// Failed: the attempt failed or the checkout expired
	// (payment_intent.payment_failed, checkout.session.expired,
	// checkout.session.async_payment_failed).
	Failed
	// Pending: a checkout completed without the money yet (a delayed
	// payment method); a later async_payment_* event decides.
	Pending
)

// Kinds of payment object.
const (
	ObjectPaymentIntent   = "payment_intent"
	ObjectCheckoutSession = "checkout.session"
)

// Event is a verified webhook, decoded to the few fields purchases need.
type Event struct {
	// ID is Stripe's event id (evt_…), the deduplication key.
	ID   string
	Type string
	// Payment is nil for event types purchases do not handle.
	Payment *Payment
}

// Payment is the payment object a handled event carries.
type Payment struct {
	Outcome Outcome
	// Object is ObjectPaymentIntent or ObjectCheckoutSession; ID is its id
	// (pi_… or cs_…).
	Object string
	ID     string
	// PaymentIntent is the PaymentIntent a Checkout Session created, when
	// the event names it.
	PaymentIntent string
	// PurchaseID and UserID are the metadata this service set ("" when
	// absent); a Checkout Session's client_reference_id stands in for a
	// missing purchase id.
	PurchaseID string
	UserID     string
	// AmountCents is what was received (amount_received of a succeeded
	// PaymentIntent, else its amount; amount_total of a Checkout Session).
	AmountCents int64
	// Currency is lower-case.
	Currency string
	// Reason says why a payment failed: Stripe's error code of the last
	// attempt (card_declined …), "expired" or "async_payment_failed".
	Reason string
}

// VerifyWebhook checks payload against the Stripe-Signature header with
// secret (HMAC-SHA256, timestamp within Tolerance, API-version mismatches
// ignored) and decodes the handled event types. A missing, malformed, wrong
// or stale signature is INVALID_SIGNATURE; a signed body that is not a
// Stripe event is VALIDATION_FAILED. The secret is never part of an error.
func VerifyWebhook(payload []byte, header, secret string) (Event, error) {
	ev, err := webhook.ConstructEventWithOptions(payload, header, secret, webhook.ConstructEventOptions{
		Tolerance:                Tolerance,
		IgnoreAPIVersionMismatch: true,
	})
	if err != nil {
		if errors.Is(err, webhook.ErrNotSigned) || errors.Is(err, webhook.ErrInvalidHeader) ||
			errors.Is(err, webhook.ErrNoValidSignature) || errors.Is(err, webhook.ErrTooOld) {
			return Event{}, domain.Errorf(domain.CodeInvalidSignature, "The Stripe-Signature header is missing, malformed, wrong or too old.")
		}
		return Event{}, malformed()
	}
	if !validID(ev.ID) || ev.Type == "" || ev.Data == nil {
		return Event{}, malformed()
	}
	out := Event{ID: ev.ID, Type: string(ev.Type)}
	var outcome Outcome
	switch ev.Type {
	case stripego.EventTypePaymentIntentSucceeded:
		outcome = Succeeded
	case stripego.EventTypePaymentIntentPaymentFailed, stripego.EventTypeCheckoutSessionExpired,
		stripego.EventTypeCheckoutSessionAsyncPaymentFailed:
		outcome = Failed
	case stripego.EventTypeCheckoutSessionCompleted, stripego.EventTypeCheckoutSessionAsyncPaymentSucceeded:
		outcome = Succeeded
	default:
		return out, nil
	}
	p, err := decodeObject(ev.Data.Raw)
	if err != nil {
		return Event{}, err
	}
	p.Outcome = outcome
	switch ev.Type {
	case stripego.EventTypeCheckoutSessionCompleted:
		// Delayed payment methods complete the checkout before the money
		// arrives; async_payment_succeeded follows.
		if p.paymentStatus != "paid" {
			p.Outcome = Pending
		}
	case stripego.EventTypeCheckoutSessionExpired:
		p.Reason = "expired"
	case stripego.EventTypeCheckoutSessionAsyncPaymentFailed:
		p.Reason = "async_payment_failed"
	case stripego.EventTypePaymentIntentPaymentFailed:
		if p.Reason == "" {
			p.Reason = "payment_failed"
		}
	}
	wantObject := ObjectCheckoutSession
	if strings.HasPrefix(string(ev.Type), "payment_intent.") {
		wantObject = ObjectPaymentIntent
	}
	if p.Object != wantObject {
		return Event{}, malformed()
	}
	out.Payment = &p.Payment
	return out, nil
}

func malformed() error {
	return domain.Errorf(domain.CodeValidationFailed, "The webhook body is not a Stripe event.")
}

// object is the part of a PaymentIntent or Checkout Session this service
// reads; everything else in the webhook is ignored.
type object struct {
	Object            string            `json:"object"`
	ID                string            `json:"id"`
	Amount            int64             `json:"amount"`
	AmountReceived    int64             `json:"amount_received"`
	AmountTotal       int64             `json:"amount_total"`
	Currency          string            `json:"currency"`
	Metadata          map[string]string `json:"metadata"`
	ClientReferenceID string            `json:"client_reference_id"`
	PaymentStatus     string            `json:"payment_status"`
	// PaymentIntent is an id, or the object when expanded.
	PaymentIntent    json.RawMessage `json:"payment_intent"`
	LastPaymentError *struct {
		Code string `json:"code"`
	} `json:"last_payment_error"`
}

type decoded struct {
	Payment
	paymentStatus string
}

// maxReason bounds the failure reason copied from Stripe into events.
const maxReason = 64

// decodeObject decodes data.object, raw as stripe-go keeps it.
func decodeObject(raw json.RawMessage) (decoded, error) {
	var o object
	if err := json.Unmarshal(raw, &o); err != nil {
		return decoded{}, malformed()
	}
	if !validID(o.ID) || len(o.Currency) > 8 || !validID(o.Currency) && o.Currency != "" {
		return decoded{}, malformed()
	}
	d := decoded{paymentStatus: o.PaymentStatus, Payment: Payment{
		Object:     o.Object,
		ID:         o.ID,
		PurchaseID: o.Metadata[MetaPurchaseID],
		UserID:     o.Metadata[MetaUserID],
		Currency:   strings.ToLower(o.Currency),
	}}
	switch o.Object {
	case ObjectPaymentIntent:
		d.AmountCents = o.Amount
		if o.AmountReceived > 0 {
			d.AmountCents = o.AmountReceived
		}
		if o.LastPaymentError != nil {
			d.Reason = reasonCode(o.LastPaymentError.Code)
		}
	case ObjectCheckoutSession:
		d.AmountCents = o.AmountTotal
		if d.PurchaseID == "" {
			d.PurchaseID = o.ClientReferenceID
		}
		d.PaymentIntent = paymentIntentID(o.PaymentIntent)
		if d.PaymentIntent != "" && !validID(d.PaymentIntent) {
			return decoded{}, malformed()
		}
	}
	return d, nil
}

// paymentIntentID reads a Checkout Session's payment_intent, an id or an
// expanded object.
func paymentIntentID(raw json.RawMessage) string {
	var id string
	if json.Unmarshal(raw, &id) == nil {
		return id
	}
	var obj struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(raw, &obj) == nil {
		return obj.ID
	}
	return ""
}

// validID accepts what Stripe's ids and codes look like: 1–255 printable
// ASCII characters without spaces. Anything else (NUL bytes, control
// characters) could not be stored and is refused as malformed.
func validID(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// reasonCode returns a failure code fit to record in events, at most
// maxReason characters of [a-z0-9_], or "" for anything else (the event
// then says "payment_failed").
func reasonCode(s string) string {
	if s == "" || len(s) > maxReason {
		return ""
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return ""
		}
	}
	return s
}
