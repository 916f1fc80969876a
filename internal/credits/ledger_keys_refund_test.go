package credits_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/pg"
)

// TestServiceKeys: the right key authenticates its app (with its cap); a
// wrong secret, an unknown or malformed key, a revoked key and another
// app's id do not; only a hash of the secret is stored.
func TestServiceKeys(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := ctxT(t)
	k, err := e.svc.CreateServiceKey(ctx, "app-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	capped, err := e.svc.CreateServiceKey(ctx, "app-b", 25)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.CreateServiceKey(ctx, "Not An App", 0); code(err) != domain.CodeValidationFailed {
		t.Fatalf("bad app id: %v", err)
	}
	c, err := e.svc.AuthenticateApp(ctx, "app-a", k.Secret)
	if err != nil || c.Kind != "app" || c.AppID != "app-a" || c.MaxSpendPerUserPerDay != 0 || c.Principal() != "app:app-a" {
		t.Fatalf("AuthenticateApp = %+v, %v", c, err)
	}
	c, err = e.svc.AuthenticateApp(ctx, "app-b", capped.Secret)
	if err != nil || c.AppID != "app-b" || c.MaxSpendPerUserPerDay != 25 {
		t.Fatalf("AuthenticateApp(capped) = %+v, %v", c, err)
	}

	// Only SHA-256 of the secret part is stored.
	var keyHash []byte
	var appID string
	err = pg.InTx(ctx, e.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		return tx.QueryRow(context.Background(), `SELECT app_id, key_hash FROM service_keys WHERE key_id = $1`, k.ID).Scan(&appID, &keyHash)
	})
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimPrefix(k.Secret, "mk_"+k.ID+"_")
	sum := sha256.Sum256([]byte(secret))
	if appID != "app-a" || !bytes.Equal(keyHash, sum[:]) || bytes.Contains(keyHash, []byte(secret)) || bytes.Equal(keyHash, []byte(k.Secret)) {
		t.Fatalf("stored key_hash %x is not SHA-256 of the secret", keyHash)
	}

	repl := "A"
	if strings.HasSuffix(k.Secret, "A") {
		repl = "B"
	}
	flipped := k.Secret[:len(k.Secret)-1] + repl
	for name, tc := range map[string]struct {
		app, key string
		want     domain.Code
	}{
		"wrong secret":  {"app-a", flipped, domain.CodeUnauthorized},
		"other key id":  {"app-a", "mk_0000000000000000_" + secret, domain.CodeUnauthorized},
		"no prefix":     {"app-a", strings.TrimPrefix(k.Secret, "mk_"), domain.CodeUnauthorized},
		"empty":         {"app-a", "", domain.CodeUnauthorized},
		"only the id":   {"app-a", "mk_" + k.ID + "_", domain.CodeUnauthorized},
		"another app":   {"app-b", k.Secret, domain.CodeAppMismatch},
		"other's key":   {"app-a", capped.Secret, domain.CodeAppMismatch},
		"secret alone":  {"app-a", secret, domain.CodeUnauthorized},
		"hash as key":   {"app-a", "mk_" + k.ID + "_" + string(keyHash), domain.CodeUnauthorized},
		"trailing junk": {"app-a", k.Secret + "x", domain.CodeUnauthorized},
	} {
		if _, err := e.svc.AuthenticateApp(ctx, tc.app, tc.key); code(err) != tc.want {
			t.Errorf("%s: %v, want %s", name, err, tc.want)
		}
	}

	// Revoked: refused; revoking twice reports false.
	if ok, err := e.svc.RevokeServiceKey(ctx, k.ID); !ok || err != nil {
		t.Fatalf("revoke = %v, %v", ok, err)
	}
	if _, err := e.svc.AuthenticateApp(ctx, "app-a", k.Secret); code(err) != domain.CodeUnauthorized {
		t.Fatalf("revoked key: %v", err)
	}
	if ok, err := e.svc.RevokeServiceKey(ctx, k.ID); ok || err != nil {
		t.Fatalf("second revoke = %v, %v", ok, err)
	}
	// The other key still works.
	if _, err := e.svc.AuthenticateApp(ctx, "app-b", capped.Secret); err != nil {
		t.Fatal(err)
	}
}

// TestSpendCap: a key's per-user daily cap refuses the spend or hold that
// would pass it with SPEND_LIMIT_EXCEEDED and records nothing; other
// users and the next UTC day start afresh.
func TestSpendCap(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k, err := e.svc.CreateServiceKey(ctxT(t), "capped", 10)
	if err != nil {
		t.Fatal(err)
	}
	app, err := e.svc.AuthenticateApp(ctxT(t), "capped", k.Secret)
	if err != nil {
		t.Fatal(err)
	}
	u, v := e.register(t), e.register(t)
	spend := func(u uuid.UUID, n domain.Credits) error {
		_, err := e.svc.Use(ctxT(t), app, u, domain.UseInput{Amount: n, AppID: "capped", IdempotencyKey: uuid.NewString()})
		return err
	}
	if err := spend(u, 6); err != nil {
		t.Fatal(err)
	}
	before := e.eventCount(t)
	wantCode(t, spend(u, 5), domain.CodeSpendLimitExceeded)
	_, err = e.svc.PlaceHold(ctxT(t), app, u, domain.HoldInput{Amount: 5, TTLSeconds: 60})
	wantCode(t, err, domain.CodeSpendLimitExceeded)
	if e.eventCount(t) != before {
		t.Fatal("a spend over the cap recorded something")
	}
	e.wantBalance(t, u, signupBonus-6, 0, 0)
	if err := spend(u, 4); err != nil {
		t.Fatalf("up to the cap: %v", err)
	}
	wantCode(t, spend(u, 1), domain.CodeSpendLimitExceeded)
	// A body appId of another app is refused.
	_, err = e.svc.Use(ctxT(t), app, u, domain.UseInput{Amount: 1, AppID: "other"})
	wantCode(t, err, domain.CodeAppMismatch)
	// Per user.
	if err := spend(v, 10); err != nil {
		t.Fatalf("another user: %v", err)
	}
	// A refused spend for lack of credits does not use up the cap.
	w := e.register(t)
	wantCode(t, spend(w, 1000), domain.CodeInsufficientCredits)
	if err := spend(w, 10); err != nil {
		t.Fatalf("after an insufficient spend: %v", err)
	}
	// The next UTC day (the day's grant comes first).
	e.clock.Set(dayD.AddDate(0, 0, 1).Truncate(24 * time.Hour))
	if err := spend(u, 10); err != nil {
		t.Fatalf("next day: %v", err)
	}
	wantCode(t, spend(u, 1), domain.CodeSpendLimitExceeded)
	e.wantBalance(t, u, signupBonus-20+dailyFree, 0, 0)
	// The user's own spends are not capped.
	must(t)(e.use(t, e.svc, u, 5, ""))
}

// TestRefund: partial refunds up to the charge, paid first, each to its
// bucket; an app may refund only its own charges.
func TestRefund(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u := e.register(t)
	e.grant(t, u, 100, "paid")
	spend := must(t)(e.svc.Use(ctxT(t), appCaller("a"), u, domain.UseInput{Amount: 200, Description: "big"}))
	txID := idOf(t, spend, "transaction", "id")
	e.wantBalance(t, u, 0, 50, 0) // 150 free + 50 paid spent

	refund := func(c domain.Caller, tx uuid.UUID, amount domain.Credits, key string) (domain.Receipt, error) {
		return e.svc.Refund(ctxT(t), c, domain.AdminCreditInput{UserID: u, TransactionID: tx, Amount: amount, Reason: "refund", IdempotencyKey: key})
	}
	// App B may not refund app A's charge; nothing recorded.
	before := e.eventCount(t)
	_, err := refund(appCaller("b"), txID, 10, "")
	wantCode(t, err, domain.CodeAppMismatch)
	if e.eventCount(t) != before {
		t.Fatal("a refused refund recorded something")
	}
	// Paid first: 30 of the 50 paid.
	r := must(t)(refund(appCaller("a"), txID, 30, "r1"))
	ev := e.lastEvent(t, u).(*domain.CreditRefunded)
	if ev.Split != (domain.Split{Paid: 30}) || ev.RefundOf != txID || ev.AppID != "a" {
		t.Fatalf("refund %+v", ev)
	}
	e.wantBalance(t, u, 0, 80, 0)
	// Its replay changes nothing.
	again := must(t)(refund(appCaller("a"), txID, 30, "r1"))
	if !again.Replayed || !bytes.Equal(again.Body, r.Body) {
		t.Fatal("refund replay")
	}
	// Then the last 20 paid and 10 free.
	must(t)(refund(adminCaller(), txID, 30, ""))
	if ev := e.lastEvent(t, u).(*domain.CreditRefunded); ev.Split != (domain.Split{Free: 10, Paid: 20}) {
		t.Fatalf("second refund split %+v", ev.Split)
	}
	e.wantBalance(t, u, 10, 100, 0)
	// Up to the charge: 140 remain.
	_, err = refund(adminCaller(), txID, 141, "")
	wantCode(t, err, domain.CodeValidationFailed)
	must(t)(refund(adminCaller(), txID, 140, ""))
	_, err = refund(adminCaller(), txID, 1, "")
	wantCode(t, err, domain.CodeValidationFailed)
	a := e.wantBalance(t, u, 150, 100, 0)
	if a.TotalSpent != 0 || a.TotalEarned != 250 {
		t.Fatalf("after refunding everything: %s", showAccount(a))
	}
	// Unknown or another user's transaction.
	_, err = refund(adminCaller(), uuid.New(), 1, "")
	wantCode(t, err, domain.CodeNotFound)
	v := e.register(t)
	vs := must(t)(e.use(t, e.svc, v, 5, ""))
	_, err = refund(adminCaller(), idOf(t, vs, "transaction", "id"), 1, "")
	wantCode(t, err, domain.CodeNotFound)

	// A capture is refundable too, paid first.
	id, _ := e.placeHold(t, appCaller("a"), u, 200, "", 60) // 150 free + 50 paid
	cr := must(t)(e.svc.CaptureHold(ctxT(t), appCaller("a"), u, id, 180, ""))
	e.wantBalance(t, u, 0, 70, 0)
	must(t)(refund(appCaller("a"), idOf(t, cr, "transaction", "id"), 40, ""))
	if ev := e.lastEvent(t, u).(*domain.CreditRefunded); ev.Split != (domain.Split{Free: 10, Paid: 30}) {
		t.Fatalf("capture refund split %+v", ev.Split)
	}
	e.wantBalance(t, u, 10, 100, 0)
	for _, in := range []domain.AdminCreditInput{
		{UserID: u, TransactionID: txID, Amount: 1},                  // no reason
		{UserID: u, Amount: 1, Reason: "x"},                          // no transaction
		{UserID: u, TransactionID: txID, Amount: 0, Reason: "x"},     // zero
		{TransactionID: txID, Amount: 1, Reason: "x"},                // no user
		{UserID: u, TransactionID: txID, Amount: -5, Reason: "x"},    // negative
		{UserID: u, TransactionID: txID, Amount: 1, Reason: "     "}, // blank reason
	} {
		_, err := e.svc.Refund(ctxT(t), adminCaller(), in)
		wantCode(t, err, domain.CodeValidationFailed)
	}
}

// TestAdminGrantAdjust: grants to either bucket; adjustments up (to free)
// and down (free first, then paid), never below zero; validation.
func TestAdminGrantAdjust(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u := e.register(t)
	e.grant(t, u, 40, "paid")
	e.grant(t, u, 10, "")
	e.wantBalance(t, u, 160, 40, 0)
	adj := func(n domain.Credits) error {
		_, err := e.svc.Adjust(ctxT(t), adminCaller(), domain.AdminCreditInput{UserID: u, Amount: n, Reason: "fix"})
		return err
	}
	if err := adj(-170); err != nil {
		t.Fatal(err)
	}
	if ev := e.lastEvent(t, u).(*domain.CreditAdjusted); ev.Split != (domain.Split{Free: -160, Paid: -10}) {
		t.Fatalf("adjust split %+v", ev.Split)
	}
	e.wantBalance(t, u, 0, 30, 0)
	wantCode(t, adj(-31), domain.CodeInsufficientCredits)
	wantCode(t, adj(0), domain.CodeValidationFailed)
	if err := adj(5); err != nil {
		t.Fatal(err)
	}
	a := e.wantBalance(t, u, 5, 30, 0)
	if a.TotalEarned != 205 || a.TotalSpent != 170 {
		t.Fatalf("totals %s", showAccount(a))
	}
	_, err := e.svc.Grant(ctxT(t), adminCaller(), domain.AdminCreditInput{UserID: u, Amount: 1, Bucket: "gold", Reason: "x"})
	wantCode(t, err, domain.CodeValidationFailed)
	_, err = e.svc.Grant(ctxT(t), adminCaller(), domain.AdminCreditInput{UserID: u, Amount: -1, Reason: "x"})
	wantCode(t, err, domain.CodeValidationFailed)
	_, err = e.svc.Grant(ctxT(t), adminCaller(), domain.AdminCreditInput{UserID: uuid.New(), Amount: 1, Reason: "x"})
	wantCode(t, err, domain.CodeNotFound)
}

// TestBalanceOfUntouchedAccount: right after registration, before any
// credit command opened the write-side row, Balance (answering from the
// write side while the read model lags) shows the signup bonus, and
// reading it writes nothing.
func TestBalanceOfUntouchedAccount(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u := e.register(t)
	before := e.eventCount(t)
	b, err := e.svc.Balance(ctxT(t), u, "")
	if err != nil {
		t.Fatal(err)
	}
	want := domain.Balance{Balance: signupBonus, FreeCreditsRemaining: signupBonus, TotalEarned: signupBonus, DailyFreeCredits: dailyFree}
	if b != want {
		t.Fatalf("Balance = %+v, want %+v", b, want)
	}
	if _, ok := e.account(t, u); ok || e.eventCount(t) != before {
		t.Fatal("a read wrote")
	}
	// BalanceAt agrees.
	if b, err := e.svc.BalanceAt(ctxT(t), u, e.clock.Now().Format(time.RFC3339Nano)); err != nil || b != want {
		t.Fatalf("BalanceAt = %+v, %v", b, err)
	}
}
