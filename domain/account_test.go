package domain_test

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
)

func newAccount(free, paid domain.Credits) domain.Account {
	return domain.Account{UserID: uuid.New(), Free: free, Paid: paid, TotalEarned: free + paid, CreatedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

// checkInvariant asserts balance + held = earned − spent.
func checkInvariant(t *testing.T, a domain.Account) {
	t.Helper()
	b := a.Balance(5)
	if b.Balance+b.HeldCredits != b.TotalEarned-b.TotalSpent || a.Free < 0 || a.Paid < 0 || a.Held < 0 {
		t.Fatalf("invariant broken: %+v", a)
	}
}

func apply(t *testing.T, a *domain.Account, ev domain.CreditEvent) {
	t.Helper()
	if s := domain.SumPostings(ev.Entries()); s != 0 {
		t.Fatalf("%s postings sum to %d", ev.EventType(), s)
	}
	a.Apply(ev)
	checkInvariant(t, *a)
}

func TestSpendTakesFreeFirstAndNeverOverdraws(t *testing.T) {
	t.Parallel()
	a := newAccount(5, 10)
	ev, err := a.Spend(uuid.New(), "chat", 7, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Split != (domain.Split{Free: 5, Paid: 2}) {
		t.Fatalf("split %+v", ev.Split)
	}
	apply(t, &a, ev)
	if a.Free != 0 || a.Paid != 8 || a.TotalSpent != 7 {
		t.Fatalf("after spend %+v", a)
	}
	if _, err := a.Spend(uuid.New(), "chat", 9, "", nil); domain.ErrorCode(err) != domain.CodeInsufficientCredits {
		t.Fatalf("overdraw: %v", err)
	}
	if _, err := a.Spend(uuid.New(), "chat", 0, "", nil); err == nil {
		t.Fatal("zero spend accepted")
	}
}

func TestDailyGrantOncePerDayOnlyForOlderAccounts(t *testing.T) {
	t.Parallel()
	a := newAccount(0, 0)
	day := time.Date(2026, 3, 4, 23, 59, 0, 0, time.UTC)
	g, ok := a.DailyGrant(day, 5)
	if !ok || g.Amount != 5 || g.Day != "2026-03-04" {
		t.Fatalf("grant %+v %v", g, ok)
	}
	apply(t, &a, g)
	if _, ok := a.DailyGrant(day.Add(30*time.Second), 5); ok {
		t.Fatal("granted twice on one day")
	}
	if _, ok := a.DailyGrant(day.Add(2*time.Minute), 5); !ok {
		t.Fatal("no grant on the next UTC day")
	}
	fresh := newAccount(0, 0)
	fresh.CreatedAt = day
	if _, ok := fresh.DailyGrant(day, 5); ok {
		t.Fatal("granted on the account's first day")
	}
	if _, ok := a.DailyGrant(day.Add(48*time.Hour), 0); ok {
		t.Fatal("granted with a zero daily amount")
	}
}

func TestHoldCaptureReleaseAndExpiry(t *testing.T) {
	t.Parallel()
	a := newAccount(8, 10)
	placed, err := a.PlaceHold(uuid.New(), "chat", 10, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	apply(t, &a, placed)
	if a.Free != 0 || a.Paid != 8 || a.Held != 10 {
		t.Fatalf("after hold %+v", a)
	}
	if _, err := a.Spend(uuid.New(), "chat", 9, "", nil); domain.ErrorCode(err) != domain.CodeInsufficientCredits {
		t.Fatal("held credits were spendable")
	}
	h := domain.Hold{ID: placed.HoldID, UserID: a.UserID, AppID: "chat", Amount: 10, Split: placed.Split, Status: domain.HoldActive, ExpiresAt: placed.ExpiresAt}
	if _, err := h.Capture(uuid.New(), 11); domain.ErrorCode(err) != domain.CodeCaptureExceedsHold {
		t.Fatalf("over-capture: %v", err)
	}
	capt, err := h.Capture(uuid.New(), 9)
	if err != nil {
		t.Fatal(err)
	}
	// Held-free (8) is consumed first; the rest (1 paid) returns to paid.
	if capt.Captured != (domain.Split{Free: 8, Paid: 1}) || capt.Returned != (domain.Split{Paid: 1}) {
		t.Fatalf("capture %+v", capt)
	}
	apply(t, &a, capt)
	if a.Held != 0 || a.Paid != 9 || a.TotalSpent != 9 {
		t.Fatalf("after capture %+v", a)
	}

	b := newAccount(3, 3)
	p2, _ := b.PlaceHold(uuid.New(), "chat", 4, time.Now())
	apply(t, &b, p2)
	h2 := domain.Hold{ID: p2.HoldID, UserID: b.UserID, AppID: "chat", Amount: 4, Split: p2.Split, Status: domain.HoldActive, ExpiresAt: p2.ExpiresAt}
	if !h2.ExpiredAt(p2.ExpiresAt) || h2.ExpiredAt(p2.ExpiresAt.Add(-time.Nanosecond)) {
		t.Fatal("expiry is not now ≥ expiresAt")
	}
	apply(t, &b, h2.Expire())
	if b.Free != 3 || b.Paid != 3 || b.Held != 0 || b.TotalSpent != 0 {
		t.Fatalf("after expiry %+v", b)
	}
	p3, _ := b.PlaceHold(uuid.New(), "chat", 6, time.Now().Add(time.Hour))
	apply(t, &b, p3)
	h3 := domain.Hold{ID: p3.HoldID, UserID: b.UserID, AppID: "chat", Amount: 6, Split: p3.Split, Status: domain.HoldActive}
	apply(t, &b, h3.Release())
	if b.Free != 3 || b.Paid != 3 {
		t.Fatalf("after release %+v", b)
	}
}

func TestAdjustGrantAndWriteOff(t *testing.T) {
	t.Parallel()
	a := newAccount(2, 5)
	adj, err := a.Adjust(uuid.New(), -4, "fix")
	if err != nil || adj.Split != (domain.Split{Free: -2, Paid: -2}) {
		t.Fatalf("adjust %+v %v", adj, err)
	}
	apply(t, &a, adj)
	if _, err := a.Adjust(uuid.New(), -4, "fix"); domain.ErrorCode(err) != domain.CodeInsufficientCredits {
		t.Fatal("negative adjustment overdrew")
	}
	g, err := a.Grant(uuid.New(), 10, "paid", "support")
	if err != nil {
		t.Fatal(err)
	}
	apply(t, &a, g)
	pos, _ := a.Adjust(uuid.New(), 3, "bonus")
	apply(t, &a, pos)
	w, ok := a.WriteOff()
	if !ok || w.Amount != 16 {
		t.Fatalf("write-off %+v", w)
	}
	apply(t, &a, w)
	if a.Free+a.Paid != 0 {
		t.Fatalf("after write-off %+v", a)
	}
	if _, ok := a.WriteOff(); ok {
		t.Fatal("wrote off an empty account")
	}
}
