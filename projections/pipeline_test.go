package projections_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/natstest"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pgtest"
	"github.com/manacore/mana/projections"
)

// The tests in this file run the whole pipeline: events appended to
// PostgreSQL, the real relay publishing them to MANA_EVENTS on a JetStream
// server of the test's own (a loopback TCP port it can stop and start again
// on the same port and store), and the real runner with the service's
// projections plus a counter that fails the test on a double application.
// The runners do not poll the feed after start-up (PollInterval an hour):
// after their first catch-up only JetStream messages move them, so the
// tests see the messages flow end to end.

// pipeLog collects a component's log lines, safe for concurrent use.
type pipeLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *pipeLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *pipeLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// pipeline is one test's database clone, event store, JetStream server,
// connection and running relay, plus the counter projection.
type pipeline struct {
	*env
	nats     *natstest.Server
	nc       *nats.Conn
	relay    *eventstore.Relay
	relayReg *prometheus.Registry
	relayLog *pipeLog
	counter  *counter
}

type pipeOpts struct {
	// relayBatch is the relay's batch size; the relay's default when 0.
	relayBatch int
	// duplicates, when set, replaces the stream's duplicate window before
	// the relay starts.
	duplicates time.Duration
}

// pipeProjections is what a pipeline runner runs: the service's
// projections and the counter.
func (p *pipeline) projections() []projections.Projection {
	return append(projections.All(), p.counter)
}

// names are the names of the pipeline's projections.
func (p *pipeline) names() []string {
	var out []string
	for _, pr := range p.projections() {
		out = append(out, pr.Name())
	}
	return out
}

func newPipeline(t *testing.T, counterName string, o pipeOpts) *pipeline {
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

	srv := natstest.Start(t)
	// Reconnect forever, as the service does for an external server.
	nc, err := nats.Connect(srv.URL(), nats.Name(t.Name()), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := natsx.EnsureStream(ctxT(t), js, 0); err != nil {
		t.Fatal(err)
	}
	if o.duplicates > 0 {
		s, err := js.Stream(ctxT(t), natsx.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		cfg.Duplicates = o.duplicates
		if _, err := js.UpdateStream(ctxT(t), cfg); err != nil {
			t.Fatal(err)
		}
	}

	p := &pipeline{env: &env{pool: pool, store: store, js: js}, nats: srv, nc: nc,
		relayReg: prometheus.NewRegistry(), relayLog: &pipeLog{}}
	p.counter = newCounter(t, p.env, counterName)

	p.relay = store.NewRelay(js, eventstore.RelayOptions{
		Holder:     "relay-" + counterName,
		Logger:     slog.New(slog.NewTextHandler(p.relayLog, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: p.relayReg,
		BatchSize:  o.relayBatch,
		AckTimeout: time.Second,
		LeaseTTL:   time.Second,
	})
	store.OnAppend(p.relay.Notify)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.relay.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("relay Run: %v", err)
			}
		case <-time.After(wait):
			t.Errorf("relay did not stop within %v", wait)
		}
		if t.Failed() {
			t.Logf("relay log:\n%s", p.relayLog)
		}
	})
	return p
}

// relayMetric sums every series of one of the relay's counters or gauges.
func (p *pipeline) relayMetric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := p.relayReg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// streamMsgs returns how many messages MANA_EVENTS holds.
func (p *pipeline) streamMsgs(t *testing.T) int {
	t.Helper()
	s, err := p.js.Stream(ctxT(t), natsx.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return int(info.State.Msgs)
}

// noPollAfterStart leaves JetStream as a runner's only trigger after its
// first catch-up.
func noPollAfterStart(c *projections.Config) {
	c.PollInterval = time.Hour
	c.BatchSize = 50
}

// written is what writers appended.
type written struct {
	events, packages, users int
	slowest                 time.Duration
}

func (w *written) add(o written) {
	w.events += o.events
	w.packages += o.packages
	w.users += o.users
	w.slowest = max(w.slowest, o.slowest)
}

// pipeAppend runs one command: a package.created in a new package stream,
// and every third command also a user.registered in a new user stream, in
// the same transaction.
func (p *pipeline) pipeAppend(ctx context.Context, i int) (written, error) {
	pkg := newPackage(fmt.Sprintf("pipe-%d", i), i%7)
	batches := []eventstore.StreamAppend{{
		StreamType: domain.StreamPackage, StreamID: pkg.PackageID.String(),
		ExpectedVersion: eventstore.AnyVersion, Events: []domain.Event{pkg},
	}}
	w := written{events: 1, packages: 1}
	if i%3 == 0 {
		id := uuid.New()
		batches = append(batches, eventstore.StreamAppend{
			StreamType: domain.StreamUser, StreamID: id.String(), ExpectedVersion: eventstore.AnyVersion,
			Events: []domain.Event{&domain.UserRegistered{UserID: id, Email: fmt.Sprintf("u%d-%s@example.com", i, id),
				Name: "Pipe", Role: "user", RegisteredAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}},
		})
		w.events++
		w.users++
	}
	start := time.Now()
	_, err := p.store.Execute(ctx, systemCmd("test.pipeline"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		_, err := tx.Append(ctx, batches...)
		return domain.Receipt{Status: http.StatusCreated}, err
	})
	w.slowest = time.Since(start)
	if err != nil {
		return written{}, err
	}
	return w, nil
}

// pipeSeq numbers the commands of pipeAppend across tests.
var pipeSeq atomic.Int64

// write appends from writers goroutines at once, commands each, and
// returns what they appended and the slowest append.
func (p *pipeline) write(t *testing.T, writers, commands int) written {
	t.Helper()
	var (
		mu    sync.Mutex
		total written
		wg    sync.WaitGroup
		errs  = make(chan error, writers*commands)
	)
	for range writers {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			for range commands {
				got, err := p.pipeAppend(ctx, int(pipeSeq.Add(1)))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				total.add(got)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return total
}

// converged waits until every projection and the relay are at the head of
// a feed of n events, and checks that the counter applied the whole feed
// once each in feed order, that the read models hold what was appended and
// that nothing failed. It returns the feed.
func (p *pipeline) converged(t *testing.T, n int, want written) []eventstore.Record {
	t.Helper()
	feed := p.feed(t, n)
	head := feed[n-1].Cursor
	for _, name := range p.names() {
		p.waitApplied(t, name, head)
		if got := p.checkpoint(t, name); got != head {
			t.Errorf("%s checkpoint %s, want the feed head %s", name, got, head)
		}
	}
	eventually(t, "relay checkpoint at the feed head "+head.String(), func() bool {
		cp, err := p.store.RelayCheckpoint(ctxT(t))
		return err == nil && cp == head
	})
	p.checkApplied(t, p.counter.name, feed)
	if got := p.count(t, `SELECT count(*) FROM packages`); got != want.packages {
		t.Errorf("packages has %d rows, want %d", got, want.packages)
	}
	if got := p.count(t, `SELECT count(*) FROM users`); got != want.users {
		t.Errorf("users has %d rows, want %d", got, want.users)
	}
	if got := p.count(t, `SELECT count(*) FROM projection_failures`); got != 0 {
		t.Errorf("projection_failures has %d rows, want none", got)
	}
	return feed
}

// TestPipelineExactlyOnceInFeedOrder: hundreds of events from concurrent
// writers go through the real relay and JetStream to the real runner; every
// projection applies each event exactly once, in feed order, and the stream
// holds each event once.
func TestPipelineExactlyOnceInFeedOrder(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, "pipe_exact", pipeOpts{relayBatch: 25})
	r, _ := p.newRunner(t, "node-a", p.projections(), noPollAfterStart)
	start(t, r)
	for _, name := range p.names() {
		p.consumerInfo(t, name)
	}

	began := time.Now()
	w := p.write(t, 8, 50)
	if w.events < 500 {
		t.Fatalf("setup: %d events appended, want hundreds", w.events)
	}
	feed := p.converged(t, w.events, w)
	t.Logf("%d events (%d commands, slowest append %v) applied by %d projections %v after the first append",
		len(feed), 8*50, w.slowest.Round(time.Millisecond), len(p.names()), time.Since(began).Round(time.Millisecond))
	if got := p.streamMsgs(t); got != len(feed) {
		t.Errorf("MANA_EVENTS holds %d messages, want the %d events once each", got, len(feed))
	}
	// Every message reached every consumer and was acked.
	for _, name := range p.names() {
		eventually(t, "consumer of "+name+" drained", func() bool {
			info := p.consumerInfo(t, name)
			return info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Stream == uint64(len(feed))
		})
	}
}

// TestPipelineSurvivesNATSOutage: NATS stops while the relay is in the
// middle of a backlog. Appends go on, each quickly; when the server is back
// (same port, same store) the relay republishes from its checkpoint and the
// projections catch up through JetStream, applying each event once.
func TestPipelineSurvivesNATSOutage(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, "pipe_outage", pipeOpts{relayBatch: 10})
	r, _ := p.newRunner(t, "node-a", p.projections(), noPollAfterStart)
	start(t, r)
	for _, name := range p.names() {
		p.consumerInfo(t, name)
	}

	var total written
	total.add(p.write(t, 4, 25))
	p.converged(t, total.events, total)

	// A backlog the relay needs about 150 rounds for, in one command; the
	// server stops while it is being published.
	backlog := make([]domain.Event, 1500)
	for i := range backlog {
		backlog[i] = newPackage(fmt.Sprintf("backlog-%d", i), i%7)
	}
	published := p.relayMetric(t, "mana_relay_published_total")
	if _, err := p.appendEvents(ctxT(t), domain.StreamPackage, uuid.NewString(), backlog...); err != nil {
		t.Fatal(err)
	}
	total.add(written{events: len(backlog), packages: len(backlog)})
	eventually(t, "part of the backlog published", func() bool {
		return p.relayMetric(t, "mana_relay_published_total") >= published+100
	})
	p.nats.Down()
	t.Logf("NATS stopped after the relay published %v of the %d backlog events",
		p.relayMetric(t, "mana_relay_published_total")-published, len(backlog))
	errorsBefore := p.relayMetric(t, "mana_relay_errors_total")

	// Appends never wait for NATS.
	during := p.write(t, 4, 10)
	total.add(during)
	t.Logf("slowest of %d appends with NATS down: %v", 4*10, during.slowest)
	if during.slowest > 2*time.Second {
		t.Errorf("an append took %v with NATS down, want < 2s", during.slowest)
	}
	eventually(t, "the relay to fail a round", func() bool {
		return p.relayMetric(t, "mana_relay_errors_total") > errorsBefore
	})
	feed := p.feed(t, total.events)
	cp, err := p.store.RelayCheckpoint(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !cp.Less(feed[len(feed)-1].Cursor) {
		t.Fatalf("relay checkpoint %s at the head while NATS is down", cp)
	}
	for _, name := range p.names() {
		if got := p.checkpoint(t, name); !got.Less(feed[len(feed)-1].Cursor) {
			t.Fatalf("setup: %s reached the head %s before NATS came back", name, got)
		}
	}

	p.nats.Up()
	restarted := time.Now()
	feed = p.converged(t, total.events, total)
	t.Logf("caught up %v after NATS restarted; relay republished %v duplicates",
		time.Since(restarted).Round(time.Millisecond), p.relayMetric(t, "mana_relay_duplicates_total"))
	if got := p.streamMsgs(t); got != len(feed) {
		t.Errorf("MANA_EVENTS holds %d messages, want the %d events once each", got, len(feed))
	}
}

// TestPipelineIgnoresDuplicateOlderThanWindow: a message republished after
// JetStream's duplicate window (tiny here) is stored again and delivered
// again; the projections ignore it by cursor, and the pipeline goes on
// applying new events exactly once.
func TestPipelineIgnoresDuplicateOlderThanWindow(t *testing.T) {
	t.Parallel()
	const window = 200 * time.Millisecond
	p := newPipeline(t, "pipe_olddup", pipeOpts{duplicates: window})
	r, _ := p.newRunner(t, "node-a", p.projections(), noPollAfterStart)
	start(t, r)
	for _, name := range p.names() {
		p.consumerInfo(t, name)
	}

	var total written
	total.add(p.write(t, 3, 20))
	feed := p.converged(t, total.events, total)
	head := feed[len(feed)-1].Cursor
	stored := p.streamMsgs(t)
	delivered := map[string]uint64{}
	for _, name := range p.names() {
		delivered[name] = p.consumerInfo(t, name).Delivered.Consumer
	}

	// The first event's message, exactly as the relay sent it, except for
	// Nats-Expected-Last-Msg-Id (its predecessor's id), which JetStream
	// would refuse now that the stream has moved on.
	s, err := p.js.Stream(ctxT(t), natsx.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	old, err := s.GetMsg(ctxT(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if id := old.Header.Get(eventstore.HeaderMsgID); id != feed[0].EventID.String() {
		t.Fatalf("stream message 1 is %s, the feed starts with %s", id, feed[0].EventID)
	}
	dup := nats.NewMsg(old.Subject)
	dup.Data = old.Data
	for k, v := range old.Header {
		if k != jetstream.ExpectedLastMsgIDHeader {
			dup.Header[k] = v
		}
	}
	// JetStream drops the duplicate until it forgets the id; nothing says
	// when, so publish until it is stored (each dropped attempt changes
	// nothing).
	attempts := 0
	eventually(t, "the old duplicate stored after the window", func() bool {
		attempts++
		ack, err := p.js.PublishMsg(ctxT(t), dup)
		if err != nil {
			t.Fatalf("republish: %v", err)
		}
		return !ack.Duplicate
	})
	t.Logf("old duplicate stored after %d attempts", attempts)
	if got := p.streamMsgs(t); got != stored+1 {
		t.Fatalf("stream holds %d messages after the old duplicate, want %d", got, stored+1)
	}
	for _, name := range p.names() {
		eventually(t, name+" received and acked the old duplicate", func() bool {
			info := p.consumerInfo(t, name)
			return info.Delivered.Consumer > delivered[name] && info.NumPending == 0 && info.NumAckPending == 0
		})
		if got := p.checkpoint(t, name); got != head {
			t.Errorf("%s checkpoint %s after the old duplicate, want %s", name, got, head)
		}
	}
	p.checkApplied(t, p.counter.name, feed)

	// New events after it are applied once each; the relay finds the
	// stream's tail is not its checkpoint event and re-anchors.
	total.add(p.write(t, 3, 10))
	p.converged(t, total.events, total)
	t.Logf("stream holds %d messages for %d events; relay re-anchored: %v",
		p.streamMsgs(t), total.events, strings.Contains(p.relayLog.String(), "relay checkpoint moved"))
}

// TestPipelineProjectorKilledBetweenCommitAndAck: with the relay running,
// a projector dies after committing a batch and before acking its
// messages; the messages come back to the next runner, which ignores them
// by cursor: nothing is applied twice.
func TestPipelineProjectorKilledBetweenCommitAndAck(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, "pipe_kill", pipeOpts{relayBatch: 10})
	r1, _ := p.newRunner(t, "node-a", p.projections(), noPollAfterStart)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var armed atomic.Bool
	crashed := make(chan eventstore.Cursor, 1)
	projections.SetAfterCommit(r1, func(name string, c eventstore.Cursor) {
		if name != p.counter.name || !armed.Load() {
			return
		}
		select {
		case crashed <- c:
			cancel() // the kill: the batch's messages are never acked
		default:
		}
	})
	done := make(chan error, 1)
	go func() { done <- r1.Run(ctx) }()
	for _, name := range p.names() {
		p.consumerInfo(t, name)
	}
	armed.Store(true)

	var total written
	total.add(p.write(t, 4, 15))
	var committed eventstore.Cursor
	select {
	case committed = <-crashed:
	case <-time.After(wait):
		t.Fatal("the first runner committed nothing")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("the first runner did not stop")
	}
	if got := p.checkpoint(t, p.counter.name); got != committed {
		t.Fatalf("checkpoint %s, want the killed commit's %s", got, committed)
	}
	info := p.consumerInfo(t, p.counter.name)
	if info.NumAckPending == 0 {
		t.Fatalf("no unacked messages after the kill: %+v", info.Delivered)
	}
	t.Logf("killed after committing %s with %d messages unacked", committed, info.NumAckPending)

	// The relay keeps publishing while no projector runs.
	total.add(p.write(t, 2, 10))
	r2, _ := p.newRunner(t, "node-b", p.projections(), noPollAfterStart)
	start(t, r2)
	feed := p.converged(t, total.events, total)
	eventually(t, "the unacked messages redelivered and acked", func() bool {
		info := p.consumerInfo(t, p.counter.name)
		return info.Delivered.Consumer > uint64(len(feed)) && info.NumPending == 0 && info.NumAckPending == 0
	})
	p.checkApplied(t, p.counter.name, feed)

	// And the new projector goes on through JetStream.
	total.add(p.write(t, 2, 10))
	p.converged(t, total.events, total)
}

// TestPipelinePassesUnhandledEventsCheaply: a projection passes the events
// it does not handle without a transaction each; their checkpoint reaches
// the database shortly after, in a few writes rather than one per event.
func TestPipelinePassesUnhandledEventsCheaply(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, "pipe_pass", pipeOpts{})
	// Count the writes of the users projection's checkpoint.
	if _, err := p.pool.Exec(ctxT(t), `
CREATE TABLE test_checkpoint_writes (name text NOT NULL);
CREATE FUNCTION test_count_checkpoint_write() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN INSERT INTO test_checkpoint_writes VALUES (NEW.name); RETURN NEW; END $$;
CREATE TRIGGER test_count_checkpoint_write AFTER UPDATE ON projection_checkpoints
FOR EACH ROW EXECUTE FUNCTION test_count_checkpoint_write();`); err != nil {
		t.Fatal(err)
	}
	r, _ := p.newRunner(t, "node-a", p.projections(), noPollAfterStart)
	start(t, r)
	for _, name := range p.names() {
		p.consumerInfo(t, name)
	}

	const n = 100
	p.appendPackages(t, n, 1) // one command each; the users projection handles none
	feed := p.feed(t, n)
	last := feed[len(feed)-1].Cursor
	for _, name := range []string{"users", "packages", p.counter.name} {
		p.waitApplied(t, name, last)
	}
	p.checkApplied(t, p.counter.name, feed)
	writes := func(name string) int {
		return p.count(t, `SELECT count(*) FROM test_checkpoint_writes WHERE name = $1`, name)
	}
	users, packages := writes("users"), writes("packages")
	t.Logf("checkpoint writes for %d events: users %d (handles none), packages %d (handles all)", n, users, packages)
	if users > n/4 {
		t.Errorf("the users projection wrote its checkpoint %d times for %d events it does not handle", users, n)
	}
	if users == 0 {
		t.Error("the users projection never saved the checkpoint of the events it passed")
	}
}
