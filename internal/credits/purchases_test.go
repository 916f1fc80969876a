package credits_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stripe/stripe-go/v85/webhook"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/credits"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/stripe"
)

// The purchase tests run the purchases service on a real database with a
// fake Stripe at the HTTP edge (the adapter itself is exercised against
// stripe-mock by cmd/mana's tests); webhooks are signed as Stripe signs
// them, with stripe-go's webhook.GenerateTestSignedPayload.

// fakeStripe stands in for *stripe.Client: it hands out fresh ids, or
// fails with err.
type fakeStripe struct {
	mu     sync.Mutex
	err    error
	orders []stripe.Order
}

func randomID(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func (f *fakeStripe) record(o stripe.Order) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.orders = append(f.orders, o)
	return nil
}

func (f *fakeStripe) CreatePaymentIntent(_ context.Context, o stripe.Order) (stripe.Intent, error) {
	if err := f.record(o); err != nil {
		return stripe.Intent{}, err
	}
	id := randomID("pi_")
	return stripe.Intent{ID: id, ClientSecret: id + "_secret_" + randomID("")}, nil
}

func (f *fakeStripe) CreateCheckoutSession(_ context.Context, o stripe.Order) (stripe.Session, error) {
	if err := f.record(o); err != nil {
		return stripe.Session{}, err
	}
	id := randomID("cs_test_")
	return stripe.Session{ID: id, URL: "https://checkout.stripe.com/c/pay/" + id}, nil
}

// shop is a test env with packages and a purchases service.
type shop struct {
	*env
	fake   *fakeStripe
	p      *credits.Purchases
	secret string
	pkg    domain.PackageCreated
}

func newShop(t testing.TB) *shop {
	t.Helper()
	e := newEnv(t)
	s := &shop{env: e, fake: &fakeStripe{}, secret: randomID("whsec_")}
	var err error
	s.p, err = credits.NewPurchases(credits.PurchasesConfig{Credits: e.svc, Provider: s.fake, WebhookSecret: s.secret})
	if err != nil {
		t.Fatal(err)
	}
	s.pkg = domain.PackageCreated{PackageID: uuid.New(), Name: "Basic", Credits: 500, PriceCents: 500, Currency: "eur", SortOrder: 2, Active: true}
	s.appendTo(t, domain.StreamPackage, s.pkg.PackageID.String(), s.pkg)
	return s
}

// appendTo appends evs to a stream as the system.
func (e *env) appendTo(t testing.TB, streamType, streamID string, evs ...domain.Event) {
	t.Helper()
	_, err := e.store.Execute(ctxT(t), eventstore.Command{Name: "test.append", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem},
		Metadata: domain.Metadata{Actor: domain.SystemActor}},
		func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: streamType, StreamID: streamID, ExpectedVersion: eventstore.AnyVersion, Events: evs})
			return domain.Receipt{Status: http.StatusCreated}, err
		})
	if err != nil {
		t.Fatalf("append: %v", err)
	}
}

// purchaseOrder is a purchase_orders row.
type purchaseOrder struct {
	user                    uuid.UUID
	kind, provider, pi      string
	status                  string
	version, credits, cents int64
}

func (e *env) order(t testing.TB, id uuid.UUID) purchaseOrder {
	t.Helper()
	var o purchaseOrder
	err := pg.InTx(ctxT(t), e.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		return tx.QueryRow(context.Background(), `SELECT user_id, kind, provider_id, coalesce(payment_intent_id, ''), status, version, credits, amount_cents
FROM purchase_orders WHERE purchase_id = $1`, id).Scan(&o.user, &o.kind, &o.provider, &o.pi, &o.status, &o.version, &o.credits, &o.cents)
	})
	if err != nil {
		t.Fatalf("read purchase order %s: %v", id, err)
	}
	return o
}

// countEvents counts the events of type typ in the whole log.
func (e *env) countEvents(t testing.TB, typ string) int {
	t.Helper()
	var n int
	err := pg.InTx(ctxT(t), e.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		return tx.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE event_type = $1`, typ).Scan(&n)
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// streamEvents decodes a stream's events.
func (e *env) streamEvents(t testing.TB, streamType, streamID string) []eventstore.Decoded {
	t.Helper()
	var out []eventstore.Decoded
	_, err := e.store.Execute(ctxT(t), eventstore.Command{Name: "test.load", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}},
		func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			evs, _, err := tx.Load(ctx, streamType, streamID, 0)
			out = evs
			return domain.Receipt{}, err
		})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// buy starts a purchase of the shop's package for u.
func (s *shop) buy(t testing.TB, u uuid.UUID, checkout bool) (domain.PurchaseStarted, purchaseOrder) {
	t.Helper()
	st, w, err := s.p.Start(ctxT(t), u, s.pkg.PackageID, checkout, domain.RequestMeta{RequestID: "req-buy"})
	if err != nil {
		t.Fatalf("start purchase: %v", err)
	}
	if w.Position == "" {
		t.Error("Start returned no position")
	}
	return st, s.order(t, st.PurchaseID)
}

// stripeEvent is the JSON of a Stripe event carrying object. Its
// api_version is deliberately old: the webhook ignores the version.
func stripeEvent(id, typ string, object map[string]any) []byte {
	b, err := json.Marshal(map[string]any{
		"id": id, "object": "event", "api_version": "2020-08-27", "created": time.Now().Unix(),
		"livemode": false, "pending_webhooks": 1, "type": typ,
		"data": map[string]any{"object": object},
	})
	if err != nil {
		panic(err)
	}
	return b
}

func intentObject(pi string, amount int64, currency string, purchase, user uuid.UUID) map[string]any {
	return map[string]any{"id": pi, "object": "payment_intent", "amount": amount, "amount_received": amount, "currency": currency,
		"status": "succeeded", "metadata": map[string]any{"purchase_id": purchase.String(), "user_id": user.String()}}
}

func sessionObject(cs, pi string, amount int64, purchase, user uuid.UUID) map[string]any {
	return map[string]any{"id": cs, "object": "checkout.session", "amount_total": amount, "currency": "eur",
		"payment_status": "paid", "payment_intent": pi, "client_reference_id": purchase.String(),
		"metadata": map[string]any{"purchase_id": purchase.String(), "user_id": user.String()}}
}

// sign returns the Stripe-Signature header of body under secret at time at
// (now when zero).
func sign(body []byte, secret string, at time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: at}).Header
}

// deliver sends a correctly signed event and fails on any error.
func (s *shop) deliver(t testing.TB, body []byte) {
	t.Helper()
	if err := s.p.Webhook(ctxT(t), body, sign(body, s.secret, time.Time{})); err != nil {
		t.Fatalf("webhook: %v", err)
	}
}

func TestPurchaseGrantsOnceWhicheverEventComesFirst(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	u := s.register(t)
	st, o := s.buy(t, u, false)
	if st.ClientSecret == "" || st.URL != "" || st.AmountCents != 500 || st.Credits != 500 {
		t.Fatalf("started %+v", st)
	}
	if o.user != u || o.kind != "payment_intent" || o.status != "pending" || o.version != 1 || o.credits != 500 || o.cents != 500 {
		t.Fatalf("order %+v", o)
	}
	got := s.fake.orders[0]
	if got.PurchaseID != st.PurchaseID || got.UserID != u || got.AmountCents != 500 || got.Currency != "eur" {
		t.Errorf("stripe was asked for %+v", got)
	}

	succeeded := stripeEvent(randomID("evt_"), "payment_intent.succeeded", intentObject(o.provider, 500, "eur", st.PurchaseID, u))
	s.deliver(t, succeeded)
	s.wantBalance(t, u, signupBonus, 500, 0)
	if o := s.order(t, st.PurchaseID); o.status != "completed" || o.version != 2 {
		t.Fatalf("after the payment: %+v", o)
	}
	events := s.eventCount(t)

	// The same delivery again, a checkout event for the purchase and a
	// late failure change nothing.
	s.deliver(t, succeeded)
	s.deliver(t, stripeEvent(randomID("evt_"), "checkout.session.completed", sessionObject(randomID("cs_"), o.provider, 500, st.PurchaseID, u)))
	failed := intentObject(o.provider, 500, "eur", st.PurchaseID, u)
	failed["last_payment_error"] = map[string]any{"code": "card_declined", "message": "Your card was declined."}
	s.deliver(t, stripeEvent(randomID("evt_"), "payment_intent.payment_failed", failed))
	s.wantBalance(t, u, signupBonus, 500, 0)
	if n := s.eventCount(t); n != events {
		t.Errorf("repeated and late events appended %d events", n-events)
	}
	if n := s.countType(t, u, "credit.purchased"); n != 1 {
		t.Errorf("%d credit.purchased, want 1", n)
	}
	evs := s.streamEvents(t, domain.StreamPurchase, st.PurchaseID.String())
	if len(evs) != 2 || evs[0].EventType != "purchase.created" || evs[1].EventType != "purchase.completed" {
		t.Fatalf("purchase stream %v", evs)
	}
	if c := evs[1].Event.(*domain.PurchaseCompleted); c.Unclaimed || c.UserID != u {
		t.Errorf("completed %+v", c)
	}
}

// TestPurchaseConcurrentDeliveries: a checkout purchase receives its
// checkout.session.completed and its payment_intent.succeeded, each
// delivered several times at once: exactly one grant.
func TestPurchaseConcurrentDeliveries(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	u := s.register(t)
	st, o := s.buy(t, u, true)
	if st.URL == "" || st.ClientSecret != "" || o.kind != "checkout" {
		t.Fatalf("started %+v, order %+v", st, o)
	}
	pi := randomID("pi_")
	bodies := [][]byte{
		stripeEvent(randomID("evt_"), "checkout.session.completed", sessionObject(o.provider, pi, 500, st.PurchaseID, u)),
		stripeEvent(randomID("evt_"), "payment_intent.succeeded", intentObject(pi, 500, "eur", st.PurchaseID, u)),
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := bodies[i%2]
			errs <- s.p.Webhook(ctxT(t), b, sign(b, s.secret, time.Time{}))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("webhook: %v", err)
		}
	}
	s.wantBalance(t, u, signupBonus, 500, 0)
	if n := s.countType(t, u, "credit.purchased"); n != 1 {
		t.Fatalf("%d grants, want 1", n)
	}
	if o := s.order(t, st.PurchaseID); o.status != "completed" || o.pi != pi {
		t.Errorf("order %+v, want completed with payment intent %s", o, pi)
	}
}

func TestPurchaseRejections(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	u := s.register(t)
	other := s.register(t)
	st, o := s.buy(t, u, false)
	cases := []struct {
		name, reason string
		object       map[string]any
	}{
		{"amount", "amount_mismatch", intentObject(o.provider, 499, "eur", st.PurchaseID, u)},
		{"currency", "currency_mismatch", intentObject(o.provider, 500, "usd", st.PurchaseID, u)},
		{"user", "user_mismatch", intentObject(o.provider, 500, "eur", st.PurchaseID, other)},
		{"payment intent", "provider_mismatch", intentObject(randomID("pi_"), 500, "eur", st.PurchaseID, u)},
	}
	for i, c := range cases {
		s.deliver(t, stripeEvent(randomID("evt_"), "payment_intent.succeeded", c.object))
		evs := s.streamEvents(t, domain.StreamPurchase, st.PurchaseID.String())
		if len(evs) != 2+i {
			t.Fatalf("%s: purchase stream has %d events", c.name, len(evs))
		}
		rej, ok := evs[len(evs)-1].Event.(*domain.PurchasePaymentRejected)
		if !ok || rej.Reason != c.reason || rej.UserID != u || rej.PurchaseID != st.PurchaseID {
			t.Errorf("%s: last event %s %+v", c.name, evs[len(evs)-1].EventType, evs[len(evs)-1].Event)
		}
	}
	if n := s.countEvents(t, "credit.purchased"); n != 0 {
		t.Fatalf("%d grants after mismatched payments", n)
	}
	if o := s.order(t, st.PurchaseID); o.status != "pending" || o.version != int64(1+len(cases)) {
		t.Errorf("order %+v", o)
	}
	// The right payment still completes the purchase afterwards.
	s.deliver(t, stripeEvent(randomID("evt_"), "payment_intent.succeeded", intentObject(o.provider, 500, "eur", st.PurchaseID, u)))
	s.wantBalance(t, u, signupBonus, 500, 0)

	// A payment naming no known purchase, by metadata or by id.
	unknown := randomID("evt_")
	s.deliver(t, stripeEvent(unknown, "payment_intent.succeeded", intentObject(randomID("pi_"), 500, "eur", uuid.New(), u)))
	noMeta := map[string]any{"id": randomID("pi_"), "object": "payment_intent", "amount": 500, "currency": "eur"}
	s.deliver(t, stripeEvent(randomID("evt_"), "payment_intent.succeeded", noMeta))
	evs := s.streamEvents(t, domain.StreamPayments, unknown)
	if len(evs) != 1 {
		t.Fatalf("payments/%s has %d events", unknown, len(evs))
	}
	if rej := evs[0].Event.(*domain.PurchasePaymentRejected); rej.Reason != "unknown_purchase" || rej.UserID != uuid.Nil || rej.AmountCents != 500 {
		t.Errorf("unknown purchase recorded as %+v", rej)
	}
	if n := s.countEvents(t, "credit.purchased"); n != 1 {
		t.Fatalf("%d grants, want the one", n)
	}
}

func TestPurchaseFailureThenSuccess(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	u := s.register(t)
	st, o := s.buy(t, u, false)
	failed := intentObject(o.provider, 500, "eur", st.PurchaseID, u)
	failed["amount_received"] = 0
	failed["last_payment_error"] = map[string]any{"code": "card_declined"}
	s.deliver(t, stripeEvent(randomID("evt_"), "payment_intent.payment_failed", failed))
	if o := s.order(t, st.PurchaseID); o.status != "failed" {
		t.Fatalf("after a failure: %+v", o)
	}
	evs := s.streamEvents(t, domain.StreamPurchase, st.PurchaseID.String())
	if f, ok := evs[len(evs)-1].Event.(*domain.PurchaseFailed); !ok || f.Reason != "card_declined" || f.UserID != u {
		t.Fatalf("last event %+v", evs[len(evs)-1].Event)
	}
	// The payer retries with another card on the same PaymentIntent.
	s.deliver(t, stripeEvent(randomID("evt_"), "payment_intent.succeeded", intentObject(o.provider, 500, "eur", st.PurchaseID, u)))
	s.wantBalance(t, u, signupBonus, 500, 0)
	if o := s.order(t, st.PurchaseID); o.status != "completed" {
		t.Fatalf("after the retry: %+v", o)
	}

	// An expired checkout fails its purchase; an unpaid completion
	// changes nothing.
	st2, o2 := s.buy(t, u, true)
	s.deliver(t, stripeEvent(randomID("evt_"), "checkout.session.completed", map[string]any{
		"id": o2.provider, "object": "checkout.session", "amount_total": 500, "currency": "eur", "payment_status": "unpaid",
		"client_reference_id": st2.PurchaseID.String()}))
	if o := s.order(t, st2.PurchaseID); o.status != "pending" || o.version != 1 {
		t.Fatalf("after an unpaid completion: %+v", o)
	}
	s.deliver(t, stripeEvent(randomID("evt_"), "checkout.session.expired", sessionObject(o2.provider, "", 500, st2.PurchaseID, u)))
	if o := s.order(t, st2.PurchaseID); o.status != "failed" {
		t.Fatalf("after expiry: %+v", o)
	}
}

// TestPurchaseForErasedAccount: the credits of a payment that arrives
// after the account was erased go to system:unclaimed.
func TestPurchaseForErasedAccount(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	for _, opened := range []bool{true, false} {
		u := s.register(t)
		if opened {
			s.grant(t, u, 10, "paid") // opens the write-side account row
		}
		st, o := s.buy(t, u, false)
		err := pg.InTx(ctxT(t), s.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
			_, err := tx.Exec(context.Background(), `UPDATE auth_users SET erased = true WHERE user_id = $1`, u)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		before, _ := s.account(t, u)
		s.deliver(t, stripeEvent(randomID("evt_"), "payment_intent.succeeded", intentObject(o.provider, 500, "eur", st.PurchaseID, u)))
		evs := s.stream(t, u)
		last := evs[len(evs)-1]
		cp, ok := last.Event.(*domain.CreditPurchased)
		if !ok || cp.Postings[0].Account != domain.AccountUnclaimed || cp.Amount != 500 {
			t.Fatalf("opened=%v: last account event %s %+v", opened, last.EventType, last.Event)
		}
		after, found := s.account(t, u)
		if found != opened || after.Paid != before.Paid || after.TotalEarned != before.TotalEarned {
			t.Errorf("opened=%v: account %s → %s (row %v)", opened, showAccount(before), showAccount(after), found)
		}
		pevs := s.streamEvents(t, domain.StreamPurchase, st.PurchaseID.String())
		if c, ok := pevs[len(pevs)-1].Event.(*domain.PurchaseCompleted); !ok || !c.Unclaimed {
			t.Errorf("opened=%v: completion %+v", opened, pevs[len(pevs)-1].Event)
		}
	}
}

func TestPurchaseStartFailures(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	u := s.register(t)
	ctx := ctxT(t)

	_, _, err := s.p.Start(ctx, u, uuid.New(), false, domain.RequestMeta{})
	wantCode(t, err, domain.CodeNotFound)
	_, _, err = s.p.Start(ctx, u, uuid.Nil, false, domain.RequestMeta{})
	wantCode(t, err, domain.CodeValidationFailed)

	// package.updated changes what a purchase costs, and can take the
	// package off sale.
	price, amount := int64(900), int64(1000)
	s.appendTo(t, domain.StreamPackage, s.pkg.PackageID.String(), domain.PackageUpdated{PackageID: s.pkg.PackageID, PriceCents: &price, Credits: &amount})
	st, o := s.buy(t, u, false)
	if st.AmountCents != 900 || st.Credits != 1000 || o.cents != 900 || o.credits != 1000 {
		t.Errorf("repriced purchase %+v, order %+v", st, o)
	}
	off := false
	s.appendTo(t, domain.StreamPackage, s.pkg.PackageID.String(), domain.PackageUpdated{PackageID: s.pkg.PackageID, Active: &off})
	_, _, err = s.p.Start(ctx, u, s.pkg.PackageID, false, domain.RequestMeta{})
	wantCode(t, err, domain.CodeNotFound)
	on := true
	s.appendTo(t, domain.StreamPackage, s.pkg.PackageID.String(), domain.PackageUpdated{PackageID: s.pkg.PackageID, Active: &on})

	// Stripe failing records nothing.
	events := s.eventCount(t)
	s.fake.mu.Lock()
	s.fake.err = &stripe.Error{Op: "test"}
	s.fake.mu.Unlock()
	_, _, err = s.p.Start(ctx, u, s.pkg.PackageID, true, domain.RequestMeta{})
	wantCode(t, err, domain.CodeUnavailable)
	if n := s.eventCount(t); n != events {
		t.Errorf("a failed Stripe call recorded %d events", n-events)
	}

	// Without Stripe configured.
	bare, err := credits.NewPurchases(credits.PurchasesConfig{Credits: s.svc})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = bare.Start(ctx, u, s.pkg.PackageID, false, domain.RequestMeta{})
	wantCode(t, err, domain.CodePaymentsNotConfigured)
	body := stripeEvent(randomID("evt_"), "payment_intent.succeeded", intentObject("pi_x", 500, "eur", uuid.New(), u))
	wantCode(t, bare.Webhook(ctx, body, sign(body, "whsec_any", time.Time{})), domain.CodePaymentsNotConfigured)
}

func TestWebhookSignatures(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	u := s.register(t)
	st, o := s.buy(t, u, false)
	body := stripeEvent(randomID("evt_"), "payment_intent.succeeded", intentObject(o.provider, 500, "eur", st.PurchaseID, u))
	ctx := ctxT(t)
	tampered := append([]byte(nil), body...)
	tampered[len(tampered)-2] = ' '
	for name, header := range map[string]string{
		"unsigned":       "",
		"wrong secret":   sign(body, "whsec_wrong", time.Time{}),
		"stale":          sign(body, s.secret, time.Now().Add(-10*time.Minute)),
		"garbage":        "t=abc,v1=zz",
		"other body":     sign(tampered, s.secret, time.Time{}),
		"no v1":          "t=" + time.Now().Format("20060102"),
		"v0 only scheme": webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: s.secret, Scheme: "v0"}).Header,
	} {
		if got := code(s.p.Webhook(ctx, body, header)); got != domain.CodeInvalidSignature {
			t.Errorf("%s: %q, want INVALID_SIGNATURE", name, got)
		}
	}
	// Signed, but not a Stripe event.
	for _, b := range [][]byte{[]byte(`{}`), []byte(`not json`), []byte(`{"object":"event","id":"evt_1","type":"payment_intent.succeeded","data":{"object":{"object":"payment_intent"}}}`)} {
		wantCode(t, s.p.Webhook(ctx, b, sign(b, s.secret, time.Time{})), domain.CodeValidationFailed)
	}
	// A type purchases do not handle is accepted and changes nothing.
	events := s.eventCount(t)
	other := stripeEvent(randomID("evt_"), "customer.created", map[string]any{"id": "cus_1", "object": "customer"})
	if err := s.p.Webhook(ctx, other, sign(other, s.secret, time.Time{})); err != nil {
		t.Fatal(err)
	}
	if n := s.eventCount(t); n != events || s.countEvents(t, "credit.purchased") != 0 {
		t.Fatalf("rejected webhooks recorded %d events", n-events)
	}
	if o := s.order(t, st.PurchaseID); o.status != "pending" {
		t.Errorf("order %+v", o)
	}
}

// FuzzWebhook: random bodies and signatures, signed correctly or not,
// never panic, fail only with INVALID_SIGNATURE or VALIDATION_FAILED, and
// never grant credits, though a pending purchase exists (its ids are
// random, so no input can name it).
func FuzzWebhook(f *testing.F) {
	s := newShop(f)
	u := s.register(f)
	s.buy(f, u, false)
	purchase := uuid.MustParse("01890000-0000-7000-8000-000000000001")
	for _, seed := range []struct {
		body []byte
		sig  string
		sign bool
	}{
		{stripeEvent("evt_1", "payment_intent.succeeded", intentObject("pi_1", 500, "eur", purchase, u)), "", true},
		{stripeEvent("evt_2", "payment_intent.payment_failed", intentObject("pi_1", 500, "eur", purchase, u)), "", true},
		{stripeEvent("evt_3", "checkout.session.completed", sessionObject("cs_1", "pi_1", 500, purchase, u)), "", true},
		{stripeEvent("evt_4", "checkout.session.expired", sessionObject("cs_1", "", 500, purchase, u)), "", true},
		{stripeEvent("evt_5", "payment_intent.succeeded", map[string]any{"id": "pi\u0000", "object": "payment_intent"}), "", true},
		{stripeEvent("evt_6", "payment_intent.succeeded", intentObject("pi_1", 500, "eur", purchase, u)), "t=1,v1=00", false},
		{[]byte(`{"object":"event","id":"evt_7","type":"checkout.session.completed","data":{"object":{"object":"checkout.session","id":"cs_1","payment_intent":{"id":7}}}}`), "", true},
		{[]byte(`{"object":"event","data":null}`), "", true},
		{[]byte(`[]`), "t=,v1=", false},
		{nil, "", false},
	} {
		f.Add(seed.body, seed.sig, seed.sign)
	}
	f.Fuzz(func(t *testing.T, body []byte, sig string, signIt bool) {
		if signIt {
			sig = sign(body, s.secret, time.Time{})
		}
		err := s.p.Webhook(context.Background(), body, sig)
		var de *domain.Error
		if err != nil && (!errors.As(err, &de) || de.Code != domain.CodeInvalidSignature && de.Code != domain.CodeValidationFailed) {
			t.Fatalf("webhook failed with %v", err)
		}
		if !signIt && err == nil {
			// Only a forged signature could pass; the secret is random.
			t.Fatalf("an unsigned body passed with header %q", sig)
		}
		if n := s.countEvents(t, "credit.purchased"); n != 0 {
			t.Fatalf("%d credits granted by fuzzed webhooks", n)
		}
	})
}
