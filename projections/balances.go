package projections

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// balancesProjection builds the balance of every credit account, table
// balances: one row per user, the fold of the account's credit events with
// domain.Account.Apply, the very function the write side keeps
// credit_accounts with, so the read model and the decisions cannot
// disagree on what an event does.
type balancesProjection struct{ Handlers }

// Balances returns the projection "balances". Every credit event (every
// event type of the domain catalogue whose payload is a
// domain.CreditEvent) loads the account's row, or the zero account when it
// has none, folds the event in with domain.Account.Apply and writes the
// buckets (free, paid, held) and totals (total_earned, total_spent) back,
// with updated_at the event's OccurredAt. user.erased deletes the user's
// row.
//
// Credit events of an erased user cannot follow user.erased in the feed
// (the account is written off before the erasure), and a payment for an
// erased account goes to system:unclaimed and adds no row here, so a deleted
// row stays deleted.
func Balances() Projection {
	h := Handlers{"user.erased": applyBalancesErased}
	for _, t := range creditEventTypes() {
		h[t] = applyBalanceEvent
	}
	return balancesProjection{h}
}

func (balancesProjection) Name() string { return "balances" }

func (balancesProjection) Tables() []Table {
	return []Table{{Name: "balances", Access: func(t string) string {
		return creditReadModelAccess("balances", t)
	}}}
}

// creditReadModelAccess is the access the credits migration gives each of
// its read models (balances, transactions, usage_stats), on the physical
// table t: reads for mana_app and mana_auditor limited by row-level
// security to the rows the scope may see, writes for mana_projector only.
func creditReadModelAccess(name, t string) string {
	return `GRANT SELECT ON ` + t + ` TO mana_app, mana_auditor;
GRANT SELECT, INSERT, UPDATE, DELETE ON ` + t + ` TO mana_projector;
ALTER TABLE ` + t + ` ENABLE ROW LEVEL SECURITY;
ALTER TABLE ` + t + ` FORCE ROW LEVEL SECURITY;
CREATE POLICY ` + name + `_read ON ` + t + ` FOR SELECT TO mana_app, mana_auditor USING (mana_can_see(user_id));
CREATE POLICY ` + name + `_project ON ` + t + ` FOR ALL TO mana_projector USING (true) WITH CHECK (true);`
}

// creditEventTypes lists, sorted, the credit.* event types of the domain
// catalogue whose payload is a domain.CreditEvent: the events that move a
// credit account.
func creditEventTypes() []string {
	var out []string
	for _, t := range domain.EventTypes() {
		if !strings.HasPrefix(t, "credit.") {
			continue
		}
		ev, ok := domain.NewEvent(t)
		if !ok {
			continue
		}
		if _, ok := ev.(domain.CreditEvent); ok {
			out = append(out, t)
		}
	}
	return out
}

// creditEvent returns ev's payload as a credit event.
func creditEvent(ev eventstore.Decoded) (domain.CreditEvent, error) {
	ce, ok := ev.Event.(domain.CreditEvent)
	if !ok {
		return nil, fmt.Errorf("%s: unexpected payload %T", ev.EventType, ev.Event)
	}
	if ce.Account() == uuid.Nil {
		return nil, fmt.Errorf("%s: event without an account", ev.EventType)
	}
	return ce, nil
}

func applyBalanceEvent(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	ce, err := creditEvent(ev)
	if err != nil {
		return err
	}
	if unclaimedPurchase(ce) {
		return nil
	}
	t := w.Table("balances")
	a := domain.Account{UserID: ce.Account()}
	err = w.QueryRow(ctx, `SELECT free, paid, held, total_earned, total_spent FROM `+t+` WHERE user_id = $1 FOR UPDATE`, a.UserID).
		Scan(&a.Free, &a.Paid, &a.Held, &a.TotalEarned, &a.TotalSpent)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("load balance: %w", err)
	}
	a.Apply(ce)
	_, err = w.Exec(ctx, `INSERT INTO `+t+` AS b (user_id, free, paid, held, total_earned, total_spent, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (user_id) DO UPDATE SET
    free = excluded.free, paid = excluded.paid, held = excluded.held,
    total_earned = excluded.total_earned, total_spent = excluded.total_spent, updated_at = excluded.updated_at`,
		a.UserID, a.Free, a.Paid, a.Held, a.TotalEarned, a.TotalSpent, ev.OccurredAt)
	if err != nil {
		return fmt.Errorf("upsert balance: %w", err)
	}
	return nil
}

// balanceState is one account's row while a batch is folded in memory.
type balanceState struct {
	acct      domain.Account
	updatedAt time.Time
	deleted   bool // erased in this batch, after its last credit event
	touched   bool
}

// ApplyBatch implements BatchApplier: it loads the rows of every account
// the batch touches in one statement, folds the events in order in memory
// exactly as Apply does (domain.Account.Apply; an erasure deletes the row,
// and a later event would start from a zero account), and writes each
// account once: one upsert and one delete for the whole batch.
func (p balancesProjection) ApplyBatch(ctx context.Context, w *Writer, evs []eventstore.Decoded) error {
	t := w.Table("balances")
	states := map[uuid.UUID]*balanceState{}
	var users []uuid.UUID
	state := func(u uuid.UUID) *balanceState {
		st, ok := states[u]
		if !ok {
			st = &balanceState{acct: domain.Account{UserID: u}}
			states[u] = st
			users = append(users, u)
		}
		return st
	}
	// Which accounts the batch touches, checking every event first.
	type step struct {
		ce   domain.CreditEvent // nil: an erasure of user
		user uuid.UUID
		at   time.Time
	}
	var steps []step
	for _, ev := range evs {
		if _, ok := p.Handlers[ev.EventType]; !ok {
			continue
		}
		if ev.EventType == "user.erased" {
			e, ok := ev.Event.(*domain.UserErased)
			if !ok {
				return fmt.Errorf("user.erased: unexpected payload %T", ev.Event)
			}
			state(e.UserID)
			steps = append(steps, step{user: e.UserID})
			continue
		}
		ce, err := creditEvent(ev)
		if err != nil {
			return err
		}
		if unclaimedPurchase(ce) {
			continue
		}
		state(ce.Account())
		steps = append(steps, step{ce: ce, user: ce.Account(), at: ev.OccurredAt})
	}
	if len(users) == 0 {
		return nil
	}
	rows, err := w.Query(ctx, `SELECT user_id, free, paid, held, total_earned, total_spent FROM `+t+`
WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE`, users)
	if err != nil {
		return fmt.Errorf("load balances: %w", err)
	}
	var (
		u uuid.UUID
		a domain.Account
	)
	_, err = pgx.ForEachRow(rows, []any{&u, &a.Free, &a.Paid, &a.Held, &a.TotalEarned, &a.TotalSpent}, func() error {
		a.UserID = u
		states[u].acct = a
		return nil
	})
	if err != nil {
		return fmt.Errorf("load balances: %w", err)
	}
	for _, s := range steps {
		st := states[s.user]
		st.touched = true
		if s.ce == nil {
			st.acct, st.deleted = domain.Account{UserID: s.user}, true
			continue
		}
		st.acct.Apply(s.ce)
		st.deleted, st.updatedAt = false, s.at
	}
	var (
		ids, gone                                 []uuid.UUID
		free, paid, held, totalEarned, totalSpent []int64
		updated                                   []time.Time
	)
	for _, u := range users {
		st := states[u]
		switch {
		case !st.touched:
		case st.deleted:
			gone = append(gone, u)
		default:
			ids = append(ids, u)
			free, paid, held = append(free, st.acct.Free), append(paid, st.acct.Paid), append(held, st.acct.Held)
			totalEarned, totalSpent = append(totalEarned, st.acct.TotalEarned), append(totalSpent, st.acct.TotalSpent)
			updated = append(updated, st.updatedAt)
		}
	}
	if len(ids) > 0 {
		_, err := w.Exec(ctx, `INSERT INTO `+t+` AS b (user_id, free, paid, held, total_earned, total_spent, updated_at)
SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::timestamptz[])
ON CONFLICT (user_id) DO UPDATE SET
    free = excluded.free, paid = excluded.paid, held = excluded.held,
    total_earned = excluded.total_earned, total_spent = excluded.total_spent, updated_at = excluded.updated_at`,
			ids, free, paid, held, totalEarned, totalSpent, updated)
		if err != nil {
			return fmt.Errorf("upsert balances: %w", err)
		}
	}
	if len(gone) > 0 {
		if _, err := w.Exec(ctx, `DELETE FROM `+t+` WHERE user_id = ANY($1)`, gone); err != nil {
			return fmt.Errorf("delete balances: %w", err)
		}
	}
	return nil
}

func applyBalancesErased(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.UserErased)
	if !ok {
		return fmt.Errorf("user.erased: unexpected payload %T", ev.Event)
	}
	if _, err := w.Exec(ctx, `DELETE FROM `+w.Table("balances")+` WHERE user_id = $1`, e.UserID); err != nil {
		return fmt.Errorf("delete balance: %w", err)
	}
	return nil
}

// UserBalance returns user's account as the balances read model holds it:
// UserID, the buckets and the totals (Version, CreatedAt and
// LastDailyGrant are write-side state and stay zero), and false when the
// user has no credit events (or was erased). It reads as mana_app in
// user's scope, so row-level security limits it to user's row. It does
// not wait for the projection: callers wait for read-your-writes first.
func UserBalance(ctx context.Context, pool *pgxpool.Pool, user uuid.UUID) (domain.Account, bool, error) {
	a := domain.Account{UserID: user}
	found := false
	err := pg.InTx(ctx, pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user}, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT free, paid, held, total_earned, total_spent FROM balances WHERE user_id = $1`, user).
			Scan(&a.Free, &a.Paid, &a.Held, &a.TotalEarned, &a.TotalSpent)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		found = err == nil
		return err
	})
	if err != nil {
		return domain.Account{UserID: user}, false, fmt.Errorf("read balance: %w", err)
	}
	return a, found, nil
}
