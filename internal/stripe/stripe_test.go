package stripe_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/stripe"
)

// fakeAPI answers Stripe API calls with status and body, and records the
// requests it got.
type fakeAPI struct {
	mu       sync.Mutex
	status   int
	body     string
	requests []*http.Request
	forms    []map[string]string
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	form := map[string]string{}
	for k, v := range r.PostForm {
		form[k] = v[0]
	}
	f.mu.Lock()
	f.requests = append(f.requests, r)
	f.forms = append(f.forms, form)
	status, body := f.status, f.body
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Request-Id", "req_fake")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

func newClient(t *testing.T, f *fakeAPI) *stripe.Client {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c, err := stripe.New(stripe.Config{SecretKey: "sk_test_secretvalue", APIBase: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCreatePaymentIntentRequest(t *testing.T) {
	t.Parallel()
	f := &fakeAPI{status: 200, body: `{"id":"pi_9","object":"payment_intent","client_secret":"pi_9_secret_x"}`}
	c := newClient(t, f)
	o := stripe.Order{PurchaseID: uuid.New(), UserID: uuid.New(), AmountCents: 1500, Currency: "eur", Name: "Plus", Credits: 1500}
	in, err := c.CreatePaymentIntent(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if in.ID != "pi_9" || in.ClientSecret != "pi_9_secret_x" {
		t.Errorf("intent %+v", in)
	}
	r, form := f.requests[0], f.forms[0]
	if r.URL.Path != "/v1/payment_intents" || r.Header.Get("Idempotency-Key") != "purchase:"+o.PurchaseID.String() ||
		r.Header.Get("Stripe-Version") != stripe.APIVersion {
		t.Errorf("request %s %v", r.URL.Path, r.Header)
	}
	if form["amount"] != "1500" || form["currency"] != "eur" || form["metadata[purchase_id]"] != o.PurchaseID.String() ||
		form["metadata[user_id]"] != o.UserID.String() || form["automatic_payment_methods[enabled]"] != "true" {
		t.Errorf("form %v", form)
	}
}

func TestCreateCheckoutSessionRequest(t *testing.T) {
	t.Parallel()
	f := &fakeAPI{status: 200, body: `{"id":"cs_9","object":"checkout.session","url":"https://checkout.stripe.com/c/pay/cs_9"}`}
	c := newClient(t, f)
	o := stripe.Order{PurchaseID: uuid.New(), UserID: uuid.New(), AmountCents: 100, Currency: "eur", Name: "Starter", Credits: 100}
	s, err := c.CreateCheckoutSession(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if s.ID != "cs_9" || s.URL == "" {
		t.Errorf("session %+v", s)
	}
	form := f.forms[0]
	for k, want := range map[string]string{
		"mode": "payment", "client_reference_id": o.PurchaseID.String(),
		"metadata[purchase_id]": o.PurchaseID.String(), "payment_intent_data[metadata][purchase_id]": o.PurchaseID.String(),
		"payment_intent_data[metadata][user_id]": o.UserID.String(), "line_items[0][quantity]": "1",
		"line_items[0][price_data][currency]": "eur", "line_items[0][price_data][unit_amount]": "100",
	} {
		if form[k] != want {
			t.Errorf("%s = %q, want %q", k, form[k], want)
		}
	}
}

// TestProviderErrors: Stripe's errors are UNAVAILABLE, and what can be
// logged of them names Stripe's request but carries no secret.
func TestProviderErrors(t *testing.T) {
	t.Parallel()
	f := &fakeAPI{status: 401, body: `{"error":{"type":"invalid_request_error","code":"api_key_invalid","message":"Invalid API Key provided: sk_test_secretvalue"}}`}
	c := newClient(t, f)
	_, err := c.CreatePaymentIntent(context.Background(), stripe.Order{PurchaseID: uuid.New(), AmountCents: 1, Currency: "eur"})
	var de *domain.Error
	if !errors.As(err, &de) || de.Code != domain.CodeUnavailable || de.RetryAfterSeconds <= 0 {
		t.Fatalf("error %v, want UNAVAILABLE", err)
	}
	var se *stripe.Error
	if !errors.As(err, &se) || se.Status != 401 || se.Type != "invalid_request_error" || se.Code != "api_key_invalid" {
		t.Errorf("stripe error %+v", se)
	}
	if strings.Contains(err.Error(), "sk_test") {
		t.Errorf("the error text carries the key: %s", err)
	}
	// A successful answer without the fields we need is an error too.
	f.mu.Lock()
	f.status, f.body = 200, `{"id":"","object":"payment_intent"}`
	f.mu.Unlock()
	if _, err := c.CreatePaymentIntent(context.Background(), stripe.Order{PurchaseID: uuid.New(), AmountCents: 1, Currency: "eur"}); domain.ErrorCode(err) != domain.CodeUnavailable {
		t.Errorf("an empty answer: %v", err)
	}
}
