package credits_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/credits"
	"github.com/manacore/mana/internal/pg"
)

// placeHold places a hold as caller and returns its id.
func (e *env) placeHold(t *testing.T, c domain.Caller, u uuid.UUID, amount domain.Credits, app string, ttl int) (uuid.UUID, domain.Receipt) {
	t.Helper()
	r := must(t)(e.svc.PlaceHold(ctxT(t), c, u, domain.HoldInput{Amount: amount, AppID: app, TTLSeconds: ttl}))
	if r.Status != 201 {
		t.Fatalf("hold status %d", r.Status)
	}
	return idOf(t, r, "id"), r
}

// lastEvent returns u's newest event.
func (e *env) lastEvent(t *testing.T, u uuid.UUID) domain.Event {
	t.Helper()
	evs := e.stream(t, u)
	return evs[len(evs)-1].Event
}

// holdStatus reads a hold's write-side status.
func (e *env) holdStatus(t *testing.T, id uuid.UUID) string {
	t.Helper()
	var s string
	err := pg.InTx(ctxT(t), e.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		return tx.QueryRow(context.Background(), `SELECT status FROM credit_holds WHERE hold_id = $1`, id).Scan(&s)
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestHoldCaptureAndRelease: a hold takes free then paid; held credits
// cannot be spent; a partial capture takes held-free first and returns the
// rest to its original buckets; capture is final; over-capture is refused
// and changes nothing; a release returns the split.
func TestHoldCaptureAndRelease(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u := e.register(t)
	e.grant(t, u, 100, "paid")
	c := userCaller(u)

	id, r := e.placeHold(t, c, u, 200, "app", 60)
	b := body(t, r)
	if b["status"] != "active" || b["amount"] != float64(200) || b["appId"] != "app" {
		t.Fatalf("hold body %s", r.Body)
	}
	placed := e.lastEvent(t, u).(*domain.CreditHoldPlaced)
	if placed.Split != (domain.Split{Free: 150, Paid: 50}) || placed.ExpiresAt != dayD.Add(time.Minute) {
		t.Fatalf("placed %+v", placed)
	}
	if nb := newBalance(t, r); nb.Balance != 50 || nb.HeldCredits != 200 || nb.PaidBalance != 50 {
		t.Fatalf("newBalance %+v", nb)
	}
	e.wantBalance(t, u, 0, 50, 200)

	// Held credits cannot be spent.
	_, err := e.use(t, e.svc, u, 51, "")
	wantCode(t, err, domain.CodeInsufficientCredits)

	// Over-capture: refused, nothing recorded, the hold stays active.
	before := e.eventCount(t)
	_, err = e.svc.CaptureHold(ctxT(t), c, u, id, 201, "")
	wantCode(t, err, domain.CodeCaptureExceedsHold)
	_, err = e.svc.CaptureHold(ctxT(t), c, u, id, 0, "")
	wantCode(t, err, domain.CodeValidationFailed)
	if e.eventCount(t) != before || e.holdStatus(t, id) != "active" {
		t.Fatal("a refused capture changed something")
	}

	// Partial capture: 170 of 200 = 150 held-free + 20 held-paid; 30 paid
	// go back to paid.
	r = must(t)(e.svc.CaptureHold(ctxT(t), c, u, id, 170, "cap-1"))
	cap := e.lastEvent(t, u).(*domain.CreditHoldCaptured)
	if cap.Captured != (domain.Split{Free: 150, Paid: 20}) || cap.Returned != (domain.Split{Paid: 30}) {
		t.Fatalf("captured %+v returned %+v", cap.Captured, cap.Returned)
	}
	if hb := body(t, r)["hold"].(map[string]any); hb["status"] != "captured" || hb["captured"] != float64(170) {
		t.Fatalf("capture body %s", r.Body)
	}
	a := e.wantBalance(t, u, 0, 80, 0)
	if a.TotalSpent != 170 {
		t.Fatalf("spent %d", a.TotalSpent)
	}
	// Its replay is the same receipt; the key with another amount is
	// refused.
	again := must(t)(e.svc.CaptureHold(ctxT(t), c, u, id, 170, "cap-1"))
	if !again.Replayed || !bytes.Equal(again.Body, r.Body) {
		t.Fatalf("capture replay: replayed=%v", again.Replayed)
	}
	_, err = e.svc.CaptureHold(ctxT(t), c, u, id, 10, "cap-1")
	wantCode(t, err, domain.CodeIdempotencyKeyReused)

	// Capture is final.
	before = e.eventCount(t)
	_, err = e.svc.CaptureHold(ctxT(t), c, u, id, 1, "")
	wantCode(t, err, domain.CodeHoldNotActive)
	_, err = e.svc.CaptureHold(ctxT(t), c, u, id, 1, "cap-2")
	wantCode(t, err, domain.CodeHoldNotActive)
	_, err = e.svc.ReleaseHold(ctxT(t), c, u, id, "")
	wantCode(t, err, domain.CodeHoldNotActive)
	if e.eventCount(t) != before {
		t.Fatal("captures of a captured hold recorded something")
	}

	// A release returns the original split: 30 free (after a grant) and 20 paid.
	e.grant(t, u, 30, "free")
	id2, _ := e.placeHold(t, c, u, 50, "app", 60)
	e.wantBalance(t, u, 0, 60, 50)
	must(t)(e.svc.ReleaseHold(ctxT(t), c, u, id2, ""))
	rel := e.lastEvent(t, u).(*domain.CreditHoldReleased)
	if rel.Returned != (domain.Split{Free: 30, Paid: 20}) {
		t.Fatalf("released %+v", rel.Returned)
	}
	e.wantBalance(t, u, 30, 80, 0)
	_, err = e.svc.ReleaseHold(ctxT(t), c, u, id2, "")
	wantCode(t, err, domain.CodeHoldNotActive)

	// Full capture of a hold: nothing returned.
	id3, _ := e.placeHold(t, c, u, 40, "app", 60)
	must(t)(e.svc.CaptureHold(ctxT(t), c, u, id3, 40, ""))
	if cap := e.lastEvent(t, u).(*domain.CreditHoldCaptured); cap.Captured != (domain.Split{Free: 30, Paid: 10}) || cap.Returned != (domain.Split{}) {
		t.Fatalf("full capture %+v", cap)
	}
	e.wantBalance(t, u, 0, 70, 0)

	// Validation.
	for _, in := range []domain.HoldInput{
		{Amount: 0, AppID: "app", TTLSeconds: 60},
		{Amount: 1, AppID: "app", TTLSeconds: 0},
		{Amount: 1, AppID: "app", TTLSeconds: 86401},
		{Amount: 1, AppID: "Bad App", TTLSeconds: 60},
	} {
		_, err := e.svc.PlaceHold(ctxT(t), c, u, in)
		wantCode(t, err, domain.CodeValidationFailed)
	}
	_, err = e.svc.CaptureHold(ctxT(t), c, u, uuid.New(), 1, "")
	wantCode(t, err, domain.CodeHoldNotFound)
}

// TestHoldExpiry: at now ≥ expiresAt a capture answers HOLD_EXPIRED and
// records the expiry (credits back) once; a moment before it still
// captures; ExpireDue expires the due holds and only those.
func TestHoldExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u := e.register(t)
	e.grant(t, u, 50, "paid")
	c := userCaller(u)

	// One microsecond before expiry the hold still captures.
	early, _ := e.placeHold(t, c, u, 10, "app", 30)
	e.clock.Set(dayD.Add(30*time.Second - time.Microsecond))
	must(t)(e.svc.CaptureHold(ctxT(t), c, u, early, 10, ""))
	e.wantBalance(t, u, 140, 50, 0)

	// At expiresAt: HOLD_EXPIRED, the expiry recorded, credits back to
	// their buckets.
	e.clock.Set(dayD.Add(time.Hour))
	id, _ := e.placeHold(t, c, u, 160, "app", 30) // 140 free + 20 paid
	e.wantBalance(t, u, 0, 30, 160)
	e.clock.Set(dayD.Add(time.Hour + 30*time.Second))
	_, err := e.svc.CaptureHold(ctxT(t), c, u, id, 5, "exp-1")
	wantCode(t, err, domain.CodeHoldExpired)
	if n := e.countType(t, u, "credit.hold_expired"); n != 1 {
		t.Fatalf("%d expiry events, want 1", n)
	}
	exp := e.lastEvent(t, u).(*domain.CreditHoldExpired)
	if exp.Returned != (domain.Split{Free: 140, Paid: 20}) {
		t.Fatalf("expired %+v", exp)
	}
	e.wantBalance(t, u, 140, 50, 0)
	if e.holdStatus(t, id) != "expired" {
		t.Fatal("hold not marked expired")
	}
	// Again (same key: the error stored nothing), and release: HOLD_EXPIRED, no second event.
	before := e.eventCount(t)
	_, err = e.svc.CaptureHold(ctxT(t), c, u, id, 5, "exp-1")
	wantCode(t, err, domain.CodeHoldExpired)
	_, err = e.svc.ReleaseHold(ctxT(t), c, u, id, "")
	wantCode(t, err, domain.CodeHoldExpired)
	if e.eventCount(t) != before {
		t.Fatal("a second expiry was recorded")
	}
	// A release at expiry records the expiry too.
	id2, _ := e.placeHold(t, c, u, 7, "app", 1)
	e.clock.Advance(time.Second)
	_, err = e.svc.ReleaseHold(ctxT(t), c, u, id2, "")
	wantCode(t, err, domain.CodeHoldExpired)
	if n := e.countType(t, u, "credit.hold_expired"); n != 2 {
		t.Fatalf("%d expiry events, want 2", n)
	}
	e.wantBalance(t, u, 140, 50, 0)

	// ExpireDue: holds due at 10s and 20s expire after 25s; one due at
	// 100s does not; a second run finds nothing.
	base := e.clock.Now()
	var ids []uuid.UUID
	for _, ttl := range []int{10, 20, 100} {
		id, _ := e.placeHold(t, c, u, 30, "app", ttl)
		ids = append(ids, id)
	}
	e.wantBalance(t, u, 50, 50, 90)
	e.clock.Set(base.Add(25 * time.Second))
	n, err := e.svc.ExpireDue(ctxT(t), 100)
	if err != nil || n != 2 {
		t.Fatalf("ExpireDue = %d, %v; want 2", n, err)
	}
	e.wantBalance(t, u, 110, 50, 30)
	if e.holdStatus(t, ids[0]) != "expired" || e.holdStatus(t, ids[1]) != "expired" || e.holdStatus(t, ids[2]) != "active" {
		t.Fatal("wrong holds expired")
	}
	if n, err := e.svc.ExpireDue(ctxT(t), 100); err != nil || n != 0 {
		t.Fatalf("second ExpireDue = %d, %v", n, err)
	}
	before = e.eventCount(t)
	_, err = e.svc.CaptureHold(ctxT(t), c, u, ids[0], 1, "")
	wantCode(t, err, domain.CodeHoldExpired)
	if e.eventCount(t) != before {
		t.Fatal("capture of an expired hold recorded something")
	}
	// ids[2], due at 100s, is expired by the next decision on the
	// account: the first placement below records it before it decides.
	e.clock.Set(base.Add(200 * time.Second))
	for range 3 {
		e.placeHold(t, c, u, 1, "app", 1)
	}
	if e.holdStatus(t, ids[2]) != "expired" {
		t.Fatal("a decision did not record the due expiry first")
	}
	// The limit bounds the due holds looked up; the account of each gets
	// all its due holds expired in one command.
	e.clock.Advance(time.Second)
	if n, err := e.svc.ExpireDue(ctxT(t), 1); err != nil || n != 3 {
		t.Fatalf("ExpireDue(limit 1) = %d, %v; want the account's 3", n, err)
	}
	if n, err := e.svc.ExpireDue(ctxT(t), 10); err != nil || n != 0 {
		t.Fatalf("ExpireDue = %d, %v; want nothing left", n, err)
	}
	e.wantBalance(t, u, 140, 50, 0)
	if n := e.countType(t, u, "credit.hold_expired"); n != 8 {
		t.Fatalf("%d expiry events, want 8", n)
	}
}

// TestHoldOwnership: a hold placed by app A is captured or released only
// by app A — not by app B nor by the user; another user's hold is not
// found.
func TestHoldOwnership(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u, v := e.register(t), e.register(t)
	a, b := appCaller("a"), appCaller("b")

	// app A places a hold on u (appId defaults to the key's app).
	id, r := e.placeHold(t, a, u, 10, "", 60)
	if body(t, r)["appId"] != "a" {
		t.Fatalf("app hold body %s", r.Body)
	}
	// A body appId of another app is refused.
	_, err := e.svc.PlaceHold(ctxT(t), a, u, domain.HoldInput{Amount: 1, AppID: "b", TTLSeconds: 60})
	wantCode(t, err, domain.CodeAppMismatch)

	before := e.eventCount(t)
	_, err = e.svc.CaptureHold(ctxT(t), b, u, id, 1, "")
	wantCode(t, err, domain.CodeAppMismatch)
	_, err = e.svc.ReleaseHold(ctxT(t), b, u, id, "")
	wantCode(t, err, domain.CodeAppMismatch)
	for _, f := range []func() error{
		func() error { _, err := e.svc.CaptureHold(ctxT(t), userCaller(u), u, id, 1, ""); return err },
		func() error { _, err := e.svc.ReleaseHold(ctxT(t), userCaller(u), u, id, ""); return err },
	} {
		if c := code(f()); c != domain.CodeAppMismatch && c != domain.CodeForbidden {
			t.Fatalf("the user acting on app A's hold: %q", c)
		}
	}
	// Another user's hold: not found, whoever asks.
	_, err = e.svc.CaptureHold(ctxT(t), userCaller(v), v, id, 1, "")
	wantCode(t, err, domain.CodeHoldNotFound)
	_, err = e.svc.ReleaseHold(ctxT(t), a, v, id, "")
	wantCode(t, err, domain.CodeHoldNotFound)
	if e.eventCount(t) != before || e.holdStatus(t, id) != "active" {
		t.Fatal("refused captures changed something")
	}
	e.wantBalance(t, u, 140, 0, 10)

	// App A captures its hold.
	must(t)(e.svc.CaptureHold(ctxT(t), a, u, id, 4, ""))
	e.wantBalance(t, u, 146, 0, 0)

	// A hold the user placed for app A: the user and app A may settle it,
	// app B may not touch it.
	id2, _ := e.placeHold(t, userCaller(u), u, 6, "a", 60)
	_, err = e.svc.CaptureHold(ctxT(t), b, u, id2, 6, "")
	wantCode(t, err, domain.CodeAppMismatch)
	_, err = e.svc.ReleaseHold(ctxT(t), b, u, id2, "")
	wantCode(t, err, domain.CodeAppMismatch)
	must(t)(e.svc.ReleaseHold(ctxT(t), userCaller(u), u, id2, ""))
	e.wantBalance(t, u, 146, 0, 0)
}

// TestHoldsConcurrentWithSpends: concurrent holds and spends never
// overdraw: everything placed or spent fits in the balance.
func TestHoldsConcurrentWithSpends(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	svcs := []*credits.Service{e.svc, e.secondNode(t)}
	u := e.register(t)
	res := race(t, 100, func(i int) (domain.Receipt, error) {
		s := svcs[(i/2)%2]
		if i%2 == 0 {
			return s.PlaceHold(ctxT(t), userCaller(u), u, domain.HoldInput{Amount: 3, AppID: "app", TTLSeconds: 60})
		}
		return s.Use(ctxT(t), userCaller(u), u, domain.UseInput{Amount: 3, AppID: "app"})
	})
	used := domain.Credits(0)
	for _, r := range res {
		switch code(r.err) {
		case "":
			used += 3
		case domain.CodeInsufficientCredits:
		default:
			t.Fatalf("call %d: %v", r.i, r.err)
		}
	}
	if used != signupBonus {
		t.Fatalf("%d credits held or spent, want all %d", used, signupBonus)
	}
	a := e.checkAccount(t, u)
	if a.Free != 0 || a.Held+a.TotalSpent != signupBonus {
		t.Fatalf("account %s", showAccount(a))
	}
}
