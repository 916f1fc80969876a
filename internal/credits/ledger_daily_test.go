package credits_test

import (
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
)

// dailyGrants returns the days of u's credit.daily_granted events, in
// order, checking each is followed in the same transaction by the debit it
// came before.
func (e *env) dailyGrants(t *testing.T, u uuid.UUID) []string {
	t.Helper()
	evs := e.stream(t, u)
	var days []string
	for i, ev := range evs {
		g, ok := ev.Event.(*domain.CreditDailyGranted)
		if !ok {
			continue
		}
		if g.Amount != dailyFree || g.Day != domain.Day(ev.OccurredAt) {
			t.Fatalf("grant %+v at %s", g, ev.OccurredAt)
		}
		if i+1 == len(evs) || evs[i+1].TxID != ev.TxID {
			t.Fatalf("the grant of %s is not followed by a debit in its transaction", g.Day)
		}
		switch evs[i+1].Event.(type) {
		case *domain.CreditSpent, *domain.CreditHoldPlaced:
		case *domain.CreditAdjusted:
			if evs[i+1].Event.(*domain.CreditAdjusted).Amount >= 0 {
				t.Fatalf("the grant of %s came before a positive adjustment", g.Day)
			}
		default:
			t.Fatalf("the grant of %s came before %s", g.Day, evs[i+1].EventType)
		}
		days = append(days, g.Day)
	}
	return days
}

// TestDailyGrant: the first debit of a UTC day on an account created
// before that day is preceded by one credit.daily_granted, in the same
// transaction; not on the creation day, not twice a day (20 concurrent
// spends), not on a failed debit, not on reads, credits or captures; hold
// placement and negative adjustments trigger it.
func TestDailyGrant(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	day := func(n int) time.Time { return dayD.AddDate(0, 0, n) }
	u := e.register(t) // on day D at 12:00

	// Day D: the account was created today — no grant.
	e.clock.Set(day(0).Add(11 * time.Hour)) // 23:00
	must(t)(e.use(t, e.svc, u, 1, ""))
	if g := e.dailyGrants(t, u); len(g) != 0 {
		t.Fatalf("grants on the creation day: %v", g)
	}

	// Day D+1, 00:00:00: 20 concurrent spends, exactly one grant.
	e.clock.Set(time.Date(2026, 3, 11, 0, 0, 0, 0, time.UTC))
	res := race(t, 20, func(i int) (domain.Receipt, error) {
		return e.svc.Use(ctxT(t), userCaller(u), u, domain.UseInput{Amount: 1, AppID: "app"})
	})
	for _, r := range res {
		if r.err != nil {
			t.Fatalf("spend %d: %v", r.i, r.err)
		}
	}
	if g := e.dailyGrants(t, u); !slices.Equal(g, []string{"2026-03-11"}) {
		t.Fatalf("grants %v, want one for 2026-03-11", g)
	}
	a := e.wantBalance(t, u, signupBonus-1+dailyFree-20, 0, 0)
	if a.LastDailyGrant != "2026-03-11" || a.TotalEarned != signupBonus+dailyFree {
		t.Fatalf("account %s", showAccount(a))
	}

	// Day D+2: reads never write; a failing debit records nothing, grant
	// included; neither do credits, refunds, releases or captures.
	e.clock.Set(day(2))
	before := e.eventCount(t)
	for range 3 {
		if _, err := e.svc.Balance(ctxT(t), u, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.svc.BalanceAt(ctxT(t), u, e.clock.Now().Format(time.RFC3339Nano)); err != nil {
		t.Fatal(err)
	}
	_, err := e.use(t, e.svc, u, 10_000, "")
	wantCode(t, err, domain.CodeInsufficientCredits)
	_, err = e.svc.PlaceHold(ctxT(t), userCaller(u), u, domain.HoldInput{Amount: 10_000, AppID: "app", TTLSeconds: 60})
	wantCode(t, err, domain.CodeInsufficientCredits)
	_, err = e.svc.Adjust(ctxT(t), adminCaller(), domain.AdminCreditInput{UserID: u, Amount: -10_000, Reason: "too much"})
	wantCode(t, err, domain.CodeInsufficientCredits)
	if n := e.eventCount(t); n != before {
		t.Fatalf("reads and failed debits appended %d events", n-before)
	}
	if g := e.dailyGrants(t, u); len(g) != 1 {
		t.Fatalf("grants %v after failed debits", g)
	}
	e.grant(t, u, 5, "paid")
	must(t)(e.svc.Adjust(ctxT(t), adminCaller(), domain.AdminCreditInput{UserID: u, Amount: 3, Reason: "plus"}))
	if g := e.dailyGrants(t, u); len(g) != 1 {
		t.Fatalf("grants %v after credits", g)
	}

	// Still D+2: a hold placement is a debit and triggers it.
	hold := must(t)(e.svc.PlaceHold(ctxT(t), userCaller(u), u, domain.HoldInput{Amount: 2, AppID: "app", TTLSeconds: 86400}))
	if g := e.dailyGrants(t, u); !slices.Equal(g, []string{"2026-03-11", "2026-03-12"}) {
		t.Fatalf("grants %v, want one for 2026-03-12 with the hold", g)
	}

	// D+3: capture and release are not debits.
	e.clock.Set(day(3).Add(-time.Hour))
	must(t)(e.svc.CaptureHold(ctxT(t), userCaller(u), u, idOf(t, hold, "id"), 1, ""))
	e.clock.Set(day(3))
	h2 := must(t)(e.svc.PlaceHold(ctxT(t), userCaller(u), u, domain.HoldInput{Amount: 2, AppID: "app", TTLSeconds: 86400}))
	if g := e.dailyGrants(t, u); len(g) != 3 {
		t.Fatalf("grants %v", g)
	}
	e.clock.Set(day(4).Add(-time.Hour))
	must(t)(e.svc.ReleaseHold(ctxT(t), userCaller(u), u, idOf(t, h2, "id"), ""))
	if g := e.dailyGrants(t, u); len(g) != 3 {
		t.Fatalf("grants %v after a release", g)
	}
	// D+4: a negative adjustment triggers it.
	must(t)(e.svc.Adjust(ctxT(t), adminCaller(), domain.AdminCreditInput{UserID: u, Amount: -1, Reason: "minus"}))
	if g := e.dailyGrants(t, u); !slices.Equal(g[3:], []string{"2026-03-14"}) {
		t.Fatalf("grants %v, want one for 2026-03-14 with the adjustment", g)
	}

	// No back-fill: skipping to D+10 grants once, not for the days missed.
	e.clock.Set(day(10))
	before = e.eventCount(t)
	must(t)(e.use(t, e.svc, u, 1, ""))
	if n := e.eventCount(t); n != before+2 {
		t.Fatalf("a spend after six idle days appended %d events, want 2", n-before)
	}
	e.checkAccount(t, u)
}

// TestDailyGrantSpendOnlyAffordableWithIt: a spend the grant makes
// affordable succeeds with it; one it does not makes neither.
func TestDailyGrantSpendOnlyAffordableWithIt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u := e.register(t)
	must(t)(e.use(t, e.svc, u, signupBonus, ""))
	e.clock.Set(dayD.AddDate(0, 0, 1))
	_, err := e.use(t, e.svc, u, dailyFree+1, "")
	wantCode(t, err, domain.CodeInsufficientCredits)
	if g := e.dailyGrants(t, u); len(g) != 0 {
		t.Fatalf("grants %v after a failed spend", g)
	}
	r := must(t)(e.use(t, e.svc, u, dailyFree, ""))
	if b := newBalance(t, r); b.Balance != 0 || b.TotalEarned != signupBonus+dailyFree {
		t.Fatalf("newBalance %+v", b)
	}
	e.wantBalance(t, u, 0, 0, 0)
	// The spend's receipt position is its last event's cursor.
	if _, err := eventstore.ParseCursor(r.Position); err != nil || r.Position == "" {
		t.Fatalf("position %q: %v", r.Position, err)
	}
}
