package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
)

// tailWait bounds every wait of the tail tests.
const tailWait = 30 * time.Second

// lineSink collects what a command writes as complete lines; safe for
// concurrent use (the command writes while the test reads).
type lineSink struct {
	mu      sync.Mutex
	all     bytes.Buffer
	partial []byte
	lines   []string
}

func (w *lineSink) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all.Write(p)
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.lines = append(w.lines, string(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

// Lines returns a copy of the complete lines written so far.
func (w *lineSink) Lines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.lines...)
}

func (w *lineSink) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

// tailRun is one `mana events tail` running in a goroutine of the test.
type tailRun struct {
	name           string
	stdout, stderr *lineSink
	cancel         context.CancelFunc
	done           chan int
	once           sync.Once
	code           int
}

func startTail(t *testing.T, vars map[string]string, args ...string) *tailRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tr := &tailRun{name: strings.Join(append([]string{"events", "tail"}, args...), " "),
		stdout: &lineSink{}, stderr: &lineSink{}, cancel: cancel, done: make(chan int, 1)}
	go func() {
		tr.done <- run(ctx, append([]string{"events", "tail"}, args...), envOf(vars), tr.stdout, tr.stderr)
	}()
	t.Cleanup(func() {
		tr.stop(t)
		if t.Failed() {
			t.Logf("%s stdout:\n%s\nstderr:\n%s", tr.name, tr.stdout, tr.stderr)
		}
	})
	return tr
}

// stop cancels the tail (SIGINT) and returns its exit code, waiting at
// most tailWait; safe to call twice.
func (tr *tailRun) stop(t *testing.T) int {
	t.Helper()
	tr.cancel()
	tr.once.Do(func() {
		select {
		case tr.code = <-tr.done:
		case <-time.After(tailWait):
			tr.code = -1
			t.Errorf("%s did not return within %v of cancellation", tr.name, tailWait)
		}
	})
	return tr.code
}

// events decodes every line printed so far.
func (tr *tailRun) events(t *testing.T) []eventstore.EventLine {
	t.Helper()
	var out []eventstore.EventLine
	for _, l := range tr.stdout.Lines() {
		var e eventstore.EventLine
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("%s printed %q, not an event: %v", tr.name, l, err)
		}
		out = append(out, e)
	}
	return out
}

// waitEvents waits until the tail printed at least n events, failing the
// test after tailWait or when the tail exits.
func (tr *tailRun) waitEvents(t *testing.T, n int) []eventstore.EventLine {
	t.Helper()
	deadline := time.Now().Add(tailWait)
	for {
		if evs := tr.events(t); len(evs) >= n {
			return evs
		}
		select {
		case code := <-tr.done:
			tr.once.Do(func() { tr.code = code })
			t.Fatalf("%s exited with %d while waiting for %d events", tr.name, code, n)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s printed %d events within %v, want %d", tr.name, len(tr.events(t)), tailWait, n)
		}
	}
}

// live makes sure the tail has taken its starting point: a tail without
// --from starts at the feed head, which it reads once after connecting,
// and nothing tells when. It appends probes until one is printed and
// returns the probes printed so far, which are a suffix of those appended.
func (tr *tailRun) live(t *testing.T, probe func() eventstore.Record) []eventstore.EventLine {
	t.Helper()
	var probes []eventstore.Record
	deadline := time.Now().Add(tailWait)
	for {
		p := probe()
		probes = append(probes, p)
		seen := time.Now().Add(500 * time.Millisecond)
		for time.Now().Before(seen) {
			evs := tr.events(t)
			if len(evs) > 0 && evs[len(evs)-1].EventID == p.EventID {
				// Every line is a probe: the newest ones, in order.
				if len(evs) > len(probes) {
					t.Fatalf("%s printed %d events for %d probes: %+v", tr.name, len(evs), len(probes), evs)
				}
				tail := probes[len(probes)-len(evs):]
				for i, e := range evs {
					if e.EventID != tail[i].EventID || e.Cursor != tail[i].Cursor.String() {
						t.Fatalf("%s printed %+v before the probes, want only the probes %v", tr.name, evs, probes)
					}
				}
				return evs
			}
			time.Sleep(10 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s printed none of %d probes within %v", tr.name, len(probes), tailWait)
		}
	}
}

// appendEvent appends ev to a stream of its own as one command and returns
// the record.
func appendEvent(t *testing.T, db *topoDB, streamType, streamID string, ev domain.Event, users ...uuid.UUID) eventstore.Record {
	t.Helper()
	ctx, cancel := ctxOf(t)
	defer cancel()
	var recs []eventstore.Record
	cmd := eventstore.Command{Name: "test.tail", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem},
		Metadata: domain.Metadata{Actor: domain.SystemActor}}
	_, err := db.store.Execute(ctx, cmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		var err error
		recs, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: streamType, StreamID: streamID,
			ExpectedVersion: eventstore.AnyVersion, Events: []domain.Event{ev}, Users: users})
		return domain.Receipt{Status: http.StatusCreated}, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Fatalf("append returned %d records", len(recs))
	}
	return recs[0]
}

func appendPackage(t *testing.T, db *topoDB, name string) eventstore.Record {
	t.Helper()
	p := &domain.PackageCreated{PackageID: uuid.New(), Name: name, Credits: 100, PriceCents: 199, Currency: "eur", SortOrder: 50, Active: true}
	return appendEvent(t, db, domain.StreamPackage, p.PackageID.String(), p)
}

func appendUser(t *testing.T, db *topoDB, email string) eventstore.Record {
	t.Helper()
	id := uuid.New()
	return appendEvent(t, db, domain.StreamUser, id.String(), &domain.UserRegistered{
		UserID: id, Email: email, Name: "Tail User", Role: "user", RegisteredAt: time.Now().UTC().Truncate(time.Microsecond),
	}, id)
}

// wantLines fails unless got are the events of recs, in order.
func wantLines(t *testing.T, what string, got []eventstore.EventLine, recs []eventstore.Record) {
	t.Helper()
	if len(got) != len(recs) {
		t.Fatalf("%s: %d events printed, want %d", what, len(got), len(recs))
	}
	for i, r := range recs {
		g := got[i]
		if g.EventID != r.EventID || g.Cursor != r.Cursor.String() || g.EventType != r.EventType ||
			g.StreamType != r.StreamType || g.StreamID != r.StreamID || g.Hash == "" || len(g.Payload) == 0 {
			t.Errorf("%s: event %d printed %+v, want event %s (%s %s/%s) at %s", what, i, g, r.EventID, r.EventType, r.StreamType, r.StreamID, r.Cursor)
		}
	}
}

// TestEventsTail: `events tail` follows the log from the moment it starts
// (events already in the log are not printed), prints each new event once,
// in feed order, filters with --types and exits 0 when interrupted.
func TestEventsTail(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)
	dataDir := t.TempDir()
	vars := map[string]string{"DATABASE_URL": dsn, "DATA_DIR": dataDir}
	if r := runCmd(t, vars, "migrate"); r.code != 0 {
		t.Fatalf("migrate: %d %s", r.code, r.stderr)
	}
	db := openTopoDB(t, dsn, dataDir)
	seeded := map[string]bool{}
	rows, err := db.pool.Query(t.Context(), `SELECT event_id::text FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		seeded[id] = true
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if len(seeded) != len(domain.DefaultPackages()) {
		t.Fatalf("%d events after migrate, want the %d seeded packages", len(seeded), len(domain.DefaultPackages()))
	}

	t.Run("all", func(t *testing.T) {
		tr := startTail(t, vars)
		n := 0
		probes := tr.live(t, func() eventstore.Record {
			n++
			return appendPackage(t, db, fmt.Sprintf("tail-probe-%d", n))
		})
		var recs []eventstore.Record
		for i := range 3 {
			recs = append(recs, appendPackage(t, db, fmt.Sprintf("tail-%d", i)))
		}
		evs := tr.waitEvents(t, len(probes)+3)
		wantLines(t, "tail", evs[len(probes):], recs)
		for _, e := range evs {
			if seeded[e.EventID.String()] {
				t.Errorf("tail printed %s, which was in the log before it started", e.EventID)
			}
		}
		if code := tr.stop(t); code != 0 {
			t.Errorf("tail exited with %d after cancellation, want 0; stderr %q", code, tr.stderr)
		}
		// Nothing more after the three, and nothing on stderr.
		if got := len(tr.events(t)); got != len(probes)+3 {
			t.Errorf("tail printed %d events, want %d", got, len(probes)+3)
		}
		if s := tr.stderr.String(); s != "" {
			t.Errorf("tail wrote to stderr: %q", s)
		}
	})

	// Events committed before the tail started stay unprinted even when
	// the feed cannot show them yet: a transaction in flight anywhere in
	// the cluster holds the feed's horizon below them while the tail reads
	// the feed head.
	t.Run("horizon held back", func(t *testing.T) {
		dsn := pgtest.NewDB(t)
		dataDir := t.TempDir()
		vars := map[string]string{"DATABASE_URL": dsn, "DATA_DIR": dataDir}
		ctx, cancel := context.WithTimeout(t.Context(), tailWait)
		defer cancel()
		holder := connect(t, dsn)
		held, err := holder.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Rollback(context.Background())
		var xid string
		if err := held.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
			t.Fatal(err)
		}
		// Seeded after the held transaction took its id: committed, but
		// above the horizon until it ends.
		if r := runCmd(t, vars, "migrate"); r.code != 0 {
			t.Fatalf("migrate: %d %s", r.code, r.stderr)
		}
		tr := startTail(t, vars)
		// The tail's first transaction is its read of the feed head; once
		// a session of the tail has committed one, the head was read with
		// the horizon held.
		watch := connect(t, dsn)
		topoUntil(t, "the tail to read the feed head", func() bool {
			var n int
			if err := watch.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'mana' AND state = 'idle' AND query = 'commit'`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n > 0
		})
		if err := held.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		db := openTopoDB(t, dsn, dataDir)
		n := 0
		probes := tr.live(t, func() eventstore.Record {
			n++
			return appendPackage(t, db, fmt.Sprintf("tail-held-probe-%d", n))
		})
		rec := appendPackage(t, db, "tail-held")
		evs := tr.waitEvents(t, len(probes)+1)
		wantLines(t, "tail after the horizon moved", evs[len(probes):], []eventstore.Record{rec})
		if code := tr.stop(t); code != 0 {
			t.Errorf("tail exited with %d after cancellation, want 0; stderr %q", code, tr.stderr)
		}
		t.Logf("held transaction %s", xid)
	})

	t.Run("types", func(t *testing.T) {
		tr := startTail(t, vars, "--types", "user.registered")
		n := 0
		probes := tr.live(t, func() eventstore.Record {
			n++
			return appendUser(t, db, fmt.Sprintf("probe%d.%s@example.com", n, uuid.NewString()[:8]))
		})
		// Interleaved: only the users are printed, in order. The last
		// user follows every package in the feed, so once it is printed
		// every package has been passed over.
		var users []eventstore.Record
		email := "tail.secret." + uuid.NewString()[:8] + "@example.com"
		appendPackage(t, db, "tail-filtered-0")
		users = append(users, appendUser(t, db, email))
		appendPackage(t, db, "tail-filtered-1")
		appendPackage(t, db, "tail-filtered-2")
		users = append(users, appendUser(t, db, "tail.second."+uuid.NewString()[:8]+"@example.com"))
		evs := tr.waitEvents(t, len(probes)+2)
		wantLines(t, "tail --types user.registered", evs[len(probes):], users)
		if code := tr.stop(t); code != 0 {
			t.Errorf("tail --types exited with %d after cancellation, want 0; stderr %q", code, tr.stderr)
		}
		for _, e := range tr.events(t) {
			if e.EventType != "user.registered" {
				t.Errorf("tail --types user.registered printed %s %s", e.EventType, e.EventID)
			}
		}
		// Personal data stays sealed in what tail prints.
		if out := tr.stdout.String(); strings.Contains(out, email) || strings.Contains(out, "Tail User") {
			t.Errorf("tail printed personal data in clear")
		}
	})
}
