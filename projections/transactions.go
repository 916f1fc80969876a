package projections

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// transactionsProjection builds the credit history of GET
// /credits/transactions, table transactions: one row per credit event. It
// holds the spend's description and metadata in the clear (decrypted with
// the user's data key) and deletes a user's rows on user.erased.
type transactionsProjection struct{ Handlers }

// Transaction types, as the transactions read model and the API show them.
const (
	TransactionSignupBonus  = "signup_bonus"
	TransactionDailyGrant   = "daily_grant"
	TransactionSpend        = "spend"
	TransactionRefund       = "refund"
	TransactionGrant        = "grant"
	TransactionAdjustment   = "adjustment"
	TransactionHold         = "hold"
	TransactionHoldCapture  = "hold_capture"
	TransactionHoldRelease  = "hold_release"
	TransactionHoldExpiry   = "hold_expiry"
	TransactionWriteoff     = "writeoff"
	TransactionPurchase     = "purchase"
	transactionPurchaseType = "credit.purchased"
)

// Transactions returns the projection "transactions": a row per credit
// event (every credit.* event type of the domain catalogue whose payload is
// a domain.CreditEvent) of the account's user, with created_at the
// event's OccurredAt and seq_tx, seq_pos its feed cursor, which orders the
// history newest first. The row's id is the event's transaction id where it
// has one (spend, refund, grant, adjustment, hold capture: the id the
// write response showed), else the event's id, so that the events of one
// hold (placed, released, expired) never share an id. Per event type:
//
//   - credit.signup_bonus_granted: signup_bonus, the amount.
//   - credit.daily_granted: daily_grant, the amount.
//   - credit.spent: spend, the amount, with the app id, the description and
//     the metadata.
//   - credit.refunded: refund, the amount refunded, with the app id and
//     the reason as description.
//   - credit.granted: grant, the amount, with the reason as description.
//   - credit.adjusted: adjustment, the signed amount (negative for a
//     debit), with the reason as description.
//   - credit.hold_placed: hold, the amount held, with the app and hold ids.
//   - credit.hold_captured: hold_capture, the amount captured, with the app
//     and hold ids.
//   - credit.hold_released: hold_release, the amount given back, with the
//     app and hold ids.
//   - credit.hold_expired: hold_expiry, the amount given back, with the app
//     and hold ids.
//   - credit.written_off: writeoff, the amount written off.
//   - credit.purchased for an erased account (its credits go to
//     system:unclaimed) adds no row: it moves nothing of the user's.
//   - credit.purchased and any credit event added after this projection:
//     the type named by the event type (purchase for credit.purchased), the
//     net amount the event moves into the user's accounts, in absolute
//     value.
//
// These are the transaction objects the credit write responses show for
// the same events. Only a spend has metadata; fields an event does not
// have, and empty strings, are NULL. A spend applied after the user's key was shredded (a
// lagging or rebuilt projection) decodes without description and
// metadata; the user.erased that follows it in the feed deletes the row.
func Transactions() Projection {
	h := Handlers{"user.erased": applyTransactionsErased}
	for _, t := range creditEventTypes() {
		h[t] = applyTransactionEvent
	}
	return transactionsProjection{h}
}

func (transactionsProjection) Name() string { return "transactions" }

func (transactionsProjection) Tables() []Table {
	return []Table{{Name: "transactions", Access: func(t string) string {
		return creditReadModelAccess("transactions", t)
	}}}
}

// txRow is the row one credit event adds; a zero id means the event's id,
// empty strings and nil ids are stored as NULL.
type txRow struct {
	id          uuid.UUID
	user        uuid.UUID
	typ         string
	amount      domain.Credits
	app         string
	description string
	metadata    map[string]any
	hold        uuid.UUID
}

// transactionRow describes the credit event ce of type eventType.
func transactionRow(eventType string, ce domain.CreditEvent) txRow {
	r := txRow{user: ce.Account()}
	switch e := ce.(type) {
	case *domain.CreditSignupBonusGranted:
		r.typ, r.amount = TransactionSignupBonus, e.Amount
	case *domain.CreditDailyGranted:
		r.typ, r.amount = TransactionDailyGrant, e.Amount
	case *domain.CreditSpent:
		r.id, r.typ, r.amount, r.app = e.TransactionID, TransactionSpend, e.Amount, e.AppID
		r.description, r.metadata = e.Description, e.Metadata
	case *domain.CreditRefunded:
		r.id, r.typ, r.amount, r.app, r.description = e.TransactionID, TransactionRefund, e.Amount, e.AppID, e.Reason
	case *domain.CreditGranted:
		r.id, r.typ, r.amount, r.description = e.TransactionID, TransactionGrant, e.Amount, e.Reason
	case *domain.CreditAdjusted:
		r.id, r.typ, r.amount, r.description = e.TransactionID, TransactionAdjustment, e.Amount, e.Reason
	case *domain.CreditHoldPlaced:
		r.typ, r.amount, r.app, r.hold = TransactionHold, e.Amount, e.AppID, e.HoldID
	case *domain.CreditHoldCaptured:
		r.id, r.typ, r.amount, r.app, r.hold = e.TransactionID, TransactionHoldCapture, e.Captured.Total(), e.AppID, e.HoldID
	case *domain.CreditHoldReleased:
		r.typ, r.amount, r.app, r.hold = TransactionHoldRelease, e.Returned.Total(), e.AppID, e.HoldID
	case *domain.CreditHoldExpired:
		r.typ, r.amount, r.app, r.hold = TransactionHoldExpiry, e.Returned.Total(), e.AppID, e.HoldID
	case *domain.CreditWrittenOff:
		r.typ, r.amount = TransactionWriteoff, e.Amount
	default:
		r.typ = strings.TrimPrefix(eventType, "credit.")
		if eventType == transactionPurchaseType {
			r.typ = TransactionPurchase
		}
		user := map[string]bool{
			domain.UserFreeAccount(r.user): true, domain.UserPaidAccount(r.user): true, domain.UserHeldAccount(r.user): true,
		}
		for _, p := range ce.Entries() {
			if user[p.Account] {
				r.amount += p.Amount
			}
		}
		r.amount = max(r.amount, -r.amount)
	}
	return r
}

func applyTransactionEvent(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	ce, err := creditEvent(ev)
	if err != nil {
		return err
	}
	if unclaimedPurchase(ce) {
		return nil
	}
	r := transactionRow(ev.EventType, ce)
	if r.id == uuid.Nil {
		r.id = ev.EventID
	}
	var hold *uuid.UUID
	if r.hold != uuid.Nil {
		hold = &r.hold
	}
	var metadata any
	if len(r.metadata) > 0 {
		metadata = r.metadata
	}
	// Keyed by the row's id and an upsert, so the row is a function of its
	// event whatever the table held.
	_, err = w.Exec(ctx, `INSERT INTO `+w.Table("transactions")+` AS t
    (id, user_id, type, amount, app_id, description, metadata, hold_id, created_at, seq_tx, seq_pos)
VALUES ($1, $2, $3, $4, nullif($5, ''), nullif($6, ''), $7, $8, $9, $10::xid8, $11)
ON CONFLICT (id) DO UPDATE SET
    user_id = excluded.user_id, type = excluded.type, amount = excluded.amount, app_id = excluded.app_id,
    description = excluded.description, metadata = excluded.metadata, hold_id = excluded.hold_id,
    created_at = excluded.created_at, seq_tx = excluded.seq_tx, seq_pos = excluded.seq_pos`,
		r.id, r.user, r.typ, r.amount, r.app, r.description, metadata, hold, ev.OccurredAt, ev.TxID, ev.Position)
	if err != nil {
		// PostgreSQL's error messages never carry the row's values, so
		// this stays free of personal data.
		return fmt.Errorf("insert transaction: %w", err)
	}
	return nil
}

func applyTransactionsErased(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.UserErased)
	if !ok {
		return fmt.Errorf("user.erased: unexpected payload %T", ev.Event)
	}
	if _, err := w.Exec(ctx, `DELETE FROM `+w.Table("transactions")+` WHERE user_id = $1`, e.UserID); err != nil {
		return fmt.Errorf("delete transactions: %w", err)
	}
	return nil
}

// UserTransactions returns user's credit transactions newest first (feed
// order descending: seq_tx, then seq_pos), skipping offset and returning
// at most limit. It reads as mana_app in user's scope, so row-level
// security limits it to user's rows. It does not wait for the projection:
// callers wait for read-your-writes first. A limit below 1 or a negative
// offset is an error; no transactions is an empty list, not nil.
func UserTransactions(ctx context.Context, pool *pgxpool.Pool, user uuid.UUID, limit, offset int) ([]domain.Transaction, error) {
	if limit < 1 || offset < 0 {
		return nil, errors.New("list transactions: limit must be positive and offset not negative")
	}
	out := []domain.Transaction{}
	err := pg.InTx(ctx, pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user}, func(tx pgx.Tx) error {
		// transactions_user_idx (user_id, seq_tx DESC, seq_pos DESC)
		// serves this order.
		rows, err := tx.Query(ctx, `SELECT id, type, amount, app_id, description, metadata, hold_id, created_at
FROM transactions
WHERE user_id = $1
ORDER BY seq_tx DESC, seq_pos DESC
LIMIT $2 OFFSET $3`, user, limit, offset)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (domain.Transaction, error) {
			var t domain.Transaction
			err := r.Scan(&t.ID, &t.Type, &t.Amount, &t.AppID, &t.Description, &t.Metadata, &t.HoldID, &t.CreatedAt)
			t.CreatedAt = t.CreatedAt.UTC()
			return t, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list transactions: %w", err)
	}
	return out, nil
}
