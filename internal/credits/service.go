// Package credits implements domain.CreditsService on the event store: an
// event-sourced double-entry ledger per user. Every decision locks the
// account's write-side row (credit_accounts) FOR UPDATE, decides with the
// domain.Account aggregate, appends the events and rewrites the row in the
// same transaction, so no decision replays history and none can overdraw.
package credits

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/projections"
)

// Config configures a Service.
type Config struct {
	Store     *eventstore.Store
	Freshness domain.ReadYourWrites
	Clock     domain.Clock
	// DailyFree is CREDITS_DAILY_FREE; 0 disables the daily grant.
	DailyFree domain.Credits
	Logger    *slog.Logger
}

// Service implements domain.CreditsService; safe for concurrent use.
type Service struct {
	cfg   Config
	pool  *pgxpool.Pool
	seed  maphash.Seed
	locks [lockStripes]sync.Mutex
}

// lockStripes is how many in-process locks serialize commands per account:
// concurrent commands on one account queue here instead of on PostgreSQL's
// row lock, which collapses past a handful of waiters.
const lockStripes = 1024

var _ domain.CreditsService = (*Service)(nil)

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Freshness == nil {
		return nil, errors.New("credits: store and freshness are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = domain.SystemClock
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, pool: cfg.Store.Pool(), seed: maphash.MakeSeed()}, nil
}

func (s *Service) lock(user uuid.UUID) func() {
	m := &s.locks[maphash.Bytes(s.seed, user[:])%lockStripes]
	m.Lock()
	return m.Unlock
}

// command is one credit write: its operation name, caller, account and
// optional idempotency key and request.
type command struct {
	op      string
	caller  domain.Caller
	user    uuid.UUID
	key     string
	request any
	// expired, when set, receives how many due holds the command expired.
	expired *int
}

// decision decides on the locked account. It returns the events to append
// (in order; the account folds them), the HTTP status, and a function that
// builds the body from the account after the events.
type decision func(ctx context.Context, tx *eventstore.Tx, acct *domain.Account) (step, error)

type step struct {
	events []domain.Event
	status int
	body   func(after domain.Account) any
	// after runs inside the transaction once the events are appended
	// (side tables: holds, charges).
	after func(ctx context.Context, tx *eventstore.Tx) error
	// fail, when set, is returned after the transaction commits: the
	// command recorded something (an expiry) and still answers an error.
	fail error
}

// execute runs a credit command: per-account in-process lock, one
// transaction, idempotency under the caller's principal, the account row
// locked FOR UPDATE, the decision, the append and the row rewrite.
func (s *Service) execute(ctx context.Context, c command, decide decision) (domain.Receipt, error) {
	unlock := s.lock(c.user)
	defer unlock()
	cmd := eventstore.Command{
		Name:     c.op,
		Actor:    pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem, UserID: c.user},
		Metadata: domain.Metadata{Actor: c.caller.Principal(), RequestID: c.caller.Meta.RequestID, AppID: c.caller.AppID},
	}
	if c.key != "" {
		cmd.Idempotency = &eventstore.Idempotency{
			Subject: "account:" + c.user.String(), Principal: c.caller.Principal(), Key: c.key, Request: c.request,
		}
	}
	var fail error
	r, err := s.cfg.Store.Execute(ctx, cmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		fail = nil
		acct, head, err := lockAccount(ctx, tx, c.user)
		if err != nil {
			return domain.Receipt{}, err
		}
		// Holds past their time are expired whether or not that was
		// recorded: a decision records it first, so their credits are
		// back before it decides.
		expiries, err := expireDueHolds(ctx, tx, acct)
		if err != nil {
			return domain.Receipt{}, err
		}
		if c.expired != nil {
			*c.expired = len(expiries)
		}
		decided := acct
		for _, ev := range expiries {
			decided.Apply(ev.(domain.CreditEvent))
		}
		st, err := decide(ctx, tx, &decided)
		if err != nil {
			return domain.Receipt{}, err
		}
		st.events = append(expiries, st.events...)
		if len(st.events) > 0 {
			before := acct.Version
			for _, ev := range st.events {
				acct.Apply(ev.(domain.CreditEvent))
			}
			acct.Version += int64(len(st.events))
			recs, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamCreditAccount, StreamID: c.user.String(),
				ExpectedVersion: before, PrevHash: head, Users: []uuid.UUID{c.user}, Events: st.events})
			if err != nil {
				return domain.Receipt{}, err
			}
			saveAccount(tx, acct, recs[len(recs)-1].Hash)
		}
		if st.after != nil {
			if err := st.after(ctx, tx); err != nil {
				return domain.Receipt{}, err
			}
		}
		fail = st.fail
		if st.fail != nil {
			return domain.Receipt{Status: http.StatusConflict}, nil
		}
		body, err := json.Marshal(st.body(acct))
		if err != nil {
			return domain.Receipt{}, err
		}
		return domain.Receipt{Status: st.status, Body: body}, nil
	})
	if err != nil {
		return domain.Receipt{}, err
	}
	if fail != nil {
		return domain.Receipt{}, fail
	}
	return r, nil
}

// lockAccount reads the account row FOR UPDATE, opening it on first use
// from the user's registration and the events already in its stream (the
// signup bonus). NOT_FOUND when no such user exists.
// It also returns the hash of the stream's newest event when the row knows
// it (nil otherwise: the append then looks it up).
func lockAccount(ctx context.Context, tx *eventstore.Tx, user uuid.UUID) (domain.Account, []byte, error) {
	for attempt := 0; attempt < 2; attempt++ {
		a := domain.Account{UserID: user}
		var head []byte
		err := tx.QueryRow(ctx, `SELECT version, free, paid, held, total_earned, total_spent, created_at, last_daily_grant, last_hash
FROM credit_accounts WHERE user_id = $1 FOR UPDATE`, user).Scan(&a.Version, &a.Free, &a.Paid, &a.Held, &a.TotalEarned, &a.TotalSpent, &a.CreatedAt, &a.LastDailyGrant, &head)
		if err == nil {
			return a, head, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return a, nil, fmt.Errorf("lock account: %w", err)
		}
		if err := openAccount(ctx, tx, user); err != nil {
			return a, nil, err
		}
	}
	return domain.Account{}, nil, errors.New("credits: account row did not appear")
}

// openAccount creates the account row by folding the account's stream so
// far (normally just the signup bonus). A concurrent opener makes the
// INSERT a no-op.
func openAccount(ctx context.Context, tx *eventstore.Tx, user uuid.UUID) error {
	var created time.Time
	err := tx.QueryRow(ctx, `SELECT created_at FROM auth_users WHERE user_id = $1 AND NOT erased`, user).Scan(&created)
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.Errorf(domain.CodeNotFound, "User not found.")
	}
	if err != nil {
		return err
	}
	evs, version, err := tx.Load(ctx, domain.StreamCreditAccount, user.String(), 0)
	if err != nil {
		return err
	}
	a := domain.Account{UserID: user, CreatedAt: created, Version: version}
	for _, ev := range evs {
		if ce, ok := ev.Event.(domain.CreditEvent); ok {
			a.Apply(ce)
		}
	}
	_, err = tx.Exec(ctx, `INSERT INTO credit_accounts (user_id, version, free, paid, held, total_earned, total_spent, created_at, last_daily_grant)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (user_id) DO NOTHING`,
		user, a.Version, a.Free, a.Paid, a.Held, a.TotalEarned, a.TotalSpent, a.CreatedAt, a.LastDailyGrant)
	return err
}

// saveAccount queues the rewrite of the locked account row; it travels
// with the command's other bookkeeping in one round trip before commit.
func saveAccount(tx *eventstore.Tx, a domain.Account, head []byte) {
	tx.Queue(`UPDATE credit_accounts SET version = $2, free = $3, paid = $4, held = $5, total_earned = $6, total_spent = $7, last_daily_grant = $8, last_hash = $9
WHERE user_id = $1`, a.UserID, a.Version, a.Free, a.Paid, a.Held, a.TotalEarned, a.TotalSpent, a.LastDailyGrant, head)
}

// withDaily prepends the daily grant when this debit is the account's first
// of the UTC day; the grant commits only if the debit does.
func (s *Service) withDaily(acct domain.Account, now time.Time) (domain.Account, []domain.Event) {
	g, ok := acct.DailyGrant(now, s.cfg.DailyFree)
	if !ok {
		return acct, nil
	}
	acct.Apply(g)
	return acct, []domain.Event{g}
}

// Balance implements domain.CreditsService: the balances read model once it
// has applied the user's writes (and minPosition); when it lags past the
// wait, the write-side account in the identical shape.
func (s *Service) Balance(ctx context.Context, user uuid.UUID, minPosition string) (domain.Balance, error) {
	err := s.cfg.Freshness.Await(ctx, "balances", user, minPosition)
	if err == nil {
		a, found, err := projections.UserBalance(ctx, s.pool, user)
		if err != nil {
			return domain.Balance{}, err
		}
		if found {
			return a.Balance(s.cfg.DailyFree), nil
		}
	} else if domain.ErrorCode(err) != domain.CodeReadModelLagging {
		return domain.Balance{}, err
	}
	return s.writeSideBalance(ctx, user)
}

// writeSideBalance reads the account row; an account no command has
// opened yet (a new user's, holding just the signup bonus) is folded from
// its stream, as opening it would.
func (s *Service) writeSideBalance(ctx context.Context, user uuid.UUID) (domain.Balance, error) {
	var a domain.Account
	opened := true
	err := pg.InTx(ctx, s.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user}, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT free, paid, held, total_earned, total_spent FROM credit_accounts WHERE user_id = $1`, user).
			Scan(&a.Free, &a.Paid, &a.Held, &a.TotalEarned, &a.TotalSpent)
		if errors.Is(err, pgx.ErrNoRows) {
			opened = false
			return nil
		}
		return err
	})
	if err != nil {
		return domain.Balance{}, fmt.Errorf("read account: %w", err)
	}
	if !opened {
		return s.foldBalance(ctx, "credits.balance_fold", user, func(eventstore.Decoded) bool { return true })
	}
	return a.Balance(s.cfg.DailyFree), nil
}

// Transactions implements domain.CreditsService.
func (s *Service) Transactions(ctx context.Context, user uuid.UUID, limit, offset int, minPosition string) ([]domain.Transaction, error) {
	if err := s.cfg.Freshness.Await(ctx, "transactions", user, minPosition); err != nil {
		return nil, err
	}
	return projections.UserTransactions(ctx, s.pool, user, limit, offset)
}

// Usage implements domain.CreditsService.
func (s *Service) Usage(ctx context.Context, user uuid.UUID, from, to time.Time, minPosition string) ([]domain.UsageDay, error) {
	if err := s.cfg.Freshness.Await(ctx, "usage_stats", user, minPosition); err != nil {
		return nil, err
	}
	return projections.UserUsage(ctx, s.pool, user, from, to)
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// expireDueHolds returns the expiry events of the account's active holds
// whose time is up, and marks them expired. It costs nothing for
// accounts without held credits.
func expireDueHolds(ctx context.Context, tx *eventstore.Tx, acct domain.Account) ([]domain.Event, error) {
	if acct.Held == 0 {
		return nil, nil
	}
	rows, err := tx.Query(ctx, `SELECT hold_id, app_id, amount, free_part, paid_part, expires_at FROM credit_holds
WHERE user_id = $1 AND status = 'active' AND expires_at <= $2 ORDER BY expires_at, hold_id FOR UPDATE`, acct.UserID, tx.Now())
	if err != nil {
		return nil, fmt.Errorf("due holds: %w", err)
	}
	holds, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (domain.Hold, error) {
		h := domain.Hold{UserID: acct.UserID, Status: domain.HoldActive}
		return h, r.Scan(&h.ID, &h.AppID, &h.Amount, &h.Split.Free, &h.Split.Paid, &h.ExpiresAt)
	})
	if err != nil {
		return nil, fmt.Errorf("due holds: %w", err)
	}
	evs := make([]domain.Event, 0, len(holds))
	for _, h := range holds {
		evs = append(evs, h.Expire())
		// At once, not queued: the decision may read this hold next.
		if _, err := tx.Exec(ctx, `UPDATE credit_holds SET status = 'expired' WHERE hold_id = $1`, h.ID); err != nil {
			return nil, err
		}
	}
	return evs, nil
}
