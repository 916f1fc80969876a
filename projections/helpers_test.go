package projections_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
	"github.com/manacore/mana/projections"
)

// wait bounds every wait in these tests.
const wait = 30 * time.Second

// env is one test's database clone, event store and embedded JetStream.
type env struct {
	pool  *pgxpool.Pool
	store *eventstore.Store
	js    jetstream.JetStream
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pool := pgtest.NewPool(t)
	kek, idx := make([]byte, 32), make([]byte, 32)
	rand.Read(kek)
	rand.Read(idx)
	kr, err := keyring.New(kek, idx)
	if err != nil {
		t.Fatal(err)
	}
	store, err := eventstore.New(pool, eventstore.Options{Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := natsx.Connect(ctxT(t), natsx.Config{DataDir: t.TempDir(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	return &env{pool: pool, store: store, js: conn.JS}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*wait)
	t.Cleanup(cancel)
	return ctx
}

// testLogger writes the runner's log lines into the test log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// newRunner returns a runner of projs with a short lease TTL and its own
// metrics registry; mod adjusts the config.
func (e *env) newRunner(t *testing.T, holder string, projs []projections.Projection, mod func(*projections.Config)) (*projections.Runner, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := projections.Config{
		Store:        e.store,
		JetStream:    e.js,
		Projections:  projs,
		Holder:       holder,
		Logger:       testLogger(t).With("holder", holder),
		Registerer:   reg,
		LeaseTTL:     time.Second,
		PollInterval: 50 * time.Millisecond,
		AckWait:      time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	r, err := projections.NewRunner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, reg
}

// start runs r until the returned stop is called (or the test ends); stop
// waits, bounded, for Run to return.
func start(t *testing.T, r *projections.Runner) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("runner: %v", err)
				}
			case <-time.After(wait):
				t.Errorf("runner did not stop within %v", wait)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func systemCmd(name string) eventstore.Command {
	return eventstore.Command{
		Name:     name,
		Actor:    pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem},
		Metadata: domain.Metadata{Actor: domain.SystemActor, RequestID: "req-test"},
	}
}

// appendEvents appends evs to a stream in one command.
func (e *env) appendEvents(ctx context.Context, streamType, streamID string, evs ...domain.Event) ([]eventstore.Record, error) {
	var recs []eventstore.Record
	_, err := e.store.Execute(ctx, systemCmd("test.append"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		var err error
		recs, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: streamType, StreamID: streamID, ExpectedVersion: eventstore.AnyVersion, Events: evs})
		return domain.Receipt{Status: http.StatusCreated}, err
	})
	return recs, err
}

func newPackage(name string, order int) *domain.PackageCreated {
	return &domain.PackageCreated{PackageID: uuid.New(), Name: name, Credits: int64(100 * order), PriceCents: int64(100 * order), Currency: "eur", SortOrder: order, Active: true}
}

// appendPackages appends n package.created events, one command each, from
// workers goroutines at once, so commit order and position order differ.
func (e *env) appendPackages(t *testing.T, n, workers int) []*domain.PackageCreated {
	t.Helper()
	pkgs := make([]*domain.PackageCreated, n)
	for i := range pkgs {
		pkgs[i] = newPackage(fmt.Sprintf("pkg-%d", i), i%7)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				if _, err := e.appendEvents(ctxT(t), domain.StreamPackage, pkgs[i].PackageID.String(), pkgs[i]); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return pkgs
}

// register appends a user.registered.
func (e *env) register(t *testing.T, email, name string) (uuid.UUID, []eventstore.Record) {
	t.Helper()
	id := uuid.New()
	recs, err := e.appendEvents(ctxT(t), domain.StreamUser, id.String(), &domain.UserRegistered{
		UserID: id, Email: email, Name: name, Role: "user", RegisteredAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	})
	if err != nil {
		t.Fatal(err)
	}
	return id, recs
}

// erase shreds a user's data key and appends user.erased, as the service's
// erasure command does.
func (e *env) erase(t *testing.T, id uuid.UUID) []eventstore.Record {
	t.Helper()
	recs, err := e.eraseCtx(ctxT(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func (e *env) eraseCtx(ctx context.Context, id uuid.UUID) ([]eventstore.Record, error) {
	var recs []eventstore.Record
	_, err := e.store.Execute(ctx, systemCmd("test.erase"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		if err := tx.EraseSubject(ctx, id); err != nil {
			return domain.Receipt{}, err
		}
		var err error
		recs, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: id.String(),
			ExpectedVersion: eventstore.AnyVersion, Events: []domain.Event{&domain.UserErased{UserID: id, ErasedAt: time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)}}})
		return domain.Receipt{Status: http.StatusOK}, err
	})
	return recs, err
}

// feed returns the whole feed, in feed order, once it holds n events.
// Events show in the feed only below the cluster's snapshot horizon, so a
// just-committed event may wait for a transaction of a parallel test.
func (e *env) feed(t *testing.T, n int) []eventstore.Record {
	t.Helper()
	var out []eventstore.Record
	eventually(t, fmt.Sprintf("%d events in the feed", n), func() bool {
		out = e.readFeed(t)
		return len(out) >= n
	})
	if len(out) != n {
		t.Fatalf("feed has %d events, want %d", len(out), n)
	}
	return out
}

func (e *env) readFeed(t *testing.T) []eventstore.Record {
	t.Helper()
	var out []eventstore.Record
	c := eventstore.Cursor{}
	for {
		recs, err := e.store.ReadFeed(ctxT(t), c, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return out
		}
		out = append(out, recs...)
		c = recs[len(recs)-1].Cursor
	}
}

// publish publishes feed[i] for every i pick accepts, exactly as the relay
// does: subject mana.events.<type>, Nats-Msg-Id (the event id plus
// idSuffix, so a suffix defeats JetStream's duplicate window the way an
// old duplicate would), Mana-Cursor, Mana-Prev-Cursor (the previous event
// in the feed, "0-0" before the first), body the event's JSON line.
func (e *env) publish(t *testing.T, feed []eventstore.Record, pick func(i int) bool, idSuffix string) int {
	t.Helper()
	n := 0
	prev := eventstore.Cursor{}
	for i, r := range feed {
		if pick == nil || pick(i) {
			body, err := json.Marshal(r.Line())
			if err != nil {
				t.Fatal(err)
			}
			msg := &nats.Msg{Subject: natsx.SubjectPrefix + r.EventType, Data: body, Header: nats.Header{}}
			msg.Header.Set(eventstore.HeaderMsgID, r.EventID.String()+idSuffix)
			msg.Header.Set(eventstore.HeaderCursor, r.Cursor.String())
			msg.Header.Set(eventstore.HeaderPrevCursor, prev.String())
			if _, err := e.js.PublishMsg(ctxT(t), msg); err != nil {
				t.Fatal(err)
			}
			n++
		}
		prev = r.Cursor
	}
	return n
}

// consumerInfo returns the projection's JetStream consumer, waiting for
// the runner to declare it.
func (e *env) consumerInfo(t *testing.T, name string) *jetstream.ConsumerInfo {
	t.Helper()
	var info *jetstream.ConsumerInfo
	eventually(t, "consumer "+projections.ConsumerName(name)+" exists", func() bool {
		c, err := e.js.Consumer(ctxT(t), natsx.StreamName, projections.ConsumerName(name))
		if err != nil {
			return false
		}
		info, err = c.Info(ctxT(t))
		return err == nil
	})
	return info
}

// eventually polls cond (every 10ms) until it holds, failing the test
// after the wait bound.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", wait, what)
		}
		<-tick.C
	}
}

// waitApplied waits until projection name's checkpoint reaches c.
func (e *env) waitApplied(t *testing.T, name string, c eventstore.Cursor) {
	t.Helper()
	ok, err := projections.WaitFor(ctxT(t), e.pool, name, c, wait)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		st, _ := projections.Statuses(ctxT(t), e.pool, []projections.Projection{named(name)})
		t.Fatalf("%s did not reach %s within %v: %+v", name, c, wait, st)
	}
}

// named is a projection stand-in that only has a name, for Statuses.
type named string

func (n named) Name() string                                                       { return string(n) }
func (named) Tables() []projections.Table                                          { return nil }
func (named) EventTypes() []string                                                 { return nil }
func (named) Apply(context.Context, *projections.Writer, eventstore.Decoded) error { return nil }

func (e *env) checkpoint(t *testing.T, name string) eventstore.Cursor {
	t.Helper()
	st, err := projections.Statuses(ctxT(t), e.pool, []projections.Projection{named(name)})
	if err != nil {
		t.Fatal(err)
	}
	return st[0].Checkpoint
}

func (e *env) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := e.pool.QueryRow(ctxT(t), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// counter is a test projection that records every application of every
// event in its table applied_<name>: seq numbers the applications in the
// order they happened, applications counts them per event. A pure
// function of the events, so a rebuild reproduces it exactly.
type counter struct {
	name string
	// fail, when set, is asked before each application; an error makes
	// the event poison for this attempt. attempt counts from 1.
	fail func(ev eventstore.Decoded, attempt int) error

	mu       sync.Mutex
	attempts map[uuid.UUID]int
}

func newCounter(t *testing.T, e *env, name string) *counter {
	t.Helper()
	table := pgx.Identifier{"applied_" + name}.Sanitize()
	_, err := e.pool.Exec(ctxT(t), `CREATE TABLE `+table+` (
    event_id     uuid   PRIMARY KEY,
    tx_id        xid8   NOT NULL,
    position     bigint NOT NULL,
    seq          bigint NOT NULL UNIQUE,
    applications int    NOT NULL
);
GRANT SELECT, INSERT, UPDATE ON `+table+` TO mana_projector`)
	if err != nil {
		t.Fatal(err)
	}
	return &counter{name: name, attempts: map[uuid.UUID]int{}}
}

func (c *counter) Name() string { return c.name }

func (c *counter) Tables() []projections.Table {
	return []projections.Table{{Name: "applied_" + c.name, Access: func(t string) string {
		return `GRANT SELECT, INSERT, UPDATE ON ` + t + ` TO mana_projector`
	}}}
}

func (c *counter) EventTypes() []string { return nil }

func (c *counter) Apply(ctx context.Context, w *projections.Writer, ev eventstore.Decoded) error {
	if c.fail != nil {
		c.mu.Lock()
		c.attempts[ev.EventID]++
		n := c.attempts[ev.EventID]
		c.mu.Unlock()
		if err := c.fail(ev, n); err != nil {
			return err
		}
	}
	t := w.Table("applied_" + c.name)
	_, err := w.Exec(ctx, `INSERT INTO `+t+` AS a (event_id, tx_id, position, seq, applications)
VALUES ($1, $2::xid8, $3, (SELECT coalesce(max(seq), 0) + 1 FROM `+t+`), 1)
ON CONFLICT (event_id) DO UPDATE SET applications = a.applications + 1`, ev.EventID, ev.TxID, ev.Position)
	return err
}

// checkApplied checks that counter name applied exactly want, once each,
// in that order.
func (e *env) checkApplied(t *testing.T, name string, want []eventstore.Record) {
	t.Helper()
	rows, err := e.pool.Query(ctxT(t), `SELECT event_id, tx_id, position, seq, applications FROM `+
		pgx.Identifier{"applied_" + name}.Sanitize()+` ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		id           uuid.UUID
		c            eventstore.Cursor
		seq          int64
		applications int
	}
	var got []row
	var r row
	if _, err := pgx.ForEachRow(rows, []any{&r.id, &r.c.TxID, &r.c.Position, &r.seq, &r.applications}, func() error {
		got = append(got, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i, g := range got {
		if g.applications != 1 {
			t.Errorf("%s: event %s applied %d times", name, g.c, g.applications)
		}
		if g.seq != int64(i+1) {
			t.Errorf("%s: seq %d at row %d", name, g.seq, i)
		}
	}
	gotIDs := make([]uuid.UUID, len(got))
	for i, g := range got {
		gotIDs[i] = g.id
	}
	wantIDs := make([]uuid.UUID, len(want))
	for i, w := range want {
		wantIDs[i] = w.EventID
	}
	if !slices.Equal(gotIDs, wantIDs) {
		t.Fatalf("%s applied %d events, want %d in feed order;\n got %v\nwant %v", name, len(gotIDs), len(wantIDs), gotIDs, wantIDs)
	}
}

// metric returns the value of a counter or gauge series of reg.
func metric(t *testing.T, reg *prometheus.Registry, name, projection string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "projection" && l.GetValue() == projection {
					if c := m.GetCounter(); c != nil {
						return c.GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

var errRefused = errors.New("refused by test")
