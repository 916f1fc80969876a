package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
	"github.com/manacore/mana/projections"
)

// topoWait bounds each wait of the topology test. A lease changes hands
// within its TTL (10s by default) plus a renewal period; this leaves room.
const topoWait = 30 * time.Second

// topoServe is one `mana serve` running in a goroutine of the test, as a
// process of its own would.
type topoServe struct {
	name   string
	log    *logWriter
	cancel context.CancelFunc
	done   chan int
	addr   string

	once sync.Once
	code int
}

// startTopoServe runs `serve --port 0` with vars as its whole environment
// and waits until it listens.
func startTopoServe(t *testing.T, name string, vars map[string]string) *topoServe {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &topoServe{name: name, log: newLogWriter(), cancel: cancel, done: make(chan int, 1)}
	go func() {
		var stdout bytes.Buffer
		s.done <- run(ctx, []string{"serve", "--port", "0"}, envOf(vars), &stdout, s.log)
	}()
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("%s serve log:\n%s", name, s.log)
		}
	})
	select {
	case s.addr = <-s.log.addr:
	case code := <-s.done:
		s.once.Do(func() { s.code = code })
		t.Fatalf("%s serve exited with %d before listening; log:\n%s", name, code, s.log)
	case <-time.After(startupTimeout):
		t.Fatalf("%s serve did not listen within %v; log:\n%s", name, startupTimeout, s.log)
	}
	return s
}

// stop cancels serve (SIGTERM) and returns its exit code, waiting for it at
// most shutdownTimeout; safe to call twice.
func (s *topoServe) stop(t *testing.T) int {
	t.Helper()
	s.cancel()
	s.once.Do(func() {
		select {
		case s.code = <-s.done:
		case <-time.After(shutdownTimeout):
			s.code = -1
			t.Errorf("%s serve did not return within %v of cancellation", s.name, shutdownTimeout)
		}
	})
	return s.code
}

// url returns the loopback URL of path on s.
func (s *topoServe) url(t *testing.T, path string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(s.addr)
	if err != nil {
		t.Fatalf("%s listening addr %q: %v", s.name, s.addr, err)
	}
	return "http://" + net.JoinHostPort("127.0.0.1", port) + path
}

// records returns s's JSON log records whose msg is msg.
func (s *topoServe) records(msg string) []map[string]any {
	var out []map[string]any
	for _, l := range lines(s.log.String()) {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// attr returns attribute key of s's first log record msg.
func (s *topoServe) attr(t *testing.T, msg, key string) string {
	t.Helper()
	recs := s.records(msg)
	if len(recs) == 0 {
		t.Fatalf("%s logged no %q", s.name, msg)
	}
	v, _ := recs[0][key].(string)
	if v == "" {
		t.Fatalf("%s: %q has no %s: %v", s.name, msg, key, recs[0])
	}
	return v
}

// logged reports whether s logged msg with every attribute of attrs.
func (s *topoServe) logged(msg string, attrs map[string]string) bool {
	for _, rec := range s.records(msg) {
		ok := true
		for k, v := range attrs {
			if rec[k] != v {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// topoUntil polls cond every 20ms until it holds, failing the test after
// topoWait.
func topoUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(topoWait)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", topoWait, what)
		}
		<-tick.C
	}
}

// topoDB is the test's own view of the service's database: a pool and an
// event store with the dev keys the serve processes generated.
type topoDB struct {
	pool  *pgxpool.Pool
	store *eventstore.Store
}

func openTopoDB(t *testing.T, dsn, dataDir string) *topoDB {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), topoWait)
	defer cancel()
	pool, err := pg.Open(ctx, dsn, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	// The keys serve generated in DATA_DIR/secrets.
	store, err := openStore(&Config{DataDir: dataDir, Env: "development"}, pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &topoDB{pool: pool, store: store}
}

// ctx bounds one query of the test.
func ctxOf(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), topoWait)
}

// holders returns the holder of the relay lease and of each projection's.
func (d *topoDB) holders(t *testing.T) map[string]string {
	t.Helper()
	ctx, cancel := ctxOf(t)
	defer cancel()
	out := map[string]string{}
	rs, err := d.store.RelayStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out["relay"] = rs.Holder
	sts, err := projections.Statuses(ctx, d.pool, projections.All())
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range sts {
		out[projections.LeaseName(st.Name)] = st.Holder
	}
	return out
}

// heldBy reports whether holder holds the relay and every projection lease.
func (d *topoDB) heldBy(t *testing.T, holder string) bool {
	t.Helper()
	for _, h := range d.holders(t) {
		if h != holder {
			return false
		}
	}
	return true
}

// appendPackages appends n package.created events, each in a new stream.
func (d *topoDB) appendPackages(t *testing.T, n int) {
	t.Helper()
	ctx, cancel := ctxOf(t)
	defer cancel()
	for i := range n {
		p := &domain.PackageCreated{PackageID: uuid.New(), Name: fmt.Sprintf("topology-%d", i),
			Credits: 100, PriceCents: 199, Currency: "eur", SortOrder: 10 + i, Active: true}
		cmd := eventstore.Command{Name: "test.topology", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem},
			Metadata: domain.Metadata{Actor: domain.SystemActor}}
		_, err := d.store.Execute(ctx, cmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamPackage, StreamID: p.PackageID.String(),
				ExpectedVersion: 0, Events: []domain.Event{p}})
			return domain.Receipt{Status: http.StatusCreated}, err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func (d *topoDB) count(t *testing.T, sql string) int {
	t.Helper()
	ctx, cancel := ctxOf(t)
	defer cancel()
	var n int
	if err := d.pool.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// head returns the cursor of the feed's last event once the feed shows
// every committed event.
func (d *topoDB) head(t *testing.T) eventstore.Cursor {
	t.Helper()
	total := d.count(t, `SELECT count(*) FROM events`)
	var head eventstore.Cursor
	topoUntil(t, fmt.Sprintf("the feed to show all %d events", total), func() bool {
		ctx, cancel := ctxOf(t)
		defer cancel()
		n, c := 0, eventstore.Cursor{}
		for {
			recs, err := d.store.ReadFeed(ctx, c, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) == 0 {
				break
			}
			n += len(recs)
			c = recs[len(recs)-1].Cursor
		}
		head = c
		return n == total
	})
	return head
}

// converged waits until the packages read model holds want rows and the
// relay and every projection are at the feed head, and checks that no
// projection failed.
func (d *topoDB) converged(t *testing.T, want int) {
	t.Helper()
	topoUntil(t, fmt.Sprintf("%d packages in the read model", want), func() bool {
		return d.count(t, `SELECT count(*) FROM packages`) >= want
	})
	if got := d.count(t, `SELECT count(*) FROM packages`); got != want {
		t.Errorf("packages has %d rows, want %d", got, want)
	}
	head := d.head(t)
	topoUntil(t, "relay and projections at the feed head "+head.String(), func() bool {
		ctx, cancel := ctxOf(t)
		defer cancel()
		rs, err := d.store.RelayStatus(ctx)
		if err != nil || rs.Checkpoint != head {
			return false
		}
		sts, err := projections.Statuses(ctx, d.pool, projections.All())
		if err != nil {
			return false
		}
		for _, st := range sts {
			if st.Checkpoint != head {
				return false
			}
		}
		return true
	})
	if n := d.count(t, `SELECT count(*) FROM projection_failures`); n != 0 {
		t.Errorf("projection_failures has %d rows, want none", n)
	}
}

// TestTopologySecondEmbeddedServe: SPEC §2 Topology. A second `serve` with
// the same DATABASE_URL and DATA_DIR and no NATS_URL starts and becomes
// ready on an embedded NATS of its own store, declines the relay and
// projection leases and logs why; events appended meanwhile are projected
// by the first. When the first stops, the second takes the leases over and
// projects what comes next.
func TestTopologySecondEmbeddedServe(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)
	dataDir := t.TempDir()
	vars := map[string]string{"DATABASE_URL": dsn, "DATA_DIR": dataDir, "PORT": "0"}

	first := startTopoServe(t, "first", vars)
	holderA := first.attr(t, "listening", "holder")
	storeA := first.attr(t, "embedded NATS JetStream", "store")
	if want := filepath.Join(dataDir, "nats"); storeA != want {
		t.Errorf("first serve's NATS store is %s, want %s", storeA, want)
	}
	db := openTopoDB(t, dsn, dataDir)
	topoUntil(t, "the first serve to hold every lease", func() bool { return db.heldBy(t, holderA) })

	// (a) The second starts, is ready, runs NATS on a private store and
	// declines the leases, saying who holds them.
	second := startTopoServe(t, "second", vars)
	holderB := second.attr(t, "listening", "holder")
	if holderB == holderA {
		t.Fatalf("both serves hold leases as %s", holderA)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(second.url(t, "/health/ready"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("second serve: GET /health/ready = %d %s, want 200", resp.StatusCode, body)
	}
	storeB := second.attr(t, "embedded NATS JetStream", "store")
	if storeB == storeA || filepath.Dir(storeB) != dataDir || !strings.HasPrefix(filepath.Base(storeB), "nats-private-") {
		t.Errorf("second serve's NATS store is %s, want a private directory in %s beside %s", storeB, dataDir, storeA)
	}
	if !second.logged("embedded NATS store in use by another process; using a private store", map[string]string{"dir": storeB}) {
		t.Errorf("second serve did not log why it uses a private NATS store")
	}
	topoUntil(t, "the second serve to decline the relay and projection leases", func() bool {
		if !second.logged("relay lease held by "+holderA, map[string]string{"component": "relay", "holder": holderA}) {
			return false
		}
		for _, p := range projections.All() {
			if !second.logged("projection idle: lease held by another process", map[string]string{"projection": p.Name(), "holder": holderA}) {
				return false
			}
		}
		return true
	})

	// (b) While both run, the first projects what is appended.
	seeded := db.count(t, `SELECT count(*) FROM events WHERE event_type = 'package.created'`)
	if seeded != len(domain.DefaultPackages()) {
		t.Errorf("%d package.created events after two serves seeded, want %d", seeded, len(domain.DefaultPackages()))
	}
	db.appendPackages(t, 20)
	db.converged(t, seeded+20)
	if h := db.holders(t); !db.heldBy(t, holderA) {
		t.Errorf("leases %v while both run, want all held by the first serve %s", h, holderA)
	}
	for _, msg := range []string{"relay publishing", "projection running"} {
		if len(second.records(msg)) != 0 {
			t.Errorf("second serve logged %q while the first held the leases", msg)
		}
	}

	// (c) The first stops; the second takes over and projects new events.
	if code := first.stop(t); code != 0 {
		t.Fatalf("first serve exited with %d, want 0", code)
	}
	stopped := time.Now()
	topoUntil(t, "the second serve to take every lease", func() bool { return db.heldBy(t, holderB) })
	t.Logf("second serve held every lease %v after the first stopped", time.Since(stopped).Round(time.Millisecond))
	db.appendPackages(t, 15)
	db.converged(t, seeded+35)
	if !second.logged("relay publishing", map[string]string{"holder": holderB}) {
		t.Errorf("second serve did not log that it publishes")
	}
	for _, p := range projections.All() {
		if !second.logged("projection running", map[string]string{"projection": p.Name()}) {
			t.Errorf("second serve did not log that it runs projection %s", p.Name())
		}
	}
	t.Logf("second serve caught up %v after the first stopped", time.Since(stopped).Round(time.Millisecond))

	if code := second.stop(t); code != 0 {
		t.Errorf("second serve exited with %d, want 0", code)
	}
	if _, err := os.Stat(storeB); !os.IsNotExist(err) {
		t.Errorf("second serve's private NATS store %s left behind (%v)", storeB, err)
	}
}
