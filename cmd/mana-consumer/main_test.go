package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func mustCursor(t *testing.T, s string) cursor {
	t.Helper()
	c, err := parseCursor(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCursorOrder(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"12", "a-1", "1-b", "1--1", "-1"} {
		if _, err := parseCursor(bad); err == nil {
			t.Errorf("parseCursor(%q) accepted", bad)
		}
	}
	// tx_id first, then position: a larger position in an earlier
	// transaction comes first.
	a, b := mustCursor(t, "10-900"), mustCursor(t, "11-5")
	if !a.less(b) || b.less(a) || a.less(a) {
		t.Error("cursor order is not (tx_id, position)")
	}
	if z := mustCursor(t, ""); !z.isZero() || z.String() != "0-0" || z != mustCursor(t, "0") {
		t.Errorf("the start cursor is %v", z)
	}
}

func TestFollowerDedupAndGaps(t *testing.T) {
	t.Parallel()
	f := newFollower(cursor{})
	c1, c2, c3, c4 := mustCursor(t, "10-1"), mustCursor(t, "10-2"), mustCursor(t, "11-3"), mustCursor(t, "12-4")
	if v := f.check(c1, cursor{}, "e1"); v != apply {
		t.Fatalf("first event: %v", v)
	}
	f.applied(c1, "e1")
	// A redelivery: same id, same cursor.
	if v := f.check(c1, cursor{}, "e1"); v != duplicate {
		t.Fatalf("redelivered event: %v", v)
	}
	// An event republished under another message id: its cursor is not
	// past the last one applied.
	if v := f.check(c1, cursor{}, "other"); v != duplicate {
		t.Fatalf("older cursor: %v", v)
	}
	if v := f.check(c2, c1, "e2"); v != apply {
		t.Fatalf("next event: %v", v)
	}
	f.applied(c2, "e2")
	// e3 never arrived: e4 names it as its predecessor.
	if v := f.check(c4, c3, "e4"); v != gap {
		t.Fatalf("event after a missing one: %v", v)
	}
	f.applied(c3, "e3")
	if v := f.check(c4, c3, "e4"); v != apply {
		t.Fatalf("after the gap is read: %v", v)
	}
	// The id set catches a known id even with a new cursor.
	if v := f.check(mustCursor(t, "13-5"), c4, "e2"); v != duplicate {
		t.Fatalf("known id: %v", v)
	}
	// covered moves forward only.
	f.covered(c1)
	if f.last != c3 {
		t.Fatalf("covered moved the cursor back to %v", f.last)
	}
}

func TestIDSetForgetsTheOldest(t *testing.T) {
	t.Parallel()
	s := newIDSet(2)
	s.add("a")
	s.add("b")
	s.add("b")
	s.add("c")
	if s.has("a") || !s.has("b") || !s.has("c") {
		t.Fatalf("set %v", s.m)
	}
}

// fakeEvent is one event of the fake log.
type fakeEvent struct {
	cursor, id, typ string
}

func (e fakeEvent) line() []byte {
	b, _ := json.Marshal(map[string]any{"cursor": e.cursor, "event_id": e.id, "event_type": e.typ, "schema_version": 1, "payload": map[string]any{}})
	return b
}

// fakeAPI serves GET /api/v1/events over log as the service does: after,
// types and limit, X-Mana-Next-Cursor, NDJSON.
func fakeAPI(t *testing.T, log []fakeEvent, token string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/events" || r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		after, err := parseCursor(r.URL.Query().Get("after"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		types := r.URL.Query().Get("types")
		var page []fakeEvent
		for _, e := range log {
			c, _ := parseCursor(e.cursor)
			if after.less(c) && (types == "" || strings.Contains(","+types+",", ","+e.typ+",")) && len(page) < limit {
				page = append(page, e)
			}
		}
		next := after.String()
		if len(page) > 0 {
			next = page[len(page)-1].cursor
		}
		w.Header().Set(headerNextCursor, next)
		w.Header().Set("Content-Type", "application/x-ndjson")
		for _, e := range page {
			w.Write(append(e.line(), '\n'))
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

var fakeLog = []fakeEvent{
	{"10-1", "e1", "user.registered"},
	{"10-2", "e2", "credit.signup_bonus_granted"},
	{"11-3", "e3", "credit.spent"},
	{"11-4", "e4", "credit.spent"},
	{"12-5", "e5", "credit.refunded"},
	{"13-6", "e6", "credit.spent"},
}

func TestFeedClientPagesUpToACursor(t *testing.T) {
	t.Parallel()
	api := fakeAPI(t, fakeLog, "tok")
	c := &feedClient{base: api.URL, token: "tok", http: api.Client()}
	var got []string
	collect := func(l eventLine) error { got = append(got, l.EventID); return nil }
	if err := c.read(t.Context(), mustCursor(t, "10-1"), mustCursor(t, "12-5"), collect); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "e2,e3,e4,e5" {
		t.Fatalf("read (10-1, 12-5] = %v", got)
	}
	// With a type filter only those types come back, and an empty answer
	// ends the read.
	got = nil
	c.types = []string{"credit.refunded"}
	if err := c.read(t.Context(), cursor{}, mustCursor(t, "13-6"), collect); err != nil || strings.Join(got, ",") != "e5" {
		t.Fatalf("filtered read = %v, %v", got, err)
	}
	// Without a filter, an API that lacks the range is an error, not a
	// silent skip.
	c.types, got = nil, nil
	if err := c.read(t.Context(), mustCursor(t, "13-6"), mustCursor(t, "14-7"), collect); err == nil {
		t.Fatal("a missing range read as empty")
	}
	bad := &feedClient{base: api.URL, token: "wrong", http: api.Client()}
	if err := bad.read(t.Context(), cursor{}, mustCursor(t, "10-1"), collect); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a refused read: %v", err)
	}
}

// startNATS runs a JetStream server on a loopback port for the test.
func startNATS(t *testing.T) string {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS not ready")
	}
	return srv.ClientURL()
}

// TestConsumerEndToEnd publishes a stream as the relay would, but with
// its first event lost (retention), one event missing in the middle and
// one redelivered, and checks that the consumer prints every event once,
// in feed order, reading the missing ones from the API.
func TestConsumerEndToEnd(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: streamName, Subjects: []string{subjectPrefix + ">"}, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	publish := func(i int, msgID bool) {
		t.Helper()
		e, prev := fakeLog[i], "0-0"
		if i > 0 {
			prev = fakeLog[i-1].cursor
		}
		m := nats.NewMsg(subjectPrefix + e.typ)
		m.Data = e.line()
		if msgID {
			m.Header.Set(headerMsgID, e.id)
		}
		m.Header.Set(headerCursor, e.cursor)
		m.Header.Set(headerPrevCursor, prev)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	publish(1, true) // e1 is gone: the stream starts at e2
	publish(2, true)
	publish(2, false) // e3 again, beyond the duplicate window
	// e4 is missing
	publish(4, true)
	publish(5, true)

	api := fakeAPI(t, fakeLog, "tok")
	env := map[string]string{"NATS_URL": url, "MANA_API_URL": api.URL + "/", "MANA_TOKEN": "tok"}
	runIt := func(args ...string) (string, string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := run(ctx, append([]string{"--idle", "500ms"}, args...), func(k string) string { return env[k] }, &stdout, &stderr)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	ids := func(out string) string {
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Split(l, "\t"); len(f) == 4 {
				got = append(got, f[2]+"@"+strings.Fields(f[3])[0])
			}
		}
		return strings.Join(got, ",")
	}

	out, log := runIt()
	if got, want := ids(out), "e1@api,e2@jetstream,e3@jetstream,e4@api,e5@jetstream,e6@jetstream"; got != want {
		t.Fatalf("printed %s, want %s\nstdout:\n%s\nstderr:\n%s", got, want, out, log)
	}
	if !strings.Contains(log, "duplicate 11-3") || strings.Count(log, "gap:") != 2 {
		t.Errorf("log does not show the duplicate and both gaps:\n%s", log)
	}

	// Resuming after a cursor starts at the first message past it.
	out, log = runIt("--after", "11-4")
	if got := ids(out); got != "e5@jetstream,e6@jetstream" || !strings.Contains(log, "starting at stream sequence 4") {
		t.Fatalf("resume after 11-4: %s\n%s", got, log)
	}
	// A durable consumer with a type filter; its gap reads ask the API
	// for the same types.
	out, _ = runIt("--durable", "analyst", "--types", "credit.spent")
	if got := ids(out); got != "e3@jetstream,e4@api,e6@jetstream" {
		t.Fatalf("durable, credit.spent only: %s", got)
	}
	// The durable remembers its acks: nothing new, nothing printed.
	if out, _ = runIt("--durable", "analyst", "--types", "credit.spent"); out != "" {
		t.Fatalf("durable re-run printed:\n%s", out)
	}
	if _, err := parseConfig([]string{"--after", "x"}, func(string) string { return "" }, &bytes.Buffer{}); err == nil {
		t.Error("a bad --after was accepted")
	}
}
