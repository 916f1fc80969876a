package credits

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// ExpireDue looks up to limit active holds whose time is up and, for each
// of their accounts, runs one command that records the expiry of all the
// account's due holds; it returns how many it expired. Decisions
// treat a hold as expired at now ≥ expiresAt anyway; this worker returns
// the credits of holds nobody touches again.
func (s *Service) ExpireDue(ctx context.Context, limit int) (int, error) {
	type due struct{ hold, user uuid.UUID }
	var list []due
	err := pg.InTx(ctx, s.pool, system, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT hold_id, user_id FROM credit_holds WHERE status = 'active' AND expires_at <= $1 ORDER BY expires_at LIMIT $2`,
			s.cfg.Clock.Now(), limit)
		if err != nil {
			return err
		}
		list, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (due, error) {
			var d due
			return d, r.Scan(&d.hold, &d.user)
		})
		return err
	})
	if err != nil {
		return 0, err
	}
	// Every command expires its account's due holds before it decides
	// (see execute), so one empty command per account does the work.
	n := 0
	worker := domain.Caller{Kind: "system"}
	done := map[uuid.UUID]bool{}
	for _, d := range list {
		if done[d.user] {
			continue
		}
		done[d.user] = true
		expired := 0
		_, err := s.execute(ctx, command{op: "credits.expire", caller: worker, user: d.user, expired: &expired},
			func(ctx context.Context, tx *eventstore.Tx, acct *domain.Account) (step, error) {
				return step{status: 200, body: func(domain.Account) any { return nil }}, nil
			})
		if err != nil {
			return n, err
		}
		n += expired
	}
	return n, nil
}

// RunExpiry expires due holds every interval until ctx ends. Run it under
// the lease "worker:hold-expiry" so one node does it.
func (s *Service) RunExpiry(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := s.ExpireDue(ctx, 500); err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("hold expiry failed; retrying", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
