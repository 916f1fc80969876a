package projections

import (
	"context"
	"errors"

	"github.com/manacore/mana/eventstore"
)

// SetAfterCommit makes r call f after each batch commits and before the
// batch's messages are acked.
func SetAfterCommit(r *Runner, f func(name string, c eventstore.Cursor)) { r.afterCommit = f }

// ApplyBatch applies recs to projection name of r as one batch, as if the
// runner's checkpoint were from. It reports whether the batch failed
// because the stored checkpoint was not from, or because r's holder does not
// hold the lease.
func ApplyBatch(r *Runner, name string, from eventstore.Cursor, recs []eventstore.Record) (moved, leaseLost bool, err error) {
	p := r.byName[name]
	cp, err := loadCheckpoint(context.Background(), r.store.Pool(), name)
	if err != nil {
		return false, false, err
	}
	p.cp = cp
	p.cp.cursor, p.stored = from, from
	err = p.applyBatch(context.Background(), recs)
	return errors.Is(err, errCheckpointMoved), errors.Is(err, errLeaseLost), err
}
