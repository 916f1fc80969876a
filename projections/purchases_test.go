package projections_test

import (
	"testing"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/projections"
)

// TestPurchasesProjection: purchase.created inserts a pending row,
// purchase.failed and purchase.completed move its status, a rejected
// payment changes nothing, user.erased deletes the user's rows; the
// security log gets the purchase events of a user; a payment for an erased
// account (to system:unclaimed) adds no balance or transaction row.
func TestPurchasesProjection(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	projs := []projections.Projection{projections.Purchases(), projections.SecurityEvents(), projections.Balances(), projections.Transactions()}
	r, _ := e.newRunner(t, "node-a", projs, nil)
	start(t, r)

	user, _ := e.register(t, "buyer@example.org", "Buyer")
	gone, _ := e.register(t, "gone@example.org", "Gone")
	pkg := uuid.New()
	p1, p2, p3 := uuid.New(), uuid.New(), uuid.New()
	created := func(id, u uuid.UUID) *domain.PurchaseCreated {
		return &domain.PurchaseCreated{PurchaseID: id, UserID: u, PackageID: pkg, Credits: 500, AmountCents: 500, Currency: "eur", Kind: "payment_intent", ProviderID: "pi_" + id.String()}
	}
	appendTo := func(streamType, id string, evs ...domain.Event) {
		t.Helper()
		if _, err := e.appendEvents(ctxT(t), streamType, id, evs...); err != nil {
			t.Fatal(err)
		}
	}
	appendTo(domain.StreamPurchase, p1.String(), created(p1, user),
		&domain.PurchasePaymentRejected{PurchaseID: p1, UserID: user, StripeEventID: "evt_1", Reason: "amount_mismatch", AmountCents: 1, Currency: "eur"},
		&domain.PurchaseFailed{PurchaseID: p1, UserID: user, StripeEventID: "evt_2", Reason: "card_declined"})
	appendTo(domain.StreamPurchase, p2.String(), created(p2, user))
	purchased := domain.NewCreditPurchased(uuid.New(), user, p1, 500, false)
	appendTo(domain.StreamCreditAccount, user.String(), &purchased)
	appendTo(domain.StreamPurchase, p1.String(), &domain.PurchaseCompleted{PurchaseID: p1, UserID: user, StripeEventID: "evt_3"})
	appendTo(domain.StreamPayments, "evt_4", &domain.PurchasePaymentRejected{StripeEventID: "evt_4", Reason: "unknown_purchase", AmountCents: 500, Currency: "eur"})
	appendTo(domain.StreamPurchase, p3.String(), created(p3, gone))
	e.erase(t, gone)
	unclaimed := domain.NewCreditPurchased(uuid.New(), gone, p3, 500, true)
	appendTo(domain.StreamCreditAccount, gone.String(), &unclaimed)
	appendTo(domain.StreamPurchase, p3.String(), &domain.PurchaseCompleted{PurchaseID: p3, UserID: gone, StripeEventID: "evt_5", Unclaimed: true})
	feed := e.feed(t, 13)
	last := feed[len(feed)-1].Cursor
	for _, p := range projs {
		e.waitApplied(t, p.Name(), last)
	}

	list, err := projections.UserPurchases(ctxT(t), e.pool, user, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("%d purchases, want 2: %+v", len(list), list)
	}
	byID := map[uuid.UUID]domain.PurchaseView{}
	for _, v := range list {
		byID[v.ID] = v
	}
	if v := byID[p1]; v.Status != "completed" || v.CompletedAt == nil || v.Credits != 500 || v.AmountCents != 500 || v.PackageID != pkg {
		t.Errorf("completed purchase %+v", v)
	}
	if v := byID[p2]; v.Status != "pending" || v.CompletedAt != nil {
		t.Errorf("pending purchase %+v", v)
	}
	if _, found, err := projections.UserPurchase(ctxT(t), e.pool, gone, p3); err != nil || found {
		t.Errorf("the erased user's purchase: found %v, %v", found, err)
	}
	if _, found, err := projections.UserPurchase(ctxT(t), e.pool, gone, p1); err != nil || found {
		t.Errorf("another user's purchase is visible: %v %v", found, err)
	}

	types := map[string]string{}
	evs, err := projections.UserSecurityEvents(ctxT(t), e.pool, user, 50)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range evs {
		types[s.Type] = s.Detail
	}
	if types["payment_rejected"] != "amount_mismatch" || types["purchase_failed"] != "card_declined" || types["purchase_completed"] != p1.String() {
		t.Errorf("security events %+v", evs)
	}
	for _, q := range []string{
		`SELECT count(*) FROM security_events WHERE user_id = $1`,
		`SELECT count(*) FROM balances WHERE user_id = $1`,
		`SELECT count(*) FROM transactions WHERE user_id = $1`,
		`SELECT count(*) FROM purchases WHERE user_id = $1`,
	} {
		if n := e.count(t, q, gone); n != 0 {
			t.Errorf("%s: %d rows of the erased user", q, n)
		}
	}
	if n := e.count(t, `SELECT count(*) FROM security_events WHERE user_id = $1`, uuid.Nil); n != 0 {
		t.Errorf("an unknown purchase's rejection added %d security rows", n)
	}
	if n := e.count(t, `SELECT count(*) FROM transactions WHERE user_id = $1 AND type = 'purchase' AND amount = 500`, user); n != 1 {
		t.Errorf("%d purchase transactions", n)
	}
}
