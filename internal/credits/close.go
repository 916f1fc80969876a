package credits

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
)

// Closed is what closing a credit account recorded.
type Closed struct {
	// FailedPurchases is how many purchases still waiting for a payment
	// got purchase.failed{reason:"account_deleted"}.
	FailedPurchases int
	// ExpiredHolds and ReleasedHolds count the holds whose credits went
	// back to the buckets: expiries that were due (credit.hold_expired)
	// and the holds still running (credit.hold_released).
	ExpiredHolds, ReleasedHolds int
	// WrittenOff is the balance written off (credit.written_off); 0 when
	// there was nothing left.
	WrittenOff domain.Credits
}

// LockAccount takes the in-process lock that serializes the commands and
// webhooks of user's account in this process and returns its release. A
// caller of CloseAccount takes it before its transaction begins, as every
// credit command does: holding a database lock while waiting for this one
// could deadlock with a command that holds this one and waits for the
// database.
func (s *Service) LockAccount(user uuid.UUID) (unlock func()) { return s.lock(user) }

// CloseAccount ends user's credit account inside tx, the transaction that
// erases the user, which must have locked the user's auth_users row FOR
// UPDATE first: no purchase can be started for the user after that (Start
// share-locks the row), so the pending ones this sees are all there are.
// In this order it
//
//   - fails every purchase still waiting for its payment:
//     purchase.failed{reason:"account_deleted"}, the purchase_orders row
//     failed (a payment that arrives anyway is granted to
//     system:unclaimed, see Purchases.Webhook; the Stripe PaymentIntent is
//     not cancelled);
//   - locks the account row (opening it from the stream if no command
//     has), records the expiry of its due holds and releases the others
//     (credit.hold_expired, credit.hold_released), so no credits stay held;
//   - writes the whole spendable balance off to system:writeoff
//     (credit.written_off), so the account ends at zero and the ledger
//     still sums to zero;
//   - deletes the account row. A later command on the account (an app's
//     spend or capture, an admin grant) then finds no row, tries to open
//     it, sees the erased user and answers NOT_FOUND; a payment's grant
//     to system:unclaimed appends without one.
//
// It may run several times on fresh transactions (version conflicts), and
// does nothing outside tx. NOT_FOUND when no such user exists.
func (s *Service) CloseAccount(ctx context.Context, tx *eventstore.Tx, user uuid.UUID) (Closed, error) {
	var c Closed
	rows, err := tx.Query(ctx, `SELECT `+orderColumns+` FROM purchase_orders
WHERE user_id = $1 AND status = 'pending' ORDER BY purchase_id FOR UPDATE`, user)
	if err != nil {
		return c, fmt.Errorf("pending purchases: %w", err)
	}
	orders, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (order, error) {
		var o order
		err := r.Scan(&o.id, &o.user, &o.pkg, &o.credits, &o.amountCents, &o.currency, &o.kind, &o.providerID, &o.paymentIntent, &o.status, &o.version)
		return o, err
	})
	if err != nil {
		return c, fmt.Errorf("pending purchases: %w", err)
	}
	for _, o := range orders {
		failed := domain.PurchaseFailed{PurchaseID: o.id, UserID: user, Reason: domain.PurchaseFailedAccountDeleted}
		if err := appendPurchase(ctx, tx, o, failed, domain.PurchaseStatusFailed); err != nil {
			return c, err
		}
	}
	c.FailedPurchases = len(orders)

	acct, head, err := lockAccount(ctx, tx, user)
	if err != nil {
		return c, err
	}
	events, err := expireDueHolds(ctx, tx, acct)
	if err != nil {
		return c, err
	}
	c.ExpiredHolds = len(events)
	rows, err = tx.Query(ctx, `SELECT hold_id, app_id, amount, free_part, paid_part, expires_at FROM credit_holds
WHERE user_id = $1 AND status = 'active' ORDER BY created_at, hold_id FOR UPDATE`, user)
	if err != nil {
		return c, fmt.Errorf("active holds: %w", err)
	}
	holds, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (domain.Hold, error) {
		h := domain.Hold{UserID: user, Status: domain.HoldActive}
		return h, r.Scan(&h.ID, &h.AppID, &h.Amount, &h.Split.Free, &h.Split.Paid, &h.ExpiresAt)
	})
	if err != nil {
		return c, fmt.Errorf("active holds: %w", err)
	}
	for _, h := range holds {
		events = append(events, h.Release())
		tx.Queue(`UPDATE credit_holds SET status = 'released' WHERE hold_id = $1`, h.ID)
	}
	c.ReleasedHolds = len(holds)

	after := acct
	for _, ev := range events {
		after.Apply(ev.(domain.CreditEvent))
	}
	if off, ok := after.WriteOff(); ok {
		events = append(events, off)
		c.WrittenOff = off.Amount
	}
	if len(events) > 0 {
		_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamCreditAccount, StreamID: user.String(),
			ExpectedVersion: acct.Version, PrevHash: head, Users: []uuid.UUID{user}, Events: events})
		if err != nil {
			return c, err
		}
	}
	tx.Queue(`DELETE FROM credit_accounts WHERE user_id = $1`, user)
	return c, nil
}
