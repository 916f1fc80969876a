package projections

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// purchasesProjection builds the purchase history of GET
// /credits/purchases and GET /credits/purchase/:id, table purchases. The
// webhook never reads it: it decides on purchase_orders.
type purchasesProjection struct{ Handlers }

// Purchases returns the projection "purchases": a pending row per
// purchase.created (an upsert keyed by the purchase id, created_at the
// event's OccurredAt), set to completed with completed_at the event's
// OccurredAt by purchase.completed, set to failed by purchase.failed (a
// later purchase.completed still completes it: a failed attempt can be
// retried on the same PaymentIntent), and every row of a user deleted by
// user.erased. purchase.payment_rejected changes nothing here: it is a
// security event.
func Purchases() Projection {
	return purchasesProjection{Handlers{
		"purchase.created":   applyPurchaseCreated,
		"purchase.completed": applyPurchaseCompleted,
		"purchase.failed":    applyPurchaseFailed,
		"user.erased":        applyPurchasesErased,
	}}
}

func (purchasesProjection) Name() string { return "purchases" }

func (purchasesProjection) Tables() []Table {
	return []Table{{Name: "purchases", Access: func(t string) string {
		return `GRANT SELECT ON ` + t + ` TO mana_app, mana_auditor;
GRANT SELECT, INSERT, UPDATE, DELETE ON ` + t + ` TO mana_projector;
ALTER TABLE ` + t + ` ENABLE ROW LEVEL SECURITY;
ALTER TABLE ` + t + ` FORCE ROW LEVEL SECURITY;
CREATE POLICY purchases_read ON ` + t + ` FOR SELECT TO mana_app, mana_auditor USING (mana_can_see(user_id));
CREATE POLICY purchases_project ON ` + t + ` FOR ALL TO mana_projector USING (true) WITH CHECK (true);`
	}}}
}

func applyPurchaseCreated(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.PurchaseCreated)
	if !ok {
		return fmt.Errorf("purchase.created: unexpected payload %T", ev.Event)
	}
	// An upsert, so the row is a function of the purchase's events
	// whatever the table held.
	_, err := w.Exec(ctx, `INSERT INTO `+w.Table("purchases")+` AS p
    (id, user_id, package_id, credits, amount_cents, currency, status, created_at, completed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)
ON CONFLICT (id) DO UPDATE SET
    user_id = excluded.user_id, package_id = excluded.package_id, credits = excluded.credits,
    amount_cents = excluded.amount_cents, currency = excluded.currency, status = excluded.status,
    created_at = excluded.created_at, completed_at = NULL`,
		e.PurchaseID, e.UserID, e.PackageID, e.Credits, e.AmountCents, e.Currency, domain.PurchaseStatusPending, ev.OccurredAt)
	if err != nil {
		return fmt.Errorf("insert purchase: %w", err)
	}
	return nil
}

func applyPurchaseCompleted(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.PurchaseCompleted)
	if !ok {
		return fmt.Errorf("purchase.completed: unexpected payload %T", ev.Event)
	}
	// No row (the user was erased in between) is not an error.
	_, err := w.Exec(ctx, `UPDATE `+w.Table("purchases")+` SET status = $2, completed_at = $3 WHERE id = $1`,
		e.PurchaseID, domain.PurchaseStatusCompleted, ev.OccurredAt)
	if err != nil {
		return fmt.Errorf("complete purchase: %w", err)
	}
	return nil
}

func applyPurchaseFailed(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.PurchaseFailed)
	if !ok {
		return fmt.Errorf("purchase.failed: unexpected payload %T", ev.Event)
	}
	_, err := w.Exec(ctx, `UPDATE `+w.Table("purchases")+` SET status = $2, completed_at = NULL WHERE id = $1`,
		e.PurchaseID, domain.PurchaseStatusFailed)
	if err != nil {
		return fmt.Errorf("fail purchase: %w", err)
	}
	return nil
}

func applyPurchasesErased(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.UserErased)
	if !ok {
		return fmt.Errorf("user.erased: unexpected payload %T", ev.Event)
	}
	if _, err := w.Exec(ctx, `DELETE FROM `+w.Table("purchases")+` WHERE user_id = $1`, e.UserID); err != nil {
		return fmt.Errorf("delete purchases: %w", err)
	}
	return nil
}

const purchaseColumns = `id, package_id, credits, amount_cents, currency, status, created_at, completed_at`

func scanPurchase(r pgx.Row) (domain.PurchaseView, error) {
	var p domain.PurchaseView
	err := r.Scan(&p.ID, &p.PackageID, &p.Credits, &p.AmountCents, &p.Currency, &p.Status, &p.CreatedAt, &p.CompletedAt)
	p.CreatedAt = p.CreatedAt.UTC()
	if p.CompletedAt != nil {
		t := p.CompletedAt.UTC()
		p.CompletedAt = &t
	}
	return p, err
}

// UserPurchases returns user's purchases newest first (created_at, then
// id, descending), skipping offset and returning at most limit. It reads as
// mana_app in user's scope, so row-level security limits it to user's
// rows. It does not wait for the projection: callers wait for
// read-your-writes first. A limit below 1 or a negative offset is an
// error; no purchases is an empty list, not nil.
func UserPurchases(ctx context.Context, pool *pgxpool.Pool, user uuid.UUID, limit, offset int) ([]domain.PurchaseView, error) {
	if limit < 1 || offset < 0 {
		return nil, errors.New("list purchases: limit must be positive and offset not negative")
	}
	out := []domain.PurchaseView{}
	err := pg.InTx(ctx, pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user}, func(tx pgx.Tx) error {
		// purchases_user_idx (user_id, created_at DESC) serves this.
		rows, err := tx.Query(ctx, `SELECT `+purchaseColumns+` FROM purchases
WHERE user_id = $1
ORDER BY created_at DESC, id DESC
LIMIT $2 OFFSET $3`, user, limit, offset)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (domain.PurchaseView, error) { return scanPurchase(r) })
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list purchases: %w", err)
	}
	return out, nil
}

// UserPurchase returns user's purchase id, and false when user has no such
// purchase (another user's is invisible under row-level security). Like
// UserPurchases it does not wait for the projection.
func UserPurchase(ctx context.Context, pool *pgxpool.Pool, user, id uuid.UUID) (domain.PurchaseView, bool, error) {
	var p domain.PurchaseView
	found := false
	err := pg.InTx(ctx, pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user}, func(tx pgx.Tx) error {
		var err error
		p, err = scanPurchase(tx.QueryRow(ctx, `SELECT `+purchaseColumns+` FROM purchases WHERE id = $1 AND user_id = $2`, id, user))
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		found = err == nil
		return err
	})
	if err != nil {
		return p, false, fmt.Errorf("read purchase: %w", err)
	}
	return p, found, nil
}

// unclaimedPurchase reports whether ce is a payment for an erased account:
// credit.purchased whose credits went to system:unclaimed. It moves nothing
// of the user's, so the per-user read models (balances, transactions) skip
// it rather than bring back rows the user's erasure deleted.
func unclaimedPurchase(ce domain.CreditEvent) bool {
	p, ok := ce.(*domain.CreditPurchased)
	if !ok {
		return false
	}
	for _, ps := range p.Postings {
		if ps.Account == domain.AccountUnclaimed {
			return true
		}
	}
	return false
}
