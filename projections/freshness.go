package projections

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// Freshness implements domain.ReadYourWrites: every append that touches a
// user records its feed cursor for that user in the same transaction
// (user_positions); a read first waits until the serving projection's
// checkpoint has passed that cursor and any minPosition the client sent.
type Freshness struct {
	pool    *pgxpool.Pool
	runner  *Runner
	timeout time.Duration
}

var _ domain.ReadYourWrites = (*Freshness)(nil)

// NewFreshness returns a Freshness that waits at most timeout (RYW_TIMEOUT).
// runner may be nil; when this node runs the projection, its in-process
// wake-up answers without polling.
func NewFreshness(pool *pgxpool.Pool, runner *Runner, timeout time.Duration) *Freshness {
	return &Freshness{pool: pool, runner: runner, timeout: timeout}
}

// Await implements domain.ReadYourWrites.
func (f *Freshness) Await(ctx context.Context, readModel string, user uuid.UUID, minPosition string) error {
	target, err := eventstore.ParseCursor(minPosition)
	if err != nil {
		return &domain.Error{Code: domain.CodeValidationFailed, Message: "minPosition is not a position this service issued.",
			Details: []domain.FieldError{{Field: "minPosition", Message: "want <tx_id>-<position>"}}}
	}
	if user != uuid.Nil {
		own, err := f.userPosition(ctx, user)
		if err != nil {
			return err
		}
		if target.Less(own) {
			target = own
		}
	}
	if target.IsZero() {
		return nil
	}
	var ok bool
	if f.runner != nil {
		ok, err = f.runner.WaitFor(ctx, readModel, target, f.timeout)
	} else {
		ok, err = WaitFor(ctx, f.pool, readModel, target, f.timeout)
	}
	if err != nil {
		return err
	}
	if !ok {
		return &domain.Error{Code: domain.CodeReadModelLagging, RetryAfterSeconds: 1,
			Message: "The data is being updated; retry in a moment."}
	}
	return nil
}

// userPosition reads the cursor of the latest write touching user, as that
// user (Row-Level Security lets a user see only their own row).
func (f *Freshness) userPosition(ctx context.Context, user uuid.UUID) (eventstore.Cursor, error) {
	var c eventstore.Cursor
	err := pg.QueryRow(ctx, f.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user},
		"SELECT tx_id, position FROM user_positions WHERE user_id = $1", []any{user}, &c.TxID, &c.Position)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("read user position: %w", err)
	}
	return c, nil
}
