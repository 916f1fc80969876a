package projections

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// ShadowSuffix names the table a rebuild fills: <table>_rebuild.
const ShadowSuffix = "_rebuild"

// Rebuild rebuilds projection p's tables from the whole feed, online, and
// returns the checkpoint the rebuilt tables are at. It is what `mana
// projections rebuild NAME` runs; holder identifies the rebuild in the
// leases table and must differ from every runner's.
//
//  1. It takes p's lease from whoever holds it (renewing it every third of
//     eventstore.DefaultLeaseTTL). The live projector finds the lease gone
//     in its next transaction, rolls back and waits; until the swap the
//     live tables keep serving reads, frozen at their checkpoint.
//  2. As the connection user (the tables' owner), it creates each shadow
//     table <table>_rebuild with CREATE TABLE … (LIKE <table> INCLUDING
//     ALL) and runs the table's Access SQL on it (grants, row-level
//     security, policies).
//  3. It applies the feed from its start into the shadow tables, in
//     batches of one transaction as mana_projector, exactly as the runner
//     would (skipping the events an operator skipped for p), until a read
//     reaches the head of the feed.
//  4. In one transaction it drops the live tables, renames the shadows
//     (and their indexes) to the live names and sets p's checkpoint to the
//     last event applied. Then it releases the lease; the live projector
//     takes it back and continues from that checkpoint.
//
// A poison event fails the rebuild (the error names it) and leaves the live
// tables as they were. Rebuild is not safe to run twice at once for the
// same projection: the second takes the lease and the first then fails.
func Rebuild(ctx context.Context, store *eventstore.Store, p Projection, holder string) (eventstore.Cursor, error) {
	if holder == "" {
		return eventstore.Cursor{}, errors.New("projections: rebuild needs a holder id")
	}
	name, pool := p.Name(), store.Pool()
	ttl := eventstore.DefaultLeaseTTL
	lease := store.Lease(LeaseName(name), holder, ttl)
	if err := seizeLease(ctx, pool, lease, ttl); err != nil {
		return eventstore.Cursor{}, fmt.Errorf("rebuild %s: %w", name, err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = lease.Release(rctx)
	}()
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopRenewing := keepLease(rctx, lease, ttl, cancel)
	defer stopRenewing()

	c, err := rebuild(rctx, store, p, lease)
	if err != nil {
		if rctx.Err() != nil && ctx.Err() == nil {
			err = context.Cause(rctx) // the lease was lost
		}
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer dcancel()
		if derr := dropShadows(dctx, pool, p, lease); derr != nil {
			err = errors.Join(err, derr)
		}
		return eventstore.Cursor{}, fmt.Errorf("rebuild %s: %w", name, err)
	}
	return c, nil
}

func rebuild(ctx context.Context, store *eventstore.Store, p Projection, lease *eventstore.Lease) (eventstore.Cursor, error) {
	pool := store.Pool()
	if err := createShadows(ctx, pool, p, lease); err != nil {
		return eventstore.Cursor{}, err
	}
	a := newApplier(store, p, lease, ShadowSuffix)
	var last *eventstore.Record
	cur := eventstore.Cursor{}
	for {
		recs, err := store.ReadFeed(ctx, cur, DefaultBatchSize)
		if err != nil {
			return eventstore.Cursor{}, err
		}
		if len(recs) > 0 {
			if _, err := a.apply(ctx, cur, recs, nil); err != nil {
				return eventstore.Cursor{}, err
			}
			last = &recs[len(recs)-1]
			cur = last.Cursor
		}
		// A short read reached the head of the feed. Events appended
		// after it are the live projector's, from the new checkpoint on.
		if len(recs) < DefaultBatchSize {
			break
		}
	}
	// The swap's DROP waits for the live tables' readers, and every reader
	// after it waits for the swap: so it waits briefly, and tries again.
	for attempt := 1; ; attempt++ {
		err := swap(ctx, pool, p, lease, last)
		if err == nil {
			return cur, nil
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55P03" || attempt == swapAttempts {
			return eventstore.Cursor{}, err
		}
		if !sleep(ctx, swapLockTimeout) {
			return eventstore.Cursor{}, ctx.Err()
		}
	}
}

// The swap waits at most swapLockTimeout for the live tables' locks, and
// gives up after swapAttempts tries.
const (
	swapLockTimeout = 2 * time.Second
	swapAttempts    = 5
)

// seizeLease makes lease's holder the holder of its lease now, whoever had
// it. The previous holder cannot commit another batch: its transactions
// check the lease, and the checkpoint compare-and-set catches one that
// checked just before.
func seizeLease(ctx context.Context, pool *pgxpool.Pool, lease *eventstore.Lease, ttl time.Duration) error {
	err := pg.InTx(ctx, pool, asProjector, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO leases (name, holder, acquired_at, expires_at)
VALUES ($1, $2, clock_timestamp(), clock_timestamp() + make_interval(secs => $3::float8))
ON CONFLICT (name) DO UPDATE
    SET holder = excluded.holder, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at`,
			lease.Name(), lease.Holder(), ttl.Seconds())
		return err
	})
	if err != nil {
		return fmt.Errorf("take lease %s: %w", lease.Name(), err)
	}
	return nil
}

// keepLease renews lease every third of ttl until stopped; when a renewal
// fails it cancels ctx with the reason.
func keepLease(ctx context.Context, lease *eventstore.Lease, ttl time.Duration, cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		tick := time.NewTicker(ttl / 3)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
				held, _, err := lease.TryAcquire(ctx)
				if err != nil || !held {
					cancel(fmt.Errorf("lost lease %s (err: %v)", lease.Name(), err))
					return
				}
			}
		}
	}()
	return func() { close(done); <-exited }
}

// ownerTx runs fn in a transaction as the connection user, which owns the
// read-model tables (it ran the migrations): only the owner may create,
// drop and rename them. It first locks the lease row and checks that
// lease's holder still holds it, so a rebuild that lost its lease never
// touches tables another rebuild now works on.
func ownerTx(ctx context.Context, pool *pgxpool.Pool, lease *eventstore.Lease, fn func(tx pgx.Tx) error) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT 1 FROM leases WHERE name = $1 FOR UPDATE`, lease.Name()); err != nil {
		return fmt.Errorf("lock lease: %w", err)
	}
	held, err := lease.HeldIn(ctx, tx)
	if err != nil {
		return fmt.Errorf("check lease: %w", err)
	}
	if !held {
		return errLeaseLost
	}
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func createShadows(ctx context.Context, pool *pgxpool.Pool, p Projection, lease *eventstore.Lease) error {
	return ownerTx(ctx, pool, lease, func(tx pgx.Tx) error {
		for _, t := range p.Tables() {
			live, shadow := pgx.Identifier{t.Name}.Sanitize(), pgx.Identifier{t.Name + ShadowSuffix}.Sanitize()
			// A shadow left by a failed rebuild goes first.
			if _, err := tx.Exec(ctx, `DROP TABLE IF EXISTS `+shadow); err != nil {
				return fmt.Errorf("drop old shadow of %s: %w", t.Name, err)
			}
			if _, err := tx.Exec(ctx, `CREATE TABLE `+shadow+` (LIKE `+live+` INCLUDING ALL)`); err != nil {
				return fmt.Errorf("create shadow of %s: %w", t.Name, err)
			}
			if t.Access != nil {
				if _, err := tx.Exec(ctx, t.Access(shadow)); err != nil {
					return fmt.Errorf("attach access to shadow of %s: %w", t.Name, err)
				}
			}
		}
		return nil
	})
}

func dropShadows(ctx context.Context, pool *pgxpool.Pool, p Projection, lease *eventstore.Lease) error {
	err := ownerTx(ctx, pool, lease, func(tx pgx.Tx) error {
		for _, t := range p.Tables() {
			if _, err := tx.Exec(ctx, `DROP TABLE IF EXISTS `+pgx.Identifier{t.Name + ShadowSuffix}.Sanitize()); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, errLeaseLost) {
		return nil // the shadows are someone else's now
	}
	if err != nil {
		return fmt.Errorf("drop shadow tables: %w", err)
	}
	return nil
}

// swap replaces the live tables with the shadows and sets the checkpoint
// to last (the start of the feed when nil), in one transaction. Readers of
// the live tables see the old rows until it commits.
func swap(ctx context.Context, pool *pgxpool.Pool, p Projection, lease *eventstore.Lease, last *eventstore.Record) error {
	return ownerTx(ctx, pool, lease, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, fmt.Sprintf(`SET LOCAL lock_timeout = %d`, swapLockTimeout.Milliseconds())); err != nil {
			return err
		}
		for _, t := range p.Tables() {
			live, shadow := pgx.Identifier{t.Name}.Sanitize(), pgx.Identifier{t.Name + ShadowSuffix}.Sanitize()
			liveIdx, err := indexes(ctx, tx, live)
			if err != nil {
				return err
			}
			shadowIdx, err := indexes(ctx, tx, shadow)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DROP TABLE `+live); err != nil {
				return fmt.Errorf("drop %s: %w", t.Name, err)
			}
			if _, err := tx.Exec(ctx, `ALTER TABLE `+shadow+` RENAME TO `+live); err != nil {
				return fmt.Errorf("rename shadow of %s: %w", t.Name, err)
			}
			// LIKE names the copied indexes after the shadow; give them
			// (and the constraints they back) the live names again, so
			// rebuilds do not drift the schema.
			for _, si := range shadowIdx {
				for j, li := range liveIdx {
					if li.def == si.def && li.name != "" {
						_, err := tx.Exec(ctx, `ALTER INDEX `+pgx.Identifier{si.name}.Sanitize()+` RENAME TO `+pgx.Identifier{li.name}.Sanitize())
						if err != nil {
							return fmt.Errorf("rename index %s: %w", li.name, err)
						}
						liveIdx[j].name = ""
						break
					}
				}
			}
		}
		var (
			c  eventstore.Cursor
			at *time.Time
		)
		if last != nil {
			c, at = last.Cursor, &last.OccurredAt
		}
		_, err := tx.Exec(ctx, `INSERT INTO projection_checkpoints (name, tx_id, position, applied_at, updated_at)
VALUES ($1, $2::xid8, $3, $4, clock_timestamp())
ON CONFLICT (name) DO UPDATE
    SET tx_id = excluded.tx_id, position = excluded.position, applied_at = excluded.applied_at,
        updated_at = excluded.updated_at`, p.Name(), c.TxID, c.Position, at)
		if err != nil {
			return fmt.Errorf("set checkpoint: %w", err)
		}
		return nil
	})
}

type index struct{ name, def string }

// indexes lists table's indexes with their definitions stripped of the
// index and table names, so a shadow's index matches the live one it
// copies.
func indexes(ctx context.Context, tx pgx.Tx, table string) ([]index, error) {
	rows, err := tx.Query(ctx, `SELECT c.relname,
       regexp_replace(pg_get_indexdef(i.indexrelid), '^(CREATE (UNIQUE )?INDEX )\S+ ON \S+ ', '\1ON ')
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = $1::text::regclass
ORDER BY c.relname`, table)
	if err != nil {
		return nil, fmt.Errorf("list indexes of %s: %w", table, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (index, error) {
		var ix index
		err := r.Scan(&ix.name, &ix.def)
		return ix, err
	})
	if err != nil {
		return nil, fmt.Errorf("list indexes of %s: %w", table, err)
	}
	return out, nil
}
