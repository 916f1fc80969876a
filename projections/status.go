package projections

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// LagCountLimit bounds how many events past a checkpoint are counted:
// Status.LagEvents and mana_projection_lag_events saturate there, so a
// far-behind projection costs no more to measure than a slightly late one.
const LagCountLimit = 10000

// Status is a projection's progress, as `mana projections status` prints it.
type Status struct {
	Name string
	// Checkpoint is the cursor of the last event the projection got past.
	Checkpoint eventstore.Cursor
	// AppliedAt is that event's occurred_at; zero before the first.
	AppliedAt time.Time
	// LagEvents counts the events in the feed after Checkpoint, up to
	// LagCountLimit.
	LagEvents int64
	// LagSeconds is occurred_at of the feed's head minus AppliedAt (or
	// minus occurred_at of the first pending event before any was
	// applied); 0 when caught up.
	LagSeconds float64
	// Failures counts poison events neither applied nor skipped yet.
	Failures int
	// Holder is the process holding the projection's lease; empty when
	// nobody does.
	Holder string
}

// Statuses returns the status of each projection, in order. It reads as
// mana_projector; the projections need not be running.
func Statuses(ctx context.Context, pool *pgxpool.Pool, projs []Projection) ([]Status, error) {
	out := make([]Status, 0, len(projs))
	for _, p := range projs {
		st := Status{Name: p.Name()}
		err := pg.InTx(ctx, pool, asProjector, func(tx pgx.Tx) error {
			cp, err := readCheckpoint(ctx, tx, st.Name)
			if err != nil {
				return err
			}
			st.Checkpoint, st.AppliedAt = cp.cursor, cp.appliedAt
			if st.LagEvents, st.LagSeconds, err = lagIn(ctx, tx, cp); err != nil {
				return err
			}
			err = tx.QueryRow(ctx, `SELECT count(*) FROM projection_failures WHERE name = $1 AND resolution IS NULL`, st.Name).Scan(&st.Failures)
			if err != nil {
				return err
			}
			err = tx.QueryRow(ctx, `SELECT holder FROM leases WHERE name = $1 AND expires_at > clock_timestamp()`, LeaseName(st.Name)).Scan(&st.Holder)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("status of %s: %w", st.Name, err)
		}
		out = append(out, st)
	}
	return out, nil
}

// lag measures how far cp is behind the feed.
func lag(ctx context.Context, pool *pgxpool.Pool, cp checkpoint) (events int64, seconds float64, err error) {
	err = pg.InTx(ctx, pool, asProjector, func(tx pgx.Tx) error {
		events, seconds, err = lagIn(ctx, tx, cp)
		return err
	})
	return events, seconds, err
}

func lagIn(ctx context.Context, tx pgx.Tx, cp checkpoint) (int64, float64, error) {
	var (
		n           int64
		head, first *time.Time
	)
	// Only the feed counts: events below the snapshot horizon, in feed
	// order. Both ends come from the feed index.
	err := tx.QueryRow(ctx, `WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
SELECT
    (SELECT count(*) FROM (
        SELECT 1 FROM events, h
        WHERE (tx_id, position) > ($1::xid8, $2::bigint) AND tx_id < h.xmin
        ORDER BY tx_id, position LIMIT $3) pending),
    (SELECT occurred_at FROM events, h
        WHERE (tx_id, position) > ($1::xid8, $2::bigint) AND tx_id < h.xmin
        ORDER BY tx_id DESC, position DESC LIMIT 1),
    (SELECT occurred_at FROM events, h
        WHERE (tx_id, position) > ($1::xid8, $2::bigint) AND tx_id < h.xmin
        ORDER BY tx_id, position LIMIT 1)`,
		cp.cursor.TxID, cp.cursor.Position, LagCountLimit).Scan(&n, &head, &first)
	if err != nil {
		return 0, 0, fmt.Errorf("measure lag: %w", err)
	}
	if n == 0 || head == nil {
		return 0, 0, nil
	}
	from := cp.appliedAt
	if from.IsZero() && first != nil {
		from = *first
	}
	// occurred_at is the service clock and need not grow in feed order.
	return n, max(head.Sub(from).Seconds(), 0), nil
}
