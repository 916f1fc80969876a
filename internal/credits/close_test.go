package credits_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/credits"
	"github.com/manacore/mana/internal/pg"
)

// erase closes u's credit account and marks the user erased in one
// transaction, as account deletion does (identity.Service.DeleteAccount).
func (s *shop) erase(t *testing.T, u uuid.UUID) credits.Closed {
	t.Helper()
	unlock := s.svc.LockAccount(u)
	defer unlock()
	var closed credits.Closed
	_, err := s.store.Execute(ctxT(t), eventstore.Command{Name: "test.erase", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}},
		func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			if _, err := tx.Exec(ctx, `SELECT 1 FROM auth_users WHERE user_id = $1 FOR UPDATE`, u); err != nil {
				return domain.Receipt{}, err
			}
			var err error
			if closed, err = s.svc.CloseAccount(ctx, tx, u); err != nil {
				return domain.Receipt{}, err
			}
			_, err = tx.Exec(ctx, `UPDATE auth_users SET erased = true, email_hmac = NULL WHERE user_id = $1`, u)
			return domain.Receipt{Status: 204}, err
		})
	if err != nil {
		t.Fatalf("erase: %v", err)
	}
	return closed
}

// TestCloseAccount: given an account with free and paid credits, a running
// hold, a hold past its time and two pending purchases, when it is closed,
// then the purchases fail, the holds return, the balance is written off,
// the account row is gone and every later command finds no account; a
// late payment of a failed purchase goes to system:unclaimed and a
// refused one names no user. The ledger balances throughout (checked
// after the test).
func TestCloseAccount(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	ctx := ctxT(t)
	u := s.register(t)
	s.grant(t, u, 40, "paid")
	hold, _ := s.placeHold(t, userCaller(u), u, 30, "chat", 3600)
	s.placeHold(t, userCaller(u), u, 20, "chat", 60)
	first, o1 := s.buy(t, u, false)
	second, o2 := s.buy(t, u, false)
	s.clock.Advance(2 * time.Minute) // the short hold is due, unrecorded
	before := s.mustAccount(t, u)

	closed := s.erase(t, u)
	if closed.FailedPurchases != 2 || closed.ExpiredHolds != 1 || closed.ReleasedHolds != 1 || closed.WrittenOff != before.Free+before.Paid+before.Held {
		t.Errorf("closed %+v, want 2 purchases, 1 expiry, 1 release, %d written off", closed, before.Free+before.Paid+before.Held)
	}
	if _, found := s.account(t, u); found {
		t.Error("the account row survived")
	}
	if a := s.fold(t, u); a.Free != 0 || a.Paid != 0 || a.Held != 0 || a.TotalEarned != a.TotalSpent {
		t.Errorf("the account folds to %s, want zero", showAccount(a))
	}
	if st := s.holdStatus(t, hold); st != domain.HoldReleased {
		t.Errorf("the running hold is %s", st)
	}
	for _, id := range []uuid.UUID{first.PurchaseID, second.PurchaseID} {
		if o := s.order(t, id); o.status != domain.PurchaseStatusFailed {
			t.Errorf("purchase %s is %s", id, o.status)
		}
		evs := s.streamEvents(t, domain.StreamPurchase, id.String())
		if f, ok := evs[len(evs)-1].Event.(*domain.PurchaseFailed); !ok || f.Reason != domain.PurchaseFailedAccountDeleted || f.UserID != u {
			t.Errorf("purchase %s ends with %+v", id, evs[len(evs)-1].Event)
		}
	}

	// Later commands find no account.
	if _, err := s.svc.Use(ctx, userCaller(u), u, domain.UseInput{Amount: 1, AppID: "chat"}); code(err) != domain.CodeNotFound {
		t.Errorf("use: %v, want NOT_FOUND", err)
	}
	if _, err := s.svc.CaptureHold(ctx, appCaller("chat"), u, hold, 1, ""); code(err) != domain.CodeNotFound {
		t.Errorf("capture: %v, want NOT_FOUND", err)
	}
	if _, err := s.svc.Grant(ctx, adminCaller(), domain.AdminCreditInput{UserID: u, Amount: 5, Reason: "late"}); code(err) != domain.CodeNotFound {
		t.Errorf("grant: %v, want NOT_FOUND", err)
	}
	if _, _, err := s.p.Start(ctx, u, s.pkg.PackageID, false, domain.RequestMeta{}); code(err) != domain.CodeNotFound {
		t.Errorf("a purchase started for the erased user: %v, want NOT_FOUND", err)
	}

	// A late payment of a failed purchase goes to system:unclaimed.
	s.deliver(t, stripeEvent(randomID("evt_"), "payment_intent.succeeded", intentObject(o1.provider, 500, "eur", first.PurchaseID, u)))
	evs := s.stream(t, u)
	if cp, ok := evs[len(evs)-1].Event.(*domain.CreditPurchased); !ok || cp.Postings[0].Account != domain.AccountUnclaimed {
		t.Errorf("the late payment: %+v", evs[len(evs)-1].Event)
	}
	if _, found := s.account(t, u); found {
		t.Error("the late payment brought the account row back")
	}
	// A refused payment of an erased account names no user.
	s.deliver(t, stripeEvent(randomID("evt_"), "payment_intent.succeeded", intentObject(o2.provider, 50, "eur", second.PurchaseID, u)))
	pevs := s.streamEvents(t, domain.StreamPurchase, second.PurchaseID.String())
	if rej, ok := pevs[len(pevs)-1].Event.(*domain.PurchasePaymentRejected); !ok || rej.UserID != uuid.Nil || rej.PurchaseID != second.PurchaseID {
		t.Errorf("the refused payment: %+v", pevs[len(pevs)-1].Event)
	}
}

// TestCloseUnopenedAccount: an account no command has opened (just the
// signup bonus) is opened from its stream, written off and removed.
func TestCloseUnopenedAccount(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	u := s.register(t)
	if _, found := s.account(t, u); found {
		t.Fatal("registration opened the account row")
	}
	closed := s.erase(t, u)
	if closed.WrittenOff != signupBonus || closed.FailedPurchases != 0 || closed.ReleasedHolds != 0 {
		t.Errorf("closed %+v, want the signup bonus written off", closed)
	}
	if _, found := s.account(t, u); found {
		t.Error("the account row survived")
	}
	if a := s.fold(t, u); a.Free != 0 || a.TotalSpent != signupBonus {
		t.Errorf("the account folds to %s", showAccount(a))
	}
}
