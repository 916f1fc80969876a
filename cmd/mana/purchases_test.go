package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stripe/stripe-go/v85/webhook"

	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/domain"
)

// The purchase tests run `mana serve` against a real stripe-mock (Stripe's
// API served from its OpenAPI fixtures) and deliver webhooks signed as
// Stripe signs them. stripe-mock sends no webhooks, so the tests craft the
// events the real Stripe would send for the payment it created.

// stripeMockWait bounds stripe-mock's start.
const stripeMockWait = time.Minute

// installStripeMock installs the pinned stripe-mock into bin/ once per test
// binary, when `make deps` has not.
var installStripeMock = sync.OnceValues(func() (string, error) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, "bin", "stripe-mock")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`(?m)^STRIPE_MOCK_VERSION := (\S+)$`).FindSubmatch(mk)
	if m == nil {
		return "", fmt.Errorf("no STRIPE_MOCK_VERSION in the Makefile")
	}
	cmd := exec.Command("go", "install", "github.com/stripe/stripe-mock@"+string(m[1]))
	cmd.Env = append(os.Environ(), "GOBIN="+filepath.Join(root, "bin"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install stripe-mock: %v\n%s", err, out)
	}
	return bin, nil
})

// stripeMock returns the base URL of a stripe-mock for t: STRIPE_MOCK_URL
// when set, else one it starts from bin/stripe-mock (installing it when
// missing) on free loopback ports and stops when t ends. It fails t when
// stripe-mock cannot be installed or started: the payment tests never
// skip.
func stripeMock(t *testing.T) string {
	t.Helper()
	if u := os.Getenv("STRIPE_MOCK_URL"); u != "" {
		return strings.TrimSuffix(u, "/")
	}
	bin, err := installStripeMock()
	if err != nil {
		t.Fatalf("stripe-mock: %v", err)
	}
	cmd := exec.Command(bin, "-http-addr", "127.0.0.1:0", "-https-addr", "127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start stripe-mock: %v", err)
	}
	exited := make(chan struct{})
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	addr := make(chan string, 1)
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "Listening for HTTP at address: "); ok {
				addr <- a
			}
		}
		_ = cmd.Wait()
	}()
	select {
	case a := <-addr:
		return "http://" + a
	case <-exited:
		t.Fatalf("stripe-mock exited before listening: %s", stderr.String())
	case <-time.After(stripeMockWait):
		t.Fatalf("stripe-mock did not listen within %v: %s", stripeMockWait, stderr.String())
	}
	return ""
}

type purchaseStarted struct {
	PurchaseID   uuid.UUID `json:"purchaseId"`
	ClientSecret string    `json:"clientSecret"`
	URL          string    `json:"url"`
	Amount       int64     `json:"amount"`
	Credits      int64     `json:"credits"`
}

type purchaseView struct {
	ID          uuid.UUID  `json:"id"`
	PackageID   uuid.UUID  `json:"packageId"`
	Credits     int64      `json:"credits"`
	Amount      int64      `json:"amount"`
	Currency    string     `json:"currency"`
	Status      string     `json:"status"`
	CreatedAt   time.Time  `json:"createdAt"`
	CompletedAt *time.Time `json:"completedAt"`
}

type securityEvent struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// stripeEvent is a Stripe event around object, with an old api_version:
// the webhook does not check it.
func stripeEvent(t *testing.T, typ string, object map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"id": "evt_" + randomHex(12), "object": "event", "api_version": "2022-11-15", "created": time.Now().Unix(),
		"livemode": false, "pending_webhooks": 1, "type": typ, "data": map[string]any{"object": object},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func paymentIntent(id string, amount int64, purchase, user uuid.UUID) map[string]any {
	return map[string]any{"id": id, "object": "payment_intent", "amount": amount, "amount_received": amount, "currency": "eur",
		"status": "succeeded", "metadata": map[string]string{"purchase_id": purchase.String(), "user_id": user.String()}}
}

func checkoutSession(id, pi string, amount int64, purchase, user uuid.UUID) map[string]any {
	return map[string]any{"id": id, "object": "checkout.session", "amount_total": amount, "currency": "eur", "payment_status": "paid",
		"payment_intent": pi, "client_reference_id": purchase.String(),
		"metadata": map[string]string{"purchase_id": purchase.String(), "user_id": user.String()}}
}

func signStripe(body []byte, secret string, at time.Time) http.Header {
	h := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: at}).Header
	return http.Header{"Stripe-Signature": {h}}
}

// postWebhook delivers body with headers and returns the response.
func postWebhook(s *authServer, body []byte, hs ...http.Header) *apitest.Response {
	return s.c.Do(http.MethodPost, "/api/v1/webhooks/stripe", body, hs...)
}

// wantReceived fails unless the webhook answered 200 {received:true}.
func wantReceived(t *testing.T, r *apitest.Response) {
	t.Helper()
	if r.Status != http.StatusOK || !bytes.Contains(r.Body, []byte(`"received":true`)) {
		t.Fatalf("webhook = %d %s, want 200 {received:true}", r.Status, r.Body)
	}
}

// providerID reads the PaymentIntent or Checkout Session id Stripe gave a
// purchase, which the real Stripe would put in its webhooks.
func providerID(t *testing.T, dsn string, purchase uuid.UUID) string {
	t.Helper()
	var id string
	if err := connect(t, dsn).QueryRow(t.Context(), `SELECT provider_id FROM purchase_orders WHERE purchase_id = $1`, purchase).Scan(&id); err != nil {
		t.Fatalf("provider id of %s: %v", purchase, err)
	}
	return id
}

// allEvents counts every event in the log.
func allEvents(t *testing.T, dsn string) int {
	t.Helper()
	var n int
	if err := connect(t, dsn).QueryRow(t.Context(), `SELECT count(*) FROM events`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func startPurchase(t *testing.T, s *authServer, u creditUser, path string, pkg uuid.UUID) purchaseStarted {
	t.Helper()
	r := s.c.Do(http.MethodPost, path, map[string]any{"packageId": pkg}, u.auth())
	if r.Status != http.StatusCreated {
		t.Fatalf("POST %s = %d %s", path, r.Status, r.Body)
	}
	wantPosition(t, r)
	var st purchaseStarted
	r.JSON(t, &st)
	return st
}

func getPurchase(t *testing.T, s *authServer, u creditUser, id uuid.UUID) purchaseView {
	t.Helper()
	r := s.c.Do(http.MethodGet, "/api/v1/credits/purchase/"+id.String(), nil, u.auth())
	if r.Status != http.StatusOK {
		t.Fatalf("GET /credits/purchase/%s = %d %s", id, r.Status, r.Body)
	}
	var v purchaseView
	r.JSON(t, &v)
	return v
}

func securityEvents(t *testing.T, s *authServer, u creditUser) []securityEvent {
	t.Helper()
	r := s.c.Do(http.MethodGet, "/api/v1/auth/security-events", nil, u.auth())
	if r.Status != http.StatusOK {
		t.Fatalf("GET /auth/security-events = %d %s", r.Status, r.Body)
	}
	var evs []securityEvent
	r.JSON(t, &evs)
	return evs
}

func hasSecurityEvent(evs []securityEvent, typ, detail string) bool {
	for _, e := range evs {
		if e.Type == typ && (detail == "" || e.Detail == detail) {
			return true
		}
	}
	return false
}

// TestPurchasesOverHTTP: a purchase against stripe-mock, paid by a signed
// payment_intent.succeeded, lands in the paid bucket, the balance and the
// history once; repeated and competing events, forged, stale and unsigned
// webhooks and a mismatched amount change nothing.
func TestPurchasesOverHTTP(t *testing.T) {
	t.Parallel()
	secret := "whsec_" + randomHex(16)
	s := startServe(t, map[string]string{
		"STRIPE_SECRET_KEY":     "sk_test_" + randomHex(12),
		"STRIPE_WEBHOOK_SECRET": secret,
		"STRIPE_API_BASE":       stripeMock(t),
	})
	dsn := s.vars["DATABASE_URL"]
	basic := domain.DefaultPackages()[1] // 500 credits for €5.00
	u := newCreditUser(t, s, "buyer")

	st := startPurchase(t, s, u, "/api/v1/credits/purchase", basic.PackageID)
	if st.PurchaseID == uuid.Nil || st.ClientSecret == "" || st.URL != "" || st.Amount != 500 || st.Credits != 500 {
		t.Fatalf("purchase answered %+v", st)
	}
	if v := getPurchase(t, s, u, st.PurchaseID); v.Status != "pending" || v.CompletedAt != nil || v.Amount != 500 ||
		v.Credits != 500 || v.Currency != "eur" || v.PackageID != basic.PackageID {
		t.Errorf("pending purchase reads %+v", v)
	}
	pi := providerID(t, dsn, st.PurchaseID)

	paid := stripeEvent(t, "payment_intent.succeeded", paymentIntent(pi, 500, st.PurchaseID, u.id))
	wantReceived(t, postWebhook(s, paid, signStripe(paid, secret, time.Time{})))

	want := creditBalance{Balance: 650, FreeCreditsRemaining: 150, PaidBalance: 500, TotalEarned: 650, DailyFreeCredits: 5}
	wantBalance(t, "balance after the payment", getBalance(t, s, u), want)
	txs := transactions(t, s, u, "")
	if len(txs) != 2 || txs[0].Type != "purchase" || txs[0].Amount != 500 {
		t.Errorf("transactions after the payment: %+v", txs)
	}
	v := getPurchase(t, s, u, st.PurchaseID)
	if v.Status != "completed" || v.CompletedAt == nil {
		t.Errorf("paid purchase reads %+v", v)
	}
	r := s.c.Do(http.MethodGet, "/api/v1/credits/purchases", nil, u.auth())
	var list []purchaseView
	r.JSON(t, &list)
	if r.Status != http.StatusOK || len(list) != 1 || list[0].ID != v.ID || list[0].Status != "completed" {
		t.Errorf("GET /credits/purchases = %d %s", r.Status, r.Body)
	}
	if !hasSecurityEvent(securityEvents(t, s, u), "purchase_completed", st.PurchaseID.String()) {
		t.Error("no purchase_completed security event")
	}

	// unchanged fails unless the log, the balance and the history are
	// what they were after the payment.
	events := allEvents(t, dsn)
	unchanged := func(what string) {
		t.Helper()
		if n := allEvents(t, dsn); n != events {
			t.Errorf("%s appended %d events", what, n-events)
		}
		wantBalance(t, "balance after "+what, getBalance(t, s, u), want)
		if got := transactions(t, s, u, ""); len(got) != len(txs) {
			t.Errorf("%s: %d transactions, want %d", what, len(got), len(txs))
		}
		if n := countEvents(t, dsn, "credit.purchased"); n != 1 {
			t.Errorf("%s: %d credit.purchased events, want 1", what, n)
		}
	}

	wantReceived(t, postWebhook(s, paid, signStripe(paid, secret, time.Time{})))
	unchanged("the same webhook again")
	completed := stripeEvent(t, "checkout.session.completed", checkoutSession("cs_test_"+randomHex(12), pi, 500, st.PurchaseID, u.id))
	wantReceived(t, postWebhook(s, completed, signStripe(completed, secret, time.Time{})))
	unchanged("a checkout.session.completed for the same purchase")

	again := stripeEvent(t, "payment_intent.succeeded", paymentIntent(pi, 500, st.PurchaseID, u.id))
	for name, hs := range map[string][]http.Header{
		"a forged webhook":    {signStripe(again, "whsec_forged", time.Time{})},
		"a stale webhook":     {signStripe(again, secret, time.Now().Add(-6*time.Minute))},
		"an unsigned webhook": nil,
	} {
		r := postWebhook(s, again, hs...)
		wantAuthError(t, r, http.StatusBadRequest, "INVALID_SIGNATURE")
		unchanged(name)
	}
	big := append([]byte(`{"pad":"`), bytes.Repeat([]byte("x"), 300<<10)...)
	big = append(big, `"}`...)
	if r := postWebhook(s, big, signStripe(big, secret, time.Time{})); r.Status != http.StatusRequestEntityTooLarge {
		t.Errorf("a 300 KiB webhook = %d %s", r.Status, r.Body)
	}

	// A payment of the wrong amount is refused, with a security event.
	st2 := startPurchase(t, s, u, "/api/v1/credits/purchase", basic.PackageID)
	cheap := stripeEvent(t, "payment_intent.succeeded", paymentIntent(providerID(t, dsn, st2.PurchaseID), 50, st2.PurchaseID, u.id))
	wantReceived(t, postWebhook(s, cheap, signStripe(cheap, secret, time.Time{})))
	wantBalance(t, "balance after a mismatched payment", getBalance(t, s, u), want)
	if v := getPurchase(t, s, u, st2.PurchaseID); v.Status != "pending" {
		t.Errorf("mismatched purchase reads %+v", v)
	}
	if n := countEvents(t, dsn, "purchase.payment_rejected"); n != 1 {
		t.Errorf("%d purchase.payment_rejected events, want 1", n)
	}
	if !hasSecurityEvent(securityEvents(t, s, u), "payment_rejected", "amount_mismatch") {
		t.Error("no payment_rejected security event for the mismatched amount")
	}

	// A payment link, paid through Checkout: the session's completion
	// grants, the PaymentIntent's success that follows does not.
	link := startPurchase(t, s, u, "/api/v1/credits/payment-link", basic.PackageID)
	if link.URL == "" || link.ClientSecret != "" || link.Amount != 500 || link.Credits != 500 {
		t.Fatalf("payment link answered %+v", link)
	}
	linkPI := "pi_" + randomHex(12)
	done := stripeEvent(t, "checkout.session.completed", checkoutSession(providerID(t, dsn, link.PurchaseID), linkPI, 500, link.PurchaseID, u.id))
	wantReceived(t, postWebhook(s, done, signStripe(done, secret, time.Time{})))
	late := stripeEvent(t, "payment_intent.succeeded", paymentIntent(linkPI, 500, link.PurchaseID, u.id))
	wantReceived(t, postWebhook(s, late, signStripe(late, secret, time.Time{})))
	want = creditBalance{Balance: 1150, FreeCreditsRemaining: 150, PaidBalance: 1000, TotalEarned: 1150, DailyFreeCredits: 5}
	wantBalance(t, "balance after the payment link", getBalance(t, s, u), want)
	if n := countEvents(t, dsn, "credit.purchased"); n != 2 {
		t.Errorf("%d credit.purchased events, want 2", n)
	}

	// A failed payment marks its purchase failed.
	st3 := startPurchase(t, s, u, "/api/v1/credits/purchase", basic.PackageID)
	declined := paymentIntent(providerID(t, dsn, st3.PurchaseID), 500, st3.PurchaseID, u.id)
	declined["amount_received"], declined["status"] = 0, "requires_payment_method"
	declined["last_payment_error"] = map[string]any{"code": "card_declined", "decline_code": "insufficient_funds"}
	failed := stripeEvent(t, "payment_intent.payment_failed", declined)
	wantReceived(t, postWebhook(s, failed, signStripe(failed, secret, time.Time{})))
	if v := getPurchase(t, s, u, st3.PurchaseID); v.Status != "failed" {
		t.Errorf("declined purchase reads %+v", v)
	}
	if !hasSecurityEvent(securityEvents(t, s, u), "purchase_failed", "card_declined") {
		t.Error("no purchase_failed security event")
	}

	// Another user sees none of it.
	other := newCreditUser(t, s, "other")
	if r := s.c.Do(http.MethodGet, "/api/v1/credits/purchase/"+st.PurchaseID.String(), nil, other.auth()); r.Status != http.StatusNotFound {
		t.Errorf("another user's purchase = %d", r.Status)
	}
	if r := s.c.Do(http.MethodGet, "/api/v1/credits/purchases", nil, other.auth()); r.Status != http.StatusOK || string(bytes.TrimSpace(r.Body)) != "[]" {
		t.Errorf("another user's purchases = %d %s", r.Status, r.Body)
	}
	for _, body := range []any{map[string]any{"packageId": uuid.NewString()}, map[string]any{"packageId": "nope"}, map[string]any{"packageId": basic.PackageID, "x": 1}} {
		r := s.c.Do(http.MethodPost, "/api/v1/credits/purchase", body, u.auth())
		if r.Status != http.StatusNotFound && r.Status != http.StatusBadRequest {
			t.Errorf("purchase of %v = %d %s", body, r.Status, r.Body)
		}
	}
	if r := s.c.Do(http.MethodPost, "/api/v1/credits/purchase", map[string]any{"packageId": basic.PackageID}); r.Status != http.StatusUnauthorized {
		t.Errorf("purchase without a token = %d", r.Status)
	}

	if res := runCmd(t, map[string]string{"DATABASE_URL": dsn}, "ledger", "verify"); res.code != 0 {
		t.Errorf("ledger verify: %d %s", res.code, res.stderr)
	}
	// No secret reaches the log.
	for _, secretText := range []string{secret, st.ClientSecret, s.vars["STRIPE_SECRET_KEY"]} {
		if strings.Contains(s.log.String(), secretText) {
			t.Errorf("the log contains a secret (%.12s…)", secretText)
		}
	}
}

// TestPurchasesNotConfigured: without STRIPE_SECRET_KEY purchases answer
// 503 PAYMENTS_NOT_CONFIGURED while the webhook works with its secret;
// without STRIPE_WEBHOOK_SECRET the webhook answers 503.
func TestPurchasesNotConfigured(t *testing.T) {
	t.Parallel()
	secret := "whsec_" + randomHex(16)
	hooksOnly := startServe(t, map[string]string{"STRIPE_WEBHOOK_SECRET": secret})
	u := newCreditUser(t, hooksOnly, "nopay")
	pkg := domain.DefaultPackages()[0].PackageID
	for _, path := range []string{"/api/v1/credits/purchase", "/api/v1/credits/payment-link"} {
		r := hooksOnly.c.Do(http.MethodPost, path, map[string]any{"packageId": pkg}, u.auth())
		wantAuthError(t, r, http.StatusServiceUnavailable, "PAYMENTS_NOT_CONFIGURED")
	}
	body := stripeEvent(t, "payment_intent.succeeded", paymentIntent("pi_"+randomHex(8), 100, uuid.New(), u.id))
	wantReceived(t, postWebhook(hooksOnly, body, signStripe(body, secret, time.Time{})))
	wantAuthError(t, postWebhook(hooksOnly, body, signStripe(body, "whsec_other", time.Time{})), http.StatusBadRequest, "INVALID_SIGNATURE")
	if n := countEvents(t, hooksOnly.vars["DATABASE_URL"], "credit.purchased"); n != 0 {
		t.Errorf("%d grants for an unknown purchase", n)
	}

	none := startServe(t, nil)
	wantAuthError(t, postWebhook(none, body, signStripe(body, secret, time.Time{})), http.StatusServiceUnavailable, "PAYMENTS_NOT_CONFIGURED")
}

// TestStripeAPIBaseValidated: a malformed STRIPE_API_BASE stops serve with
// a message naming it.
func TestStripeAPIBaseValidated(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), commandTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	vars := map[string]string{"DATABASE_URL": missingDB(t), "DATA_DIR": t.TempDir(), "STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_API_BASE": "localhost:12111"}
	if code := run(ctx, []string{"serve", "--port", "0"}, envOf(vars), &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), "STRIPE_API_BASE") {
		t.Errorf("serve with a bad STRIPE_API_BASE: exit %d, stderr %s", code, stderr.String())
	}
}
