package eventstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/eventstore/internal/db"
	"github.com/manacore/mana/internal/pg"
)

// ReadFeed returns up to limit events after the cursor in feed order,
// (tx_id, position). It returns only events of transactions below the
// cluster's snapshot horizon (pg_snapshot_xmin of the current snapshot): a
// transaction still in flight may hold a smaller tx_id than events already
// committed, and everything from it on waits until it ends. So no event can
// ever appear before a cursor a reader has passed.
func (s *Store) ReadFeed(ctx context.Context, after Cursor, limit int) ([]Record, error) {
	var out []Record
	err := pg.InTx(ctx, s.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		rows, err := db.New(tx).EventsFeed(ctx, db.EventsFeedParams{
			AfterTx: after.TxID, AfterPosition: after.Position, MaxEvents: int32(limit),
		})
		if err != nil {
			return fmt.Errorf("read feed: %w", err)
		}
		out = make([]Record, len(rows))
		for i, r := range rows {
			out[i] = recordFromRow(r)
		}
		return nil
	})
	return out, err
}

// Horizon returns the oldest transaction id still in flight in the
// cluster: the feed's current limit. It stalls while any write transaction
// anywhere in the cluster stays open.
func (s *Store) Horizon(ctx context.Context) (uint64, error) {
	var h uint64
	err := pg.InTx(ctx, s.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		var err error
		h, err = db.New(tx).EventsFeedHorizon(ctx)
		return err
	})
	return h, err
}

// FeedStall returns how long the oldest transaction holding an xid anywhere
// in the cluster has been open: the feed cannot pass it. It reads
// pg_stat_activity as the connection user, since the service's roles may
// not see other sessions.
func (s *Store) FeedStall(ctx context.Context) (time.Duration, error) {
	var secs float64
	err := s.pool.QueryRow(ctx, `SELECT coalesce(extract(epoch FROM max(clock_timestamp() - xact_start)), 0)::float8
		FROM pg_stat_activity WHERE backend_xid IS NOT NULL`).Scan(&secs)
	if err != nil {
		return 0, fmt.Errorf("feed stall: %w", err)
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// FeedHead returns the newest cursor readers can see now (the zero cursor
// for an empty feed).
func (s *Store) FeedHead(ctx context.Context) (Cursor, error) {
	var c Cursor
	err := pg.InTx(ctx, s.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		row, err := db.New(tx).EventsFeedHead(ctx)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("feed head: %w", err)
		}
		c = Cursor{TxID: row.TxID, Position: row.Position}
		return nil
	})
	return c, err
}

// CommittedBy returns a mark for "everything committed by now": the
// current snapshot's xmax. Once Horizon reaches it, every transaction that
// had committed when CommittedBy was called is readable in the feed, so a
// reader that pages until then has seen all of them.
func (s *Store) CommittedBy(ctx context.Context) (uint64, error) {
	var x uint64
	err := pg.InTx(ctx, s.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").Scan(&x)
	})
	return x, err
}
