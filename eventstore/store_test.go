package eventstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

func TestEventsAreAppendOnlyEvenForTheConnectionUser(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if _, err := e.appendOne(t, "package", uuid.NewString(), 0, pkg("a")); err != nil {
		t.Fatal(err)
	}
	var super bool
	if err := e.pool.QueryRow(ctxT(t), "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&super); err != nil {
		t.Fatal(err)
	}
	t.Logf("connection user is superuser: %v", super)
	for _, stmt := range []string{
		"UPDATE events SET payload = '{}'",
		"DELETE FROM events",
		"TRUNCATE events",
	} {
		_, err := e.pool.Exec(ctxT(t), stmt)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("%s as the connection user: err = %v, want insufficient_privilege from the trigger", stmt, err)
		}
	}
	// The service's roles lack the privilege in the first place.
	for _, role := range []pg.Role{pg.RoleApp, pg.RoleProjector, pg.RoleAuditor} {
		for _, stmt := range []string{"UPDATE events SET payload = '{}'", "DELETE FROM events"} {
			err := pg.InTx(ctxT(t), e.pool, pg.Actor{Role: role, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
				_, err := tx.Exec(ctxT(t), stmt)
				return err
			})
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
				t.Errorf("%s as %s: err = %v, want insufficient_privilege", stmt, role, err)
			}
		}
	}
	if n := e.count(t, "SELECT count(*) FROM events WHERE payload <> '{}'"); n == 0 {
		t.Fatal("events were changed")
	}
}

// TestEventCursorGuard: an event's tx_id and position are the database's to
// assign. The service's own role (and the connection user) cannot insert
// an event with an old tx_id, which would sort before cursors readers have
// passed, nor with a position of its choosing; an ordinary append, a
// multi-row one included, still works.
func TestEventCursorGuard(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	recs, err := e.appendOne(t, "package", uuid.NewString(), 0, pkg("a"))
	if err != nil {
		t.Fatal(err)
	}
	old := recs[0].Cursor
	insert := func(columns, values string) string {
		return `INSERT INTO events (` + columns + `event_id, stream_type, stream_id, stream_version, event_type,
			schema_version, occurred_at, metadata, payload, prev_hash, hash) OVERRIDING SYSTEM VALUE
			VALUES (` + values + `gen_random_uuid(), 'package', gen_random_uuid()::text, 1, 'package.created', 1, now(), '{}', '{}',
			decode(repeat('00', 32), 'hex'), decode(repeat('11', 32), 'hex'))`
	}
	forged := map[string]string{
		"an old tx_id":              insert("tx_id, ", fmt.Sprintf("'%d'::xid8, ", old.TxID)),
		"an old tx_id and position": insert("tx_id, position, ", fmt.Sprintf("'%d'::xid8, %d, ", old.TxID, old.Position-1)),
		"a position ahead":          insert("position, ", "(SELECT max(position) + 1000 FROM events), "),
	}
	for what, stmt := range forged {
		for _, role := range []pg.Role{pg.RoleApp, ""} {
			var err error
			if role == "" {
				_, err = e.pool.Exec(ctxT(t), stmt)
			} else {
				err = pg.InTx(ctxT(t), e.pool, pg.Actor{Role: role, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctxT(t), stmt)
					return err
				})
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || (pgErr.Code != "42501" && pgErr.Code != "55000") {
				t.Errorf("event with %s as %q: err = %v, want refused", what, role, err)
			}
		}
	}
	if n := e.count(t, "SELECT count(*) FROM events"); n != 1 {
		t.Errorf("events holds %d rows after the forgeries, want the 1 appended", n)
	}
	// Ordinary appends, several rows in one statement, pass the guard.
	if _, err := e.appendOne(t, "package", uuid.NewString(), 0, pkg("b"), pkg("c"), pkg("d")); err != nil {
		t.Fatalf("append after the guard: %v", err)
	}
}

func TestConcurrentAppendsRetryTheDecision(t *testing.T) {
	t.Parallel()
	const writers = 20
	// Every round of conflicts commits one writer, so writers attempts
	// let each one through however unlucky; the default bound (BUSY after
	// 10) is tested on its own.
	e := newEnv(t, func(o *eventstore.Options) { o.MaxAttempts = writers })
	stream := uuid.NewString()
	var decisions atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	start := make(chan struct{})
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := e.store.Execute(ctxT(t), systemCmd("test.increment"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
				decisions.Add(1)
				_, version, err := tx.Load(ctx, "package", stream, 0)
				if err != nil {
					return domain.Receipt{}, err
				}
				_, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: "package", StreamID: stream, ExpectedVersion: version, Events: []domain.Event{pkg("p")}})
				return domain.Receipt{Status: http.StatusCreated}, err
			})
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("append: %v", err)
		}
	}
	if n := e.count(t, "SELECT count(*) FROM events WHERE stream_id = $1", stream); n != writers {
		t.Fatalf("stream has %d events, want %d", n, writers)
	}
	if n := e.count(t, "SELECT count(DISTINCT stream_version) FROM events WHERE stream_id = $1 AND stream_version BETWEEN 1 AND $2", stream, writers); n != writers {
		t.Fatalf("versions are not 1..%d", writers)
	}
	if decisions.Load() <= writers {
		t.Logf("no conflicts happened (decisions=%d); the race was not exercised", decisions.Load())
	}
	if c := metricSum(t, e, "mana_append_conflicts_total"); int64(c) != decisions.Load()-writers {
		t.Errorf("conflict metric = %v, want %d", c, decisions.Load()-writers)
	}
	if _, brk, err := e.store.VerifyChains(ctxT(t)); err != nil || brk != nil {
		t.Fatalf("chain after concurrent appends: %v %v", brk, err)
	}
}

func TestRetriesAreBoundedAndEndInBusy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *eventstore.Options) { o.MaxAttempts = 4 })
	stream := uuid.NewString()
	if _, err := e.appendOne(t, "package", stream, 0, pkg("a")); err != nil {
		t.Fatal(err)
	}
	var attempts int
	_, err := e.store.Execute(ctxT(t), systemCmd("test.stale"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		attempts++
		// A decision that always works from a stale version.
		_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: "package", StreamID: stream, ExpectedVersion: 0, Events: []domain.Event{pkg("b")}})
		return domain.Receipt{}, err
	})
	if code := domain.ErrorCode(err); code != domain.CodeBusy {
		t.Fatalf("err = %v, want BUSY", err)
	}
	var de *domain.Error
	if errors.As(err, &de) && de.RetryAfterSeconds <= 0 {
		t.Error("BUSY carries no Retry-After")
	}
	if attempts != 4 {
		t.Fatalf("decision ran %d times, want 4", attempts)
	}
	if n := e.count(t, "SELECT count(*) FROM events WHERE stream_id = $1", stream); n != 1 {
		t.Fatalf("stream has %d events, want 1", n)
	}
}

func TestMultiStreamAppendIsAtomic(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *eventstore.Options) { o.MaxAttempts = 1 })
	a, b := uuid.NewString(), uuid.NewString()
	if _, err := e.appendOne(t, "package", b, 0, pkg("b1")); err != nil {
		t.Fatal(err)
	}
	// Stream b is at version 1, so expecting 0 fails: stream a must not
	// keep its events either.
	_, err := e.store.Execute(ctxT(t), systemCmd("test.multi"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		_, err := tx.Append(ctx,
			eventstore.StreamAppend{StreamType: "package", StreamID: a, ExpectedVersion: 0, Events: []domain.Event{pkg("a1"), pkg("a2")}},
			eventstore.StreamAppend{StreamType: "package", StreamID: b, ExpectedVersion: 0, Events: []domain.Event{pkg("b1'")}},
		)
		return domain.Receipt{}, err
	})
	if domain.ErrorCode(err) != domain.CodeBusy {
		t.Fatalf("err = %v, want BUSY", err)
	}
	if n := e.count(t, "SELECT count(*) FROM events WHERE stream_id = $1", a); n != 0 {
		t.Fatalf("stream a kept %d events of a failed multi-stream append", n)
	}
	// And the successful case commits both streams in one transaction.
	var recs []eventstore.Record
	_, err = e.store.Execute(ctxT(t), systemCmd("test.multi"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		var err error
		recs, err = tx.Append(ctx,
			eventstore.StreamAppend{StreamType: "package", StreamID: a, ExpectedVersion: 0, Events: []domain.Event{pkg("a1"), pkg("a2")}},
			eventstore.StreamAppend{StreamType: "package", StreamID: b, ExpectedVersion: 1, Events: []domain.Event{pkg("b2")}},
		)
		return domain.Receipt{Status: 201}, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 || recs[0].TxID != recs[2].TxID || recs[2].StreamVersion != 2 {
		t.Fatalf("records = %+v", recs)
	}
	if !bytes.Equal(recs[1].PrevHash, recs[0].Hash) || !bytes.Equal(recs[0].PrevHash, eventstore.GenesisHash) {
		t.Fatal("hashes are not chained within the batch")
	}
}

func TestDecisionErrorLeavesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	stream := uuid.NewString()
	user := uuid.New()
	_, err := e.store.Execute(ctxT(t), systemCmd("test.reject"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		if err := tx.ClaimEmail(ctx, "x@example.com", user); err != nil {
			return domain.Receipt{}, err
		}
		if _, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: "package", StreamID: stream, Events: []domain.Event{pkg("a")}}); err != nil {
			return domain.Receipt{}, err
		}
		return domain.Receipt{}, domain.Errorf(domain.CodeInsufficientCredits, "no")
	})
	if domain.ErrorCode(err) != domain.CodeInsufficientCredits {
		t.Fatalf("err = %v", err)
	}
	if n := e.count(t, "SELECT count(*) FROM events WHERE stream_id = $1", stream) + e.count(t, "SELECT count(*) FROM email_claims"); n != 0 {
		t.Fatal("a rejected command left rows behind")
	}
}
