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

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// projector is the actor of every transaction that writes read models,
// checkpoints and failure rows.
var asProjector = pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}

// checkpoint is a projection's stored progress: the cursor of the last
// event it got past, and that event's occurred_at (zero before the first).
type checkpoint struct {
	cursor    eventstore.Cursor
	appliedAt time.Time
}

// loadCheckpoint reads name's checkpoint, creating the row at the start of
// the feed when it is missing.
func loadCheckpoint(ctx context.Context, pool *pgxpool.Pool, name string) (checkpoint, error) {
	var cp checkpoint
	err := pg.InTx(ctx, pool, asProjector, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING`, name); err != nil {
			return err
		}
		var err error
		cp, err = readCheckpoint(ctx, tx, name)
		return err
	})
	if err != nil {
		return checkpoint{}, fmt.Errorf("load checkpoint of %s: %w", name, err)
	}
	return cp, nil
}

// readCheckpoint reads name's checkpoint in tx; a missing row is the start
// of the feed.
func readCheckpoint(ctx context.Context, tx pgx.Tx, name string) (checkpoint, error) {
	var (
		cp checkpoint
		at *time.Time
	)
	err := tx.QueryRow(ctx, `SELECT tx_id, position, applied_at FROM projection_checkpoints WHERE name = $1`, name).
		Scan(&cp.cursor.TxID, &cp.cursor.Position, &at)
	if errors.Is(err, pgx.ErrNoRows) {
		return checkpoint{}, nil
	}
	if err != nil {
		return checkpoint{}, err
	}
	if at != nil {
		cp.appliedAt = at.UTC()
	}
	return cp, nil
}

// errCheckpointMoved means the compare-and-set on a checkpoint found
// another value than the runner started its batch from: someone else
// (another holder, a rebuild's swap) advanced it. The batch is rolled back.
var errCheckpointMoved = errors.New("projections: checkpoint moved")

// advanceCheckpoint moves name's checkpoint from old to next in tx, and
// marks every open failure row in between as applied, in one round trip.
// It fails with errCheckpointMoved when the stored checkpoint is not old.
func advanceCheckpoint(ctx context.Context, tx pgx.Tx, name string, old eventstore.Cursor, next eventstore.Record) error {
	b := &pgx.Batch{}
	// A retry got past a poison event: record that it applied after all.
	b.Queue(`UPDATE projection_failures SET resolution = 'applied', resolved_at = clock_timestamp()
WHERE name = $1 AND resolution IS NULL
  AND (tx_id, position) > ($2::xid8, $3::bigint) AND (tx_id, position) <= ($4::xid8, $5::bigint)`,
		name, old.TxID, old.Position, next.TxID, next.Position)
	// The compare-and-set: the row must still hold the cursor this batch
	// started from, so two writers can never both apply the same events.
	b.Queue(`UPDATE projection_checkpoints
SET tx_id = $4::xid8, position = $5, applied_at = $6, updated_at = clock_timestamp()
WHERE name = $1 AND (tx_id, position) = ($2::xid8, $3::bigint)`,
		name, old.TxID, old.Position, next.TxID, next.Position, next.OccurredAt)
	res := tx.SendBatch(ctx, b)
	if _, err := res.Exec(); err != nil {
		res.Close()
		return fmt.Errorf("resolve failures: %w", err)
	}
	tag, err := res.Exec()
	if err != nil {
		res.Close()
		return fmt.Errorf("advance checkpoint: %w", err)
	}
	if err := res.Close(); err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return errCheckpointMoved
	}
	return nil
}

// loadSkips returns the cursors in (after, upTo] an operator skipped for
// name, in a transaction of its own.
func loadSkips(ctx context.Context, pool *pgxpool.Pool, name string, after, upTo eventstore.Cursor) (map[eventstore.Cursor]bool, error) {
	var skips map[eventstore.Cursor]bool
	err := pg.InTx(ctx, pool, asProjector, func(tx pgx.Tx) error {
		var err error
		skips, err = loadSkipsIn(ctx, tx, name, after, upTo)
		return err
	})
	return skips, err
}

// loadSkipsIn is loadSkips in tx.
func loadSkipsIn(ctx context.Context, tx pgx.Tx, name string, after, upTo eventstore.Cursor) (map[eventstore.Cursor]bool, error) {
	skips := map[eventstore.Cursor]bool{}
	rows, err := tx.Query(ctx, `SELECT tx_id, position FROM projection_failures
WHERE name = $1 AND resolution = 'skipped'
  AND (tx_id, position) > ($2::xid8, $3::bigint) AND (tx_id, position) <= ($4::xid8, $5::bigint)`,
		name, after.TxID, after.Position, upTo.TxID, upTo.Position)
	if err != nil {
		return nil, fmt.Errorf("load skips of %s: %w", name, err)
	}
	var c eventstore.Cursor
	_, err = pgx.ForEachRow(rows, []any{&c.TxID, &c.Position}, func() error {
		skips[c] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load skips of %s: %w", name, err)
	}
	return skips, nil
}

// maxErrorText bounds the error text stored in a failure row.
const maxErrorText = 2000

// recordFailure upserts the failure row of name at rec after a failed
// attempt and returns the attempt count. A row an operator already marked
// skipped is left alone.
func recordFailure(ctx context.Context, pool *pgxpool.Pool, name string, rec eventstore.Record, cause error) (int, error) {
	msg := cause.Error()
	if len(msg) > maxErrorText {
		msg = msg[:maxErrorText]
	}
	// text columns take valid UTF-8 only; a cut may have split a rune.
	msg = strings.ToValidUTF8(msg, "")
	attempts := 0
	err := pg.InTx(ctx, pool, asProjector, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO projection_failures AS f (name, tx_id, position, event_id, error)
VALUES ($1, $2::xid8, $3, $4, $5)
ON CONFLICT (name, tx_id, position) DO UPDATE
    SET error = excluded.error, attempts = f.attempts + 1, last_at = clock_timestamp(),
        resolution = NULL, resolved_at = NULL
    WHERE f.resolution IS DISTINCT FROM 'skipped'
RETURNING attempts`, name, rec.TxID, rec.Position, rec.EventID, msg).Scan(&attempts)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("record failure of %s at %s: %w", name, rec.Cursor, err)
	}
	return attempts, nil
}

// ErrNoEvent is returned by Skip when no event has the given cursor.
var ErrNoEvent = errors.New("projections: no event at that cursor")

// ErrAlreadyApplied is returned by Skip when the projection's checkpoint
// is already at or past the cursor: there is nothing left to skip.
var ErrAlreadyApplied = errors.New("projections: event already applied")

// Skip lets projection name get past the event at cursor c without
// applying it, and records that operator by did so: it marks the event's
// failure row resolution 'skipped' (creating the row, with zero attempts,
// when the event has not failed yet). The runner of name sees the mark on
// its next retry, or when it reaches the event, and moves its checkpoint
// past the event; a rebuild skips it too, so the rebuilt table matches the
// live one.
//
// Skip fails with ErrNoEvent when no event has cursor c and with
// ErrAlreadyApplied when name's checkpoint is at or past c. It is what
// `mana projections skip NAME CURSOR` runs, and is safe to call while the
// projection runs anywhere.
func Skip(ctx context.Context, pool *pgxpool.Pool, name string, c eventstore.Cursor, by string) error {
	if by == "" {
		return errors.New("projections: skip: say who skips")
	}
	err := pg.InTx(ctx, pool, asProjector, func(tx pgx.Tx) error {
		var id uuid.UUID
		err := tx.QueryRow(ctx, `SELECT event_id FROM events WHERE tx_id = $1::xid8 AND position = $2`, c.TxID, c.Position).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNoEvent
		}
		if err != nil {
			return err
		}
		cp, err := readCheckpoint(ctx, tx, name)
		if err != nil {
			return err
		}
		if !cp.cursor.Less(c) {
			return ErrAlreadyApplied
		}
		_, err = tx.Exec(ctx, `INSERT INTO projection_failures AS f
    (name, tx_id, position, event_id, error, attempts, resolution, resolved_at, skipped_by)
VALUES ($1, $2::xid8, $3, $4, 'skipped before it failed', 0, 'skipped', clock_timestamp(), $5)
ON CONFLICT (name, tx_id, position) DO UPDATE
    SET resolution = 'skipped', resolved_at = clock_timestamp(), skipped_by = excluded.skipped_by`,
			name, c.TxID, c.Position, id, by)
		return err
	})
	if err != nil {
		return fmt.Errorf("skip %s at %s: %w", name, c, err)
	}
	return nil
}
