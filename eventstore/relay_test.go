package eventstore_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/natstest"
	"github.com/manacore/mana/internal/natsx"
)

// A relay test waits at most this long for anything to happen.
const relayWait = 20 * time.Second

// embeddedNATS connects to a JetStream server embedded in the test process
// (no TCP port), with the MANA_EVENTS stream declared.
func embeddedNATS(t *testing.T) *natsx.Conn {
	t.Helper()
	c, err := natsx.Connect(ctxT(t), natsx.Config{DataDir: t.TempDir(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// connectNATS connects the way the service does to an external server:
// reconnecting forever.
func connectNATS(t *testing.T, srv *natstest.Server) *natsx.Conn {
	t.Helper()
	c, err := natsx.Connect(ctxT(t), natsx.Config{URL: srv.URL(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// logBuf collects a relay's logs.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runningRelay is a relay running in the background with its own metrics
// registry and log.
type runningRelay struct {
	*eventstore.Relay
	reg    *prometheus.Registry
	logs   *logBuf
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func startRelay(t *testing.T, e *testEnv, js jetstream.JetStream, opts eventstore.RelayOptions) *runningRelay {
	t.Helper()
	rr := &runningRelay{reg: prometheus.NewRegistry(), logs: &logBuf{}, done: make(chan error, 1)}
	opts.Registerer = rr.reg
	opts.Logger = slog.New(slog.NewTextHandler(rr.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rr.Relay = e.store.NewRelay(js, opts)
	ctx, cancel := context.WithCancel(context.Background())
	rr.cancel = cancel
	go func() { rr.done <- rr.Run(ctx) }()
	t.Cleanup(func() {
		rr.stop(t)
		if t.Failed() || testing.Verbose() {
			t.Logf("relay %s log:\n%s", rr.Holder(), rr.logs)
		}
	})
	return rr
}

// stop cancels the relay and waits for Run to return nil; safe to call
// twice.
func (rr *runningRelay) stop(t *testing.T) {
	t.Helper()
	rr.cancel()
	rr.once.Do(func() {
		select {
		case err := <-rr.done:
			if err != nil {
				t.Errorf("relay Run: %v", err)
			}
		case <-time.After(relayWait):
			t.Errorf("relay %s did not stop", rr.Holder())
		}
	})
}

// metric sums every series of a counter or gauge.
func (rr *runningRelay) metric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := rr.reg.Gather()
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

// waitFor polls cond until it holds, failing the test after relayWait.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(relayWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// appendTyped appends events to a stream in one command, whatever the
// stream's version.
func appendTyped(t *testing.T, e *testEnv, streamType, streamID string, evs ...domain.Event) []eventstore.Record {
	t.Helper()
	recs, err := appendBatches(e, eventstore.StreamAppend{StreamType: streamType, StreamID: streamID, ExpectedVersion: eventstore.AnyVersion, Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func appendBatches(e *testEnv, batches ...eventstore.StreamAppend) ([]eventstore.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), relayWait)
	defer cancel()
	var recs []eventstore.Record
	_, err := e.store.Execute(ctx, systemCmd("test.relay"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		var err error
		recs, err = tx.Append(ctx, batches...)
		return domain.Receipt{Status: http.StatusCreated}, err
	})
	return recs, err
}

func erased() domain.UserErased {
	return domain.UserErased{UserID: uuid.New(), ErasedAt: time.Unix(0, 0).UTC()}
}

// wholeFeed reads the feed from its start.
func wholeFeed(t *testing.T, e *testEnv) []eventstore.Record {
	t.Helper()
	var (
		out []eventstore.Record
		c   eventstore.Cursor
	)
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

// waitPublished waits until the feed holds n events and the relay
// checkpoint is at the last of them, and returns the feed.
func waitPublished(t *testing.T, e *testEnv, n int) []eventstore.Record {
	t.Helper()
	var feed []eventstore.Record
	waitFor(t, fmt.Sprintf("%d events in the feed", n), func() bool {
		feed = wholeFeed(t, e)
		return len(feed) >= n
	})
	if len(feed) != n {
		t.Fatalf("feed holds %d events, want %d", len(feed), n)
	}
	last := feed[n-1].Cursor
	var cp eventstore.Cursor
	waitFor(t, "relay checkpoint at "+last.String(), func() bool {
		var err error
		cp, err = e.store.RelayCheckpoint(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		return cp == last
	})
	return feed
}

func streamCount(t *testing.T, js jetstream.JetStream) int {
	t.Helper()
	s, err := js.Stream(ctxT(t), natsx.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return int(info.State.Msgs)
}

// checkStream reads MANA_EVENTS with an ordered consumer and checks that
// it holds exactly the feed, once each, in feed order, with the relay's
// headers and body.
func checkStream(t *testing.T, js jetstream.JetStream, feed []eventstore.Record) {
	t.Helper()
	checkStreamAfter(t, js, eventstore.Cursor{}, feed)
}

// checkStreamAfter is checkStream for a stream that starts after the
// event at prev.
func checkStreamAfter(t *testing.T, js jetstream.JetStream, after eventstore.Cursor, feed []eventstore.Record) {
	t.Helper()
	if n := streamCount(t, js); n != len(feed) {
		t.Fatalf("stream holds %d messages, feed %d events", n, len(feed))
	}
	cons, err := js.OrderedConsumer(ctxT(t), natsx.StreamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	deadline := time.Now().Add(relayWait)
	for len(msgs) < len(feed) && time.Now().Before(deadline) {
		b, err := cons.Fetch(len(feed)-len(msgs), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			msgs = append(msgs, m)
		}
	}
	if len(msgs) != len(feed) {
		t.Fatalf("consumed %d of %d messages", len(msgs), len(feed))
	}
	prev := after.String()
	seen := map[string]bool{}
	var last eventstore.Cursor
	for i, m := range msgs {
		rec, h := feed[i], m.Headers()
		id := h.Get(eventstore.HeaderMsgID)
		if seen[id] {
			t.Fatalf("message %d: event %s twice in the stream", i, id)
		}
		seen[id] = true
		cur, err := eventstore.ParseCursor(h.Get(eventstore.HeaderCursor))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if i > 0 && !last.Less(cur) {
			t.Fatalf("message %d: cursor %s not after %s", i, cur, last)
		}
		last = cur
		if cur != rec.Cursor || id != rec.EventID.String() {
			t.Fatalf("message %d is %s (%s), feed has %s (%s) there", i, id, cur, rec.EventID, rec.Cursor)
		}
		if got := h.Get(eventstore.HeaderPrevCursor); got != prev {
			t.Fatalf("message %d: %s = %q, want %q", i, eventstore.HeaderPrevCursor, got, prev)
		}
		prev = cur.String()
		if m.Subject() != natsx.SubjectPrefix+rec.EventType {
			t.Fatalf("message %d: subject %s for a %s", i, m.Subject(), rec.EventType)
		}
		var line eventstore.EventLine
		if err := json.Unmarshal(m.Data(), &line); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if line.EventID != rec.EventID || line.Cursor != rec.Cursor.String() || line.Hash != hex.EncodeToString(rec.Hash) {
			t.Fatalf("message %d: body %+v does not match event %s", i, line, rec.EventID)
		}
	}
}

// TestRelayPublishesFeedInOrder: events appended by concurrent commands
// across several streams reach JetStream once each, in feed order, with
// the cursor chain in their headers.
func TestRelayPublishesFeedInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	nc := embeddedNATS(t)
	// A small batch makes the cursor chain cross many rounds.
	rr := startRelay(t, e, nc.JS, eventstore.RelayOptions{BatchSize: 7})

	const writers, commands = 6, 12
	var (
		mu    sync.Mutex
		total int
		wg    sync.WaitGroup
		errs  = make(chan error, writers*commands)
	)
	for w := range writers {
		wg.Go(func() {
			for c := range commands {
				// Shared streams make commands conflict and retry; some
				// commands append to two streams at once.
				batches := []eventstore.StreamAppend{{
					StreamType: "package", StreamID: fmt.Sprintf("shared-%d", c%3),
					ExpectedVersion: eventstore.AnyVersion, Events: []domain.Event{pkg("a"), pkg("b")},
				}}
				if (w+c)%2 == 0 {
					batches = append(batches, eventstore.StreamAppend{
						StreamType: domain.StreamUser, StreamID: uuid.NewString(),
						Events: []domain.Event{erased()},
					})
				}
				recs, err := appendBatches(e, batches...)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				total += len(recs)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	feed := waitPublished(t, e, total)
	checkStream(t, nc.JS, feed)
	if got := rr.metric(t, "mana_relay_published_total"); got != float64(total) {
		t.Errorf("mana_relay_published_total = %v, want %d", got, total)
	}
	if got := rr.metric(t, "mana_relay_checkpoint_position"); got != float64(feed[len(feed)-1].Position) {
		t.Errorf("mana_relay_checkpoint_position = %v, want %d", got, feed[len(feed)-1].Position)
	}
	waitFor(t, "lag gauges at 0", func() bool {
		return rr.metric(t, "mana_relay_lag_events") == 0 && rr.metric(t, "mana_relay_lag_seconds") == 0
	})
	st, err := rr.Status(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Active || st.Holder != rr.Holder() || st.Checkpoint != feed[len(feed)-1].Cursor || st.LagEvents != 0 || st.LastError != "" {
		t.Errorf("status = %+v", st)
	}
}

// TestRelayRepublishesAfterRejection: JetStream refuses some messages for a
// while (a per-subject limit); the relay retries from the first refused
// event, no later event overtakes it, appends go on meanwhile, and once the
// stream takes messages again it holds every event once, in feed order.
func TestRelayRepublishesAfterRejection(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	nc := embeddedNATS(t)
	ctx := ctxT(t)
	s, err := nc.JS.Stream(ctx, natsx.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	open := s.CachedInfo().Config
	limited := open
	limited.MaxMsgsPerSubject, limited.Discard, limited.DiscardNewPerSubject = 3, jetstream.DiscardNew, true
	if _, err := nc.JS.UpdateStream(ctx, limited); err != nil {
		t.Fatal(err)
	}
	rr := startRelay(t, e, nc.JS, eventstore.RelayOptions{BatchSize: 50})

	// Three package.created fit, the fourth is refused; the user.erased
	// events after it would fit their own subject, but must wait for it.
	n := 0
	for range 4 {
		n += len(appendTyped(t, e, "package", uuid.NewString(), pkg("p")))
	}
	for range 2 {
		n += len(appendTyped(t, e, domain.StreamUser, uuid.NewString(), erased()))
	}
	waitFor(t, "a refused publish", func() bool { return rr.metric(t, "mana_relay_errors_total") >= 2 })

	// Appends do not wait for NATS.
	for range 5 {
		start := time.Now()
		n += len(appendTyped(t, e, domain.StreamUser, uuid.NewString(), erased()))
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("append took %v while JetStream refused messages", d)
		}
	}
	waitFor(t, "more refused publishes", func() bool { return rr.metric(t, "mana_relay_errors_total") >= 4 })
	if c := streamCount(t, nc.JS); c != 3 {
		t.Fatalf("stream holds %d messages while the 4th event is refused, want 3", c)
	}
	feed := wholeFeed(t, e)
	if cp, err := e.store.RelayCheckpoint(ctx); err != nil || cp != feed[2].Cursor {
		t.Fatalf("checkpoint = %v (%v), want the 3rd event %s", cp, err, feed[2].Cursor)
	}

	if _, err := nc.JS.UpdateStream(ctx, open); err != nil {
		t.Fatal(err)
	}
	feed = waitPublished(t, e, n)
	checkStream(t, nc.JS, feed)
}

// TestRelayResumesFromCheckpoint: a new relay starts where the previous one
// stopped, whether it stopped idle or in the middle of a backlog; nothing is
// missing or doubled in the stream.
func TestRelayResumesFromCheckpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	nc := embeddedNATS(t)
	appendN := func(n int) {
		for range n {
			appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
		}
	}

	appendN(20)
	r1 := startRelay(t, e, nc.JS, eventstore.RelayOptions{BatchSize: 5})
	waitPublished(t, e, 20)
	r1.stop(t)

	appendN(20)
	r2 := startRelay(t, e, nc.JS, eventstore.RelayOptions{BatchSize: 5})
	waitPublished(t, e, 40)
	r2.stop(t)
	if got := r2.metric(t, "mana_relay_published_total"); got != 20 {
		t.Errorf("second relay published %v events, want the 20 after the checkpoint", got)
	}

	// Stop the next relay in the middle of a backlog, one large enough that
	// a relay publishing one event a round cannot drain it between two
	// polls of a busy test machine.
	for range 20 {
		batches := make([]eventstore.StreamAppend, 100)
		for i := range batches {
			batches[i] = eventstore.StreamAppend{StreamType: "package", StreamID: uuid.NewString(), ExpectedVersion: eventstore.AnyVersion, Events: []domain.Event{pkg("p")}}
		}
		if _, err := appendBatches(e, batches...); err != nil {
			t.Fatal(err)
		}
	}
	r3 := startRelay(t, e, nc.JS, eventstore.RelayOptions{BatchSize: 1})
	waitFor(t, "part of the backlog published", func() bool { return r3.metric(t, "mana_relay_published_total") >= 20 })
	r3.stop(t)
	cp, err := e.store.RelayCheckpoint(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	feed := wholeFeed(t, e)
	if cp == feed[len(feed)-1].Cursor {
		t.Fatal("setup: the relay published the whole backlog before it was stopped")
	}
	t.Logf("stopped at %s, %v events into the backlog", cp, r3.metric(t, "mana_relay_published_total"))

	r4 := startRelay(t, e, nc.JS, eventstore.RelayOptions{})
	feed = waitPublished(t, e, 2040)
	checkStream(t, nc.JS, feed)
	if got := r4.metric(t, "mana_relay_duplicates_total"); got > 1 {
		t.Errorf("resumed relay republished %v events JetStream held, want at most the one in flight", got)
	}
}

// TestRelaySingleWriter: of two relays on one database only the lease holder
// publishes; the other says why it is idle and takes over when the first
// stops.
func TestRelaySingleWriter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	nc := embeddedNATS(t)
	ctx := ctxT(t)
	opts := func(holder string) eventstore.RelayOptions {
		return eventstore.RelayOptions{Holder: holder, LeaseTTL: time.Second, BatchSize: 10}
	}
	a := startRelay(t, e, nc.JS, opts("relay-a"))
	waitFor(t, "relay-a to hold the lease", func() bool {
		st, err := e.store.RelayStatus(ctx)
		return err == nil && st.Holder == "relay-a"
	})
	b := startRelay(t, e, nc.JS, opts("relay-b"))
	const declined = "relay lease held by relay-a"
	waitFor(t, "relay-b to decline", func() bool { return strings.Contains(b.logs.String(), declined) })

	for range 30 {
		appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	}
	waitPublished(t, e, 30)
	if got := a.metric(t, "mana_relay_published_total"); got != 30 {
		t.Errorf("relay-a published %v, want 30", got)
	}
	if got := b.metric(t, "mana_relay_published_total"); got != 0 {
		t.Errorf("relay-b published %v while relay-a held the lease", got)
	}
	if st, err := b.Status(ctx); err != nil || st.Active {
		t.Errorf("relay-b status = %+v, %v; want inactive", st, err)
	}

	a.stop(t)
	stopped := time.Now()
	for range 30 {
		appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	}
	feed := waitPublished(t, e, 60)
	t.Logf("relay-b took over and caught up %v after relay-a stopped", time.Since(stopped).Round(time.Millisecond))
	if got := b.metric(t, "mana_relay_published_total"); got != 30 {
		t.Errorf("relay-b published %v, want the 30 new events", got)
	}
	if got := a.metric(t, "mana_relay_published_total"); got != 30 {
		t.Errorf("relay-a published %v after it stopped", got)
	}
	checkStream(t, nc.JS, feed)
	if n := strings.Count(b.logs.String(), declined); n != 1 {
		t.Errorf("relay-b logged %q %d times, want once", declined, n)
	}
}

// TestRelayNotifyWakesIdleRelay: Notify cuts the idle wait short.
func TestRelayNotifyWakesIdleRelay(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	nc := embeddedNATS(t)
	rr := startRelay(t, e, nc.JS, eventstore.RelayOptions{PollInterval: time.Hour})
	// Wait until the relay has read the (empty) feed and gone idle.
	waitFor(t, "relay idle", func() bool {
		return rr.metric(t, "mana_relay_lag_seconds") == 0 && strings.Contains(rr.logs.String(), "relay publishing")
	})
	appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	// The feed may lag the commit briefly (the horizon); notify until the
	// relay has published.
	waitFor(t, "published after Notify", func() bool {
		rr.Notify()
		return rr.metric(t, "mana_relay_published_total") == 1
	})
}

// TestRelayCatchesUpAfterNATSOutage: the NATS server goes down in the middle
// of a backlog; appends still succeed at once, the relay retries, and after
// the server is back the stream holds every event once, in order.
func TestRelayCatchesUpAfterNATSOutage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := natstest.Start(t)
	nc := connectNATS(t, srv)
	rr := startRelay(t, e, nc.JS, eventstore.RelayOptions{AckTimeout: time.Second, BatchSize: 20})

	for range 10 {
		appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	}
	waitPublished(t, e, 10)

	// A backlog the relay needs a hundred rounds for; the server stops
	// while it is being published.
	backlog := make([]domain.Event, 2000)
	for i := range backlog {
		backlog[i] = pkg("b")
	}
	appendTyped(t, e, "package", uuid.NewString(), backlog...)
	waitFor(t, "part of the backlog published", func() bool { return rr.metric(t, "mana_relay_published_total") >= 100 })
	srv.Down()
	published := rr.metric(t, "mana_relay_published_total")
	t.Logf("NATS stopped after %v events", published)

	var slowest time.Duration
	for range 20 {
		start := time.Now()
		appendTyped(t, e, domain.StreamUser, uuid.NewString(), erased())
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("slowest append with NATS down: %v", slowest)
	if slowest > 2*time.Second {
		t.Errorf("an append took %v with NATS down", slowest)
	}
	waitFor(t, "the relay to fail", func() bool { return rr.metric(t, "mana_relay_errors_total") >= 2 })
	cp, err := e.store.RelayCheckpoint(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if feed := wholeFeed(t, e); cp == feed[len(feed)-1].Cursor {
		t.Fatal("setup: the relay published everything before NATS stopped")
	}

	srv.Up()
	feed := waitPublished(t, e, 2030)
	checkStream(t, nc.JS, feed)
}

// TestRelayRewindsWhenJetStreamLosesItsTail: JetStream comes back without
// messages it had acknowledged (its acks are not fsynced). The relay finds
// out from the expected-last-message check, moves its checkpoint back to
// what the stream holds and republishes the rest.
func TestRelayRewindsWhenJetStreamLosesItsTail(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := natstest.Start(t)
	nc := connectNATS(t, srv)
	rr := startRelay(t, e, nc.JS, eventstore.RelayOptions{AckTimeout: time.Second})

	for range 10 {
		appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	}
	waitPublished(t, e, 10)
	snapshot := t.TempDir()
	srv.Down()
	if err := os.CopyFS(snapshot, os.DirFS(srv.StoreDir())); err != nil {
		t.Fatal(err)
	}
	srv.Up()

	for range 10 {
		appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	}
	waitPublished(t, e, 20)
	// Crash back to the snapshot: the last 10 acknowledged events are gone.
	srv.Down()
	if err := os.RemoveAll(srv.StoreDir()); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(srv.StoreDir(), os.DirFS(snapshot)); err != nil {
		t.Fatal(err)
	}
	srv.Up()
	if c := streamCount(t, nc.JS); c != 10 {
		t.Fatalf("setup: restored stream holds %d messages, want 10", c)
	}

	for range 5 {
		appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	}
	feed := waitPublished(t, e, 25)
	checkStream(t, nc.JS, feed)
	if !strings.Contains(rr.logs.String(), "relay checkpoint moved") {
		t.Error("no log of the checkpoint moving back")
	}
}

// TestRelaySkipsWhatTheStreamHoldsPastTheDuplicateWindow: a checkpoint
// behind the stream (acks lost before a crash) is moved forward to the
// stream's last event instead of publishing those events a second time,
// even when JetStream no longer remembers their ids.
func TestRelaySkipsWhatTheStreamHoldsPastTheDuplicateWindow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	nc := embeddedNATS(t)
	ctx := ctxT(t)
	s, err := nc.JS.Stream(ctx, natsx.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.Duplicates = 100 * time.Millisecond
	if _, err := nc.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}

	for range 10 {
		appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	}
	r1 := startRelay(t, e, nc.JS, eventstore.RelayOptions{})
	feed := waitPublished(t, e, 10)
	r1.stop(t)
	// Lose the checkpoint's last five moves, as if the relay crashed before
	// saving them.
	if _, err := e.pool.Exec(ctx, "UPDATE relay_checkpoints SET tx_id = $1, position = $2 WHERE name = 'relay'",
		feed[4].TxID, feed[4].Position); err != nil {
		t.Fatal(err)
	}
	// JetStream forgets message ids once the window has passed; nothing
	// observable says when, so wait well past it.
	time.Sleep(10 * cfg.Duplicates)

	r2 := startRelay(t, e, nc.JS, eventstore.RelayOptions{})
	for range 5 {
		appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	}
	feed = waitPublished(t, e, 15)
	checkStream(t, nc.JS, feed)
	if !strings.Contains(r2.logs.String(), "relay checkpoint moved") {
		t.Error("no log of the checkpoint moving forward")
	}
}

// TestRelayStopsWhenLeaseLost: a relay whose lease was taken over saves no
// checkpoint and stops publishing, even before its next renewal notices.
func TestRelayStopsWhenLeaseLost(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	nc := embeddedNATS(t)
	ctx := ctxT(t)
	// A long TTL: renewals (every TTL/3) do not happen during the test, so
	// only the check in the checkpoint transaction can notice.
	rr := startRelay(t, e, nc.JS, eventstore.RelayOptions{Holder: "relay-a", LeaseTTL: time.Hour})
	appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	before := waitPublished(t, e, 1)

	if _, err := e.pool.Exec(ctx, "UPDATE leases SET holder = 'relay-z' WHERE name = 'relay'"); err != nil {
		t.Fatal(err)
	}
	appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	waitFor(t, "the relay to notice", func() bool { return strings.Contains(rr.logs.String(), "relay lease lost") })
	waitFor(t, "the relay to go idle", func() bool { return strings.Contains(rr.logs.String(), "relay lease held by relay-z") })
	if cp, err := e.store.RelayCheckpoint(ctx); err != nil || cp != before[0].Cursor {
		t.Errorf("checkpoint = %v (%v) after the lease was lost, want %s", cp, err, before[0].Cursor)
	}
	if st, err := rr.Status(ctx); err != nil || st.Active || st.Holder != "relay-z" {
		t.Errorf("status = %+v, %v", st, err)
	}
}

// TestRelayContinuesOnANewStream: when MANA_EVENTS is deleted and declared
// again, the relay cannot chain to the events it published before; it goes
// on from its checkpoint instead of stalling.
func TestRelayContinuesOnANewStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	nc := embeddedNATS(t)
	ctx := ctxT(t)
	rr := startRelay(t, e, nc.JS, eventstore.RelayOptions{})
	for range 5 {
		appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	}
	waitPublished(t, e, 5)

	if err := nc.JS.DeleteStream(ctx, natsx.StreamName); err != nil {
		t.Fatal(err)
	}
	if err := natsx.EnsureStream(ctx, nc.JS, 0); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		appendTyped(t, e, "package", uuid.NewString(), pkg("p"))
	}
	feed := waitPublished(t, e, 8)
	// The new stream starts at the 6th event, chained to the 5th.
	checkStreamAfter(t, nc.JS, feed[4].Cursor, feed[5:])
	if !strings.Contains(rr.logs.String(), "without a predecessor") {
		t.Error("no log of the broken chain")
	}
}
