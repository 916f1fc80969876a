package projections

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// errLeaseLost means the transaction found that this holder no longer
// holds the projection's lease; the batch was rolled back.
var errLeaseLost = errors.New("projections: lease lost")

// poisonError is an event a projection cannot decode or apply.
type poisonError struct {
	index int // in the batch
	rec   eventstore.Record
	err   error
}

func (e *poisonError) Error() string {
	return fmt.Sprintf("%s event %s at %s: %v", e.rec.EventType, e.rec.EventID, e.rec.Cursor, e.err)
}

func (e *poisonError) Unwrap() error { return e.err }

// applier applies batches of feed events to one projection's tables: the
// live ones for the runner, the shadow ones for a rebuild.
type applier struct {
	store  *eventstore.Store
	proj   Projection
	lease  *eventstore.Lease
	tables map[string]string
	types  map[string]bool // nil: every type
}

func newApplier(store *eventstore.Store, p Projection, lease *eventstore.Lease, suffix string) *applier {
	a := &applier{store: store, proj: p, lease: lease, tables: tableMap(p, suffix)}
	if ts := p.EventTypes(); len(ts) > 0 {
		a.types = map[string]bool{}
		for _, t := range ts {
			a.types[t] = true
		}
	}
	return a
}

// handlesAny reports whether any of recs has a type the projection
// handles.
func (a *applier) handlesAny(recs []eventstore.Record) bool {
	if a.types == nil {
		return true
	}
	for _, r := range recs {
		if a.types[r.EventType] {
			return true
		}
	}
	return false
}

// apply applies recs, which follow the cursor after in the feed without a
// gap, in one transaction as mana_projector: it checks that this holder
// still holds the lease, passes over the events an operator skipped and
// those of types the projection does not handle, applies the rest in feed
// order, runs finish (the runner's checkpoint compare-and-set) and commits.
// It returns how many events it applied.
//
// An event that fails to decode or apply comes back as a *poisonError with
// its index in recs; nothing is committed then.
func (a *applier) apply(ctx context.Context, after eventstore.Cursor, recs []eventstore.Record,
	finish func(ctx context.Context, tx pgx.Tx) error) (int, error) {
	last := recs[len(recs)-1].Cursor
	var (
		todo []eventstore.Record
		idx  []int
	)
	for i, r := range recs {
		if a.types != nil && !a.types[r.EventType] {
			continue
		}
		todo = append(todo, r)
		idx = append(idx, i)
	}
	// Decoding opens personal fields in its own short transaction; doing
	// it before this batch's transaction keeps one connection per batch.
	decoded, idx, err := a.decode(ctx, after, todo, idx)
	if err != nil {
		return 0, err
	}

	tx, err := pg.Begin(ctx, a.store.Pool(), asProjector, pgx.TxOptions{})
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	held, err := a.lease.HeldIn(ctx, tx)
	if err != nil {
		return 0, fmt.Errorf("check lease: %w", err)
	}
	if !held {
		return 0, errLeaseLost
	}
	// Skips are read in the batch's transaction: one more statement, not
	// one more transaction, per batch.
	skips, err := loadSkipsIn(ctx, tx, a.proj.Name(), after, last)
	if err != nil {
		return 0, err
	}
	var (
		evs    []eventstore.Decoded
		evsIdx []int
	)
	for i, ev := range decoded {
		if !skips[ev.Cursor] {
			evs, evsIdx = append(evs, ev), append(evsIdx, idx[i])
		}
	}
	if err := a.applyAll(ctx, tx, evs, evsIdx); err != nil {
		return 0, err
	}
	if finish != nil {
		if err := finish(ctx, tx); err != nil {
			return 0, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	return len(evs), nil
}

// applyAll applies evs (at batch indexes idx) in tx: with the projection's
// ApplyBatch under a savepoint when it has one and there is more than one
// event, else, or when that fails, one event at a time, which names the
// poison event.
func (a *applier) applyAll(ctx context.Context, tx pgx.Tx, evs []eventstore.Decoded, idx []int) error {
	if ba, ok := a.proj.(BatchApplier); ok && len(evs) > 1 {
		sp, err := tx.Begin(ctx)
		if err != nil {
			return fmt.Errorf("savepoint: %w", err)
		}
		err = safeApplyBatch(ctx, ba, &Writer{Tx: sp, tables: a.tables}, evs)
		if err == nil {
			if err := sp.Commit(ctx); err != nil {
				return fmt.Errorf("release savepoint: %w", err)
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := sp.Rollback(ctx); err != nil {
			return fmt.Errorf("rollback to savepoint: %w", err)
		}
	}
	w := &Writer{Tx: tx, tables: a.tables}
	for i, ev := range evs {
		if err := safeApply(ctx, a.proj, w, ev); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return &poisonError{index: idx[i], rec: ev.Record, err: err}
		}
	}
	return nil
}

// decode decodes recs (at batch indexes idx, following the cursor after)
// and returns them with their batch indexes. When the batch fails to
// decode it decodes one event at a time to find the culprit: an event an
// operator skipped is left out (it is never applied), any other becomes a
// poison event; the events before it decode on their own.
func (a *applier) decode(ctx context.Context, after eventstore.Cursor, recs []eventstore.Record, idx []int) ([]eventstore.Decoded, []int, error) {
	if len(recs) == 0 {
		return nil, nil, nil
	}
	out, err := a.store.Decode(ctx, recs)
	if err == nil {
		return out, idx, nil
	}
	if ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	skips, err := loadSkips(ctx, a.store.Pool(), a.proj.Name(), after, recs[len(recs)-1].Cursor)
	if err != nil {
		return nil, nil, err
	}
	out = out[:0]
	var kept []int
	for i, r := range recs {
		if skips[r.Cursor] {
			continue
		}
		d, err := a.store.Decode(ctx, recs[i:i+1])
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			return nil, nil, &poisonError{index: idx[i], rec: r, err: fmt.Errorf("decode: %w", err)}
		}
		out = append(out, d[0])
		kept = append(kept, idx[i])
	}
	return out, kept, nil
}

// safeApplyBatch runs ApplyBatch, turning a panic into an error: the batch
// is then applied event by event.
func safeApplyBatch(ctx context.Context, ba BatchApplier, w *Writer, evs []eventstore.Decoded) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return ba.ApplyBatch(ctx, w, evs)
}

// safeApply runs Apply, turning a panic into an error so a bad event halts
// its projection instead of the process.
func safeApply(ctx context.Context, p Projection, w *Writer, ev eventstore.Decoded) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return p.Apply(ctx, w, ev)
}
