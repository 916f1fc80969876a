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

// Lease is a named single-writer lease in the leases table. The relay, each
// projection and each background worker run under one, so across all nodes
// exactly one process does that work at a time. A lease lives for its TTL
// and is renewed in short transactions; a crashed holder's lease expires and
// another node takes over.
//
// A Lease value is not safe for concurrent use; Run owns it.
type Lease struct {
	store  *Store
	name   string
	holder string
	ttl    time.Duration
}

// DefaultLeaseTTL is how long a lease outlives its last renewal.
const DefaultLeaseTTL = 10 * time.Second

// Lease returns the lease name for holder (a string unique to this process,
// e.g. hostname:pid:random). ttl ≤ 0 means DefaultLeaseTTL.
func (s *Store) Lease(name, holder string, ttl time.Duration) *Lease {
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	return &Lease{store: s, name: name, holder: holder, ttl: ttl}
}

// Name returns the lease's name.
func (l *Lease) Name() string { return l.name }

// Holder returns the identity this process holds leases under.
func (l *Lease) Holder() string { return l.holder }

// TryAcquire takes or renews the lease. It reports whether this holder now
// holds it and until when.
func (l *Lease) TryAcquire(ctx context.Context) (bool, time.Time, error) {
	var (
		held    bool
		expires time.Time
	)
	err := pg.InTx(ctx, l.store.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		exp, err := db.New(tx).LeaseAcquire(ctx, db.LeaseAcquireParams{Name: l.name, Holder: l.holder, TtlSeconds: l.ttl.Seconds()})
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		held, expires = true, exp
		return nil
	})
	if err != nil {
		return false, time.Time{}, fmt.Errorf("lease %s: %w", l.name, err)
	}
	return held, expires, nil
}

// Release gives the lease up if this holder has it.
func (l *Lease) Release(ctx context.Context) error {
	return pg.InTx(ctx, l.store.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		return db.New(tx).LeaseRelease(ctx, db.LeaseReleaseParams{Name: l.name, Holder: l.holder})
	})
}

// HeldIn reports, inside a caller's transaction, whether this holder still
// holds the lease: a writer checks it in the transaction that applies its
// work, so a holder that lost its lease cannot commit.
func (l *Lease) HeldIn(ctx context.Context, tx pgx.Tx) (bool, error) {
	return db.New(tx).LeaseHeld(ctx, db.LeaseHeldParams{Name: l.name, Holder: l.holder})
}

// Run waits until it holds the lease, then runs work with a context that is
// cancelled as soon as the lease cannot be renewed, renewing every third of
// the TTL. When work returns, or the lease is lost, it goes back to waiting;
// it returns when ctx ends (releasing the lease) or work returns a
// non-retryable error. declined is called once each time another holder is
// found, so the caller can log why it is idle.
func (l *Lease) Run(ctx context.Context, work func(ctx context.Context) error, declined func(holder string)) error {
	poll := l.ttl / 3
	toldDeclined := false
	for {
		held, _, err := l.TryAcquire(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil && held {
			toldDeclined = false
			err = l.hold(ctx, work)
			if ctx.Err() != nil {
				rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = l.Release(rctx)
				cancel()
				return nil
			}
			if err != nil {
				return err
			}
			continue
		}
		if err == nil && !held && !toldDeclined && declined != nil {
			declined(l.currentHolder(ctx))
			toldDeclined = true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
	}
}

// hold runs work while renewing the lease.
func (l *Lease) hold(ctx context.Context, work func(ctx context.Context) error) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- work(wctx) }()
	tick := time.NewTicker(l.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		case <-tick.C:
			held, _, err := l.TryAcquire(ctx)
			if err != nil || !held {
				// Lost (or unsure): stop the work before anyone else
				// can take over after the TTL.
				cancel()
				<-done
				return nil
			}
		}
	}
}

func (l *Lease) currentHolder(ctx context.Context) string {
	var holder string
	_ = pg.InTx(ctx, l.store.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		rows, err := db.New(tx).LeaseList(ctx)
		for _, r := range rows {
			if r.Name == l.name {
				holder = r.Holder
			}
		}
		return err
	})
	return holder
}
