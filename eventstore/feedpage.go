package eventstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/eventstore/internal/db"
	"github.com/manacore/mana/internal/pg"
)

// auditorActor reads the log for analysts: mana_auditor may only SELECT.
var auditorActor = pg.Actor{Role: pg.RoleAuditor, Scope: pg.ScopeAuditor}

// FeedPageEnd chooses a page of the feed for a client that pages by
// cursor: the first limit events after the cursor whose type is one of
// types (every type when types is empty), among the events readable now
// (below the snapshot horizon, as ReadFeed). It returns the cursor of the
// page's last event and how many events the page holds; an empty page
// returns after and 0.
//
// Everything up to the returned cursor belongs to transactions that had
// ended when it was chosen, so the page never changes afterwards: reading
// it with ReadFeedRange, in as many pieces as memory asks for, gives
// exactly n events whatever is being appended meanwhile.
func (s *Store) FeedPageEnd(ctx context.Context, after Cursor, types []string, limit int) (Cursor, int, error) {
	if limit <= 0 {
		return after, 0, nil
	}
	filter, args := typeFilter(types, 4)
	q := `WITH page AS (
    SELECT tx_id, position FROM events
    WHERE (tx_id, position) > ($1::xid8, $2::bigint)
      AND tx_id < pg_snapshot_xmin(pg_current_snapshot())` + filter + `
    ORDER BY tx_id, position
    LIMIT $3)
SELECT (SELECT count(*) FROM page)::int, tx_id, position FROM page
ORDER BY tx_id DESC, position DESC
LIMIT 1`
	var (
		n   int
		end Cursor
	)
	err := pg.InTx(ctx, s.pool, auditorActor, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, q, append([]any{after.TxID, after.Position, limit}, args...)...).
			Scan(&n, &end.TxID, &end.Position)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return after, 0, nil
	}
	if err != nil {
		return after, 0, fmt.Errorf("feed page: %w", err)
	}
	return end, n, nil
}

// ReadFeedRange returns up to limit events after the cursor after, up to
// and including upTo, whose type is one of types (every type when types is
// empty), in feed order. It does not look at the horizon: upTo must be a
// cursor the feed has already shown (FeedPageEnd's, or one ReadFeed
// returned), below which nothing can appear any more.
func (s *Store) ReadFeedRange(ctx context.Context, after, upTo Cursor, types []string, limit int) ([]Record, error) {
	if limit <= 0 || !after.Less(upTo) {
		return nil, nil
	}
	filter, args := typeFilter(types, 6)
	q := `SELECT position, tx_id, event_id, stream_type, stream_id, stream_version, event_type,
       schema_version, occurred_at, recorded_at, metadata, payload, prev_hash, hash
FROM events
WHERE (tx_id, position) > ($1::xid8, $2::bigint)
  AND (tx_id, position) <= ($3::xid8, $4::bigint)` + filter + `
ORDER BY tx_id, position
LIMIT $5`
	var out []Record
	err := pg.InTx(ctx, s.pool, auditorActor, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, q, append([]any{after.TxID, after.Position, upTo.TxID, upTo.Position, limit}, args...)...)
		if err != nil {
			return err
		}
		evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (db.Event, error) {
			var e db.Event
			err := r.Scan(&e.Position, &e.TxID, &e.EventID, &e.StreamType, &e.StreamID, &e.StreamVersion, &e.EventType,
				&e.SchemaVersion, &e.OccurredAt, &e.RecordedAt, &e.Metadata, &e.Payload, &e.PrevHash, &e.Hash)
			return e, err
		})
		if err != nil {
			return err
		}
		out = make([]Record, len(evs))
		for i, e := range evs {
			out[i] = recordFromRow(e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read feed range: %w", err)
	}
	return out, nil
}

// typeFilter returns the SQL condition keeping only types (none when types
// is empty; the query then has no parameter to plan around) as parameter
// $n, and its argument.
func typeFilter(types []string, n int) (string, []any) {
	if len(types) == 0 {
		return "", nil
	}
	return fmt.Sprintf("\n      AND event_type = ANY($%d::text[])", n), []any{types}
}
