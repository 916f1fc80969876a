package stripe_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v85/webhook"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/stripe"
)

const secret = "whsec_test_secret"

func event(t *testing.T, typ, apiVersion string, object any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"id": "evt_123", "object": "event", "api_version": apiVersion, "type": typ,
		"created": 1, "data": map[string]any{"object": object}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func signed(body []byte, at time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: at}).Header
}

func code(err error) domain.Code {
	var de *domain.Error
	if errors.As(err, &de) {
		return de.Code
	}
	if err != nil {
		return "unexpected: " + domain.Code(err.Error())
	}
	return ""
}

func TestVerifyWebhookDecodes(t *testing.T) {
	t.Parallel()
	meta := map[string]string{"purchase_id": "p-1", "user_id": "u-1"}
	cases := []struct {
		typ    string
		object map[string]any
		want   stripe.Payment
	}{
		{"payment_intent.succeeded",
			map[string]any{"id": "pi_1", "object": "payment_intent", "amount": 500, "amount_received": 500, "currency": "EUR", "metadata": meta, "extra": []int{1}},
			stripe.Payment{Outcome: stripe.Succeeded, Object: "payment_intent", ID: "pi_1", PurchaseID: "p-1", UserID: "u-1", AmountCents: 500, Currency: "eur"}},
		{"payment_intent.payment_failed",
			map[string]any{"id": "pi_1", "object": "payment_intent", "amount": 500, "currency": "eur", "metadata": meta,
				"last_payment_error": map[string]any{"code": "card_declined", "message": "Your card was declined."}},
			stripe.Payment{Outcome: stripe.Failed, Object: "payment_intent", ID: "pi_1", PurchaseID: "p-1", UserID: "u-1", AmountCents: 500, Currency: "eur", Reason: "card_declined"}},
		{"payment_intent.payment_failed",
			map[string]any{"id": "pi_1", "object": "payment_intent", "amount": 500, "currency": "eur", "last_payment_error": map[string]any{"code": "Not A Code"}},
			stripe.Payment{Outcome: stripe.Failed, Object: "payment_intent", ID: "pi_1", AmountCents: 500, Currency: "eur", Reason: "payment_failed"}},
		{"checkout.session.completed",
			map[string]any{"id": "cs_1", "object": "checkout.session", "amount_total": 1500, "currency": "eur", "payment_status": "paid",
				"payment_intent": "pi_2", "client_reference_id": "p-2"},
			stripe.Payment{Outcome: stripe.Succeeded, Object: "checkout.session", ID: "cs_1", PaymentIntent: "pi_2", PurchaseID: "p-2", AmountCents: 1500, Currency: "eur"}},
		{"checkout.session.completed",
			map[string]any{"id": "cs_1", "object": "checkout.session", "amount_total": 1500, "currency": "eur", "payment_status": "unpaid",
				"payment_intent": map[string]any{"id": "pi_3", "object": "payment_intent"}, "metadata": meta, "client_reference_id": "p-2"},
			stripe.Payment{Outcome: stripe.Pending, Object: "checkout.session", ID: "cs_1", PaymentIntent: "pi_3", PurchaseID: "p-1", UserID: "u-1", AmountCents: 1500, Currency: "eur"}},
		{"checkout.session.async_payment_succeeded",
			map[string]any{"id": "cs_1", "object": "checkout.session", "amount_total": 100, "currency": "eur", "payment_status": "paid"},
			stripe.Payment{Outcome: stripe.Succeeded, Object: "checkout.session", ID: "cs_1", AmountCents: 100, Currency: "eur"}},
		{"checkout.session.expired",
			map[string]any{"id": "cs_1", "object": "checkout.session", "amount_total": 100, "currency": "eur", "payment_intent": nil},
			stripe.Payment{Outcome: stripe.Failed, Object: "checkout.session", ID: "cs_1", AmountCents: 100, Currency: "eur", Reason: "expired"}},
		{"checkout.session.async_payment_failed",
			map[string]any{"id": "cs_1", "object": "checkout.session", "amount_total": 100, "currency": "eur"},
			stripe.Payment{Outcome: stripe.Failed, Object: "checkout.session", ID: "cs_1", AmountCents: 100, Currency: "eur", Reason: "async_payment_failed"}},
	}
	for _, c := range cases {
		// Another API version than stripe-go's is accepted.
		body := event(t, c.typ, "2019-02-19", c.object)
		ev, err := stripe.VerifyWebhook(body, signed(body, time.Now()), secret)
		if err != nil {
			t.Fatalf("%s: %v", c.typ, err)
		}
		if ev.ID != "evt_123" || ev.Type != c.typ || ev.Payment == nil || *ev.Payment != c.want {
			t.Errorf("%s: decoded %+v %+v, want %+v", c.typ, ev, ev.Payment, c.want)
		}
	}

	body := event(t, "customer.created", stripe.APIVersion, map[string]any{"id": "cus_1", "object": "customer"})
	ev, err := stripe.VerifyWebhook(body, signed(body, time.Now()), secret)
	if err != nil || ev.Payment != nil || ev.Type != "customer.created" {
		t.Errorf("an unhandled type: %+v %v", ev, err)
	}
}

func TestVerifyWebhookRefuses(t *testing.T) {
	t.Parallel()
	good := event(t, "payment_intent.succeeded", stripe.APIVersion, map[string]any{"id": "pi_1", "object": "payment_intent", "amount": 1, "currency": "eur"})
	now := time.Now()
	for name, c := range map[string]struct {
		body   []byte
		header string
		want   domain.Code
	}{
		"unsigned":        {good, "", domain.CodeInvalidSignature},
		"wrong secret":    {good, webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: good, Secret: "whsec_other"}).Header, domain.CodeInvalidSignature},
		"stale":           {good, signed(good, now.Add(-301*time.Second)), domain.CodeInvalidSignature},
		"malformed":       {good, "t=now,v1=abc", domain.CodeInvalidSignature},
		"body changed":    {append([]byte(" "), good...), signed(good, now), domain.CodeInvalidSignature},
		"not json":        {[]byte("hello"), signed([]byte("hello"), now), domain.CodeValidationFailed},
		"not an event":    {[]byte(`{"object":"payment_intent"}`), signed([]byte(`{"object":"payment_intent"}`), now), domain.CodeValidationFailed},
		"wrong object":    {event(t, "payment_intent.succeeded", "x", map[string]any{"id": "cs_1", "object": "checkout.session"}), "", domain.CodeValidationFailed},
		"no object id":    {event(t, "payment_intent.succeeded", "x", map[string]any{"object": "payment_intent"}), "", domain.CodeValidationFailed},
		"control chars":   {event(t, "payment_intent.succeeded", "x", map[string]any{"id": "pi\n1", "object": "payment_intent"}), "", domain.CodeValidationFailed},
		"amount overflow": {[]byte(`{"id":"evt_1","object":"event","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1","object":"payment_intent","amount":1e40}}}`), "", domain.CodeValidationFailed},
	} {
		h := c.header
		if h == "" && c.want == domain.CodeValidationFailed {
			h = signed(c.body, now)
		}
		if _, err := stripe.VerifyWebhook(c.body, h, secret); code(err) != c.want {
			t.Errorf("%s: %q (%v), want %s", name, code(err), err, c.want)
		}
	}
	// Nothing about the secret leaks into errors.
	_, err := stripe.VerifyWebhook(good, "", secret)
	if err == nil || len(err.Error()) == 0 || strings.Contains(err.Error(), secret) {
		t.Errorf("error %v", err)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	if _, err := stripe.New(stripe.Config{}); err == nil {
		t.Error("New without a key succeeded")
	}
	for _, base := range []string{"localhost:12111", "ftp://x", "http://", "::"} {
		if _, err := stripe.New(stripe.Config{SecretKey: "sk_test_x", APIBase: base}); err == nil {
			t.Errorf("API base %q accepted", base)
		}
	}
	if _, err := stripe.New(stripe.Config{SecretKey: "sk_test_x", APIBase: "http://127.0.0.1:12111"}); err != nil {
		t.Error(err)
	}
}
