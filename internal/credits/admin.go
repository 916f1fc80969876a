package credits

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

func requireReason(in domain.AdminCreditInput) error {
	if strings.TrimSpace(in.Reason) == "" || len(in.Reason) > 500 {
		return invalid("reason", "is required (at most 500 characters)")
	}
	if in.UserID == uuid.Nil {
		return invalid("userId", "is required")
	}
	return nil
}

func adminBody(s *Service, t domain.Transaction) func(domain.Account) any {
	return func(after domain.Account) any {
		return map[string]any{"success": true, "transaction": t, "newBalance": after.Balance(s.cfg.DailyFree)}
	}
}

// Grant implements domain.CreditsService: credits from system:grants to the
// free (default) or paid bucket, with a reason.
func (s *Service) Grant(ctx context.Context, c domain.Caller, in domain.AdminCreditInput) (domain.Receipt, error) {
	if err := requireReason(in); err != nil {
		return domain.Receipt{}, err
	}
	return s.execute(ctx, command{op: "admin.grant", caller: c, user: in.UserID, key: in.IdempotencyKey, request: in},
		func(ctx context.Context, tx *eventstore.Tx, acct *domain.Account) (step, error) {
			txID, _ := uuid.NewV7()
			ev, err := acct.Grant(txID, in.Amount, in.Bucket, in.Reason)
			if err != nil {
				return step{}, err
			}
			t := domain.Transaction{ID: txID, Type: "grant", Amount: ev.Amount, Description: strPtr(in.Reason), CreatedAt: tx.Now()}
			return step{events: []domain.Event{ev}, status: http.StatusCreated, body: adminBody(s, t)}, nil
		})
}

// Adjust implements domain.CreditsService: a signed correction; a negative
// one is a debit (the day's grant first, free then paid, never overdrawn).
func (s *Service) Adjust(ctx context.Context, c domain.Caller, in domain.AdminCreditInput) (domain.Receipt, error) {
	if err := requireReason(in); err != nil {
		return domain.Receipt{}, err
	}
	return s.execute(ctx, command{op: "admin.adjust", caller: c, user: in.UserID, key: in.IdempotencyKey, request: in},
		func(ctx context.Context, tx *eventstore.Tx, acct *domain.Account) (step, error) {
			a, evs := *acct, []domain.Event(nil)
			if in.Amount < 0 {
				a, evs = s.withDaily(a, tx.Now())
			}
			txID, _ := uuid.NewV7()
			ev, err := a.Adjust(txID, in.Amount, in.Reason)
			if err != nil {
				return step{}, err
			}
			t := domain.Transaction{ID: txID, Type: "adjustment", Amount: ev.Amount, Description: strPtr(in.Reason), CreatedAt: tx.Now()}
			return step{events: append(evs, ev), status: http.StatusCreated, body: adminBody(s, t)}, nil
		})
}

// Refund implements domain.CreditsService: gives back up to what remains of
// a spend or capture, paid credits first (they were bought), then free.
func (s *Service) Refund(ctx context.Context, c domain.Caller, in domain.AdminCreditInput) (domain.Receipt, error) {
	if err := requireReason(in); err != nil {
		return domain.Receipt{}, err
	}
	if in.TransactionID == uuid.Nil {
		return domain.Receipt{}, invalid("transactionId", "is required")
	}
	if in.Amount <= 0 {
		return domain.Receipt{}, invalid("amount", "must be a positive integer")
	}
	return s.execute(ctx, command{op: "admin.refund", caller: c, user: in.UserID, key: in.IdempotencyKey, request: in},
		func(ctx context.Context, tx *eventstore.Tx, acct *domain.Account) (step, error) {
			var app string
			var amount, free, paid, refunded domain.Credits
			err := tx.QueryRow(ctx, `SELECT app_id, amount, free_part, paid_part, refunded FROM credit_charges
WHERE transaction_id = $1 AND user_id = $2 FOR UPDATE`, in.TransactionID, in.UserID).Scan(&app, &amount, &free, &paid, &refunded)
			if errors.Is(err, pgx.ErrNoRows) {
				return step{}, domain.Errorf(domain.CodeNotFound, "Transaction not found.")
			}
			if err != nil {
				return step{}, err
			}
			if c.Kind == "app" && app != c.AppID {
				return step{}, domain.Errorf(domain.CodeAppMismatch, "This transaction belongs to another app.")
			}
			if in.Amount > amount-refunded {
				return step{}, invalid("amount", "exceeds what remains refundable of the transaction")
			}
			// What is still refundable per bucket: paid goes back first.
			paidLeft := max(paid-refunded, 0)
			split := domain.Split{Paid: min(paidLeft, in.Amount)}
			split.Free = in.Amount - split.Paid
			txID, _ := uuid.NewV7()
			u := in.UserID
			var ps []domain.Posting
			if split.Free > 0 {
				ps = append(ps, domain.Posting{Account: domain.UserFreeAccount(u), Amount: split.Free})
			}
			if split.Paid > 0 {
				ps = append(ps, domain.Posting{Account: domain.UserPaidAccount(u), Amount: split.Paid})
			}
			ps = append(ps, domain.Posting{Account: domain.AppRevenueAccount(app), Amount: -in.Amount})
			ev := domain.CreditRefunded{TransactionID: txID, UserID: u, RefundOf: in.TransactionID, AppID: app, Amount: in.Amount,
				Split: split, Reason: in.Reason, Postings: ps}
			t := domain.Transaction{ID: txID, Type: "refund", Amount: in.Amount, AppID: strPtr(app), Description: strPtr(in.Reason), CreatedAt: tx.Now()}
			return step{events: []domain.Event{ev}, status: http.StatusCreated, body: adminBody(s, t),
				after: func(ctx context.Context, tx *eventstore.Tx) error {
					_, err := tx.Exec(ctx, `UPDATE credit_charges SET refunded = refunded + $2 WHERE transaction_id = $1`, in.TransactionID, in.Amount)
					return err
				}}, nil
		})
}

// BalanceAt implements domain.CreditsService: the fold of the account's
// events up to a feed cursor (<tx_id>-<position>) or an RFC 3339 time.
func (s *Service) BalanceAt(ctx context.Context, user uuid.UUID, at string) (domain.Balance, error) {
	var (
		cursor  *eventstore.Cursor
		instant *time.Time
	)
	if t, err := time.Parse(time.RFC3339Nano, at); err == nil {
		instant = &t
	} else if c, err := eventstore.ParseCursor(at); err == nil && at != "" {
		cursor = &c
	} else {
		return domain.Balance{}, invalid("at", "must be a cursor <tx_id>-<position> or an RFC 3339 time")
	}
	return s.foldBalance(ctx, "admin.balance_at", user, func(ev eventstore.Decoded) bool {
		return !(cursor != nil && cursor.Less(ev.Cursor) || instant != nil && ev.OccurredAt.After(*instant))
	})
}

// foldBalance folds the account's credit events that keep accepts, in a
// read-only command named name.
func (s *Service) foldBalance(ctx context.Context, name string, user uuid.UUID, keep func(eventstore.Decoded) bool) (domain.Balance, error) {
	a := domain.Account{UserID: user}
	_, err := s.cfg.Store.Execute(ctx, eventstore.Command{Name: name, Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeAdmin}},
		func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			evs, _, err := tx.Load(ctx, domain.StreamCreditAccount, user.String(), 0)
			if err != nil {
				return domain.Receipt{}, err
			}
			for _, ev := range evs {
				if !keep(ev) {
					continue
				}
				if ce, ok := ev.Event.(domain.CreditEvent); ok {
					a.Apply(ce)
				}
			}
			return domain.Receipt{}, nil
		})
	if err != nil {
		return domain.Balance{}, err
	}
	return a.Balance(s.cfg.DailyFree), nil
}
