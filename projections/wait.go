package projections

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// WaitFor polling bounds: the first re-read comes after minPoll, each next
// one after twice the previous delay, at most maxPoll.
const (
	minPoll = 2 * time.Millisecond
	maxPoll = 50 * time.Millisecond
)

// WaitFor waits until projection name's checkpoint is at or past c, which
// means the event at c (and every event before it in the feed) is applied,
// for at most timeout. It reports whether that happened; on timeout it
// returns false and no error. It reads the checkpoint as mana_app,
// re-reading after 2ms, then backing off to every 50ms. It returns an error
// only when ctx ends or the database fails.
//
// This is the read-your-writes wait of any node; Runner.WaitFor adds an
// in-process wake-up on the node that runs the projection.
func WaitFor(ctx context.Context, pool *pgxpool.Pool, name string, c eventstore.Cursor, timeout time.Duration) (bool, error) {
	return waitFor(ctx, pool, name, c, timeout, nil)
}

// WaitFor is the package-level WaitFor, woken at once when this runner
// advances name's checkpoint, and answering without a query when this
// runner has already committed a checkpoint at or past c. A projection this
// runner does not run is waited for by polling alone.
func (r *Runner) WaitFor(ctx context.Context, name string, c eventstore.Cursor, timeout time.Duration) (bool, error) {
	var w *watch
	if p := r.byName[name]; p != nil {
		w = p.watch
	}
	return waitFor(ctx, r.store.Pool(), name, c, timeout, w)
}

// Advanced returns a channel that is closed the next time this runner
// commits a checkpoint of projection name, with the checkpoint it knows
// now (the zero cursor before its first load). It returns nil for a
// projection the runner does not run.
func (r *Runner) Advanced(name string) (eventstore.Cursor, <-chan struct{}) {
	p := r.byName[name]
	if p == nil {
		return eventstore.Cursor{}, nil
	}
	return p.watch.state()
}

func waitFor(ctx context.Context, pool *pgxpool.Pool, name string, c eventstore.Cursor, timeout time.Duration, w *watch) (bool, error) {
	// tctx bounds the wait; ctx is kept apart so a timeout (false, nil)
	// is told from the caller giving up (an error).
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay, first := minPoll, true
	for {
		var wake <-chan struct{}
		if w != nil {
			var known eventstore.Cursor
			known, wake = w.state()
			if !known.Less(c) {
				return true, nil
			}
		}
		// The first read gets the caller's context, so even a timeout
		// shorter than a round trip answers whether c is applied now.
		qctx := tctx
		if first {
			qctx, first = ctx, false
		}
		cp, err := readCheckpointAsApp(qctx, pool, name)
		switch {
		case ctx.Err() != nil:
			return false, ctx.Err()
		case err == nil && !cp.Less(c):
			return true, nil
		case tctx.Err() != nil:
			return false, nil
		case err != nil:
			return false, err
		}
		t := time.NewTimer(delay)
		select {
		case <-tctx.Done():
			t.Stop()
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			return false, nil
		case <-wake:
		case <-t.C:
			delay = min(2*delay, maxPoll)
		}
		t.Stop()
	}
}

func readCheckpointAsApp(ctx context.Context, pool *pgxpool.Pool, name string) (eventstore.Cursor, error) {
	var c eventstore.Cursor
	err := pg.InTx(ctx, pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT tx_id, position FROM projection_checkpoints WHERE name = $1`, name).Scan(&c.TxID, &c.Position)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	if err != nil {
		return eventstore.Cursor{}, fmt.Errorf("read checkpoint of %s: %w", name, err)
	}
	return c, nil
}

// watch is a projection's last committed checkpoint in this process, with
// a channel closed on every change: a broadcast to waiters.
type watch struct {
	mu sync.Mutex
	c  eventstore.Cursor
	ch chan struct{}
}

func newWatch() *watch { return &watch{ch: make(chan struct{})} }

func (w *watch) state() (eventstore.Cursor, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.c, w.ch
}

func (w *watch) advance(c eventstore.Cursor) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.c = c
	close(w.ch)
	w.ch = make(chan struct{})
}
