package eventstore_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pgtest"
)

// storedEvent is an events row without what an import assigns afresh
// (tx_id, position, recorded_at).
type storedEvent struct {
	EventID              uuid.UUID
	StreamType, StreamID string
	StreamVersion        int64
	EventType            string
	SchemaVersion        int32
	OccurredAt           time.Time
	Metadata, Payload    string
	PrevHash, Hash       string
}

// storedEvents reads every event of the pool's database, by event id.
func storedEvents(t *testing.T, pool *pgxpool.Pool) []storedEvent {
	t.Helper()
	rows, err := pool.Query(ctxT(t), `SELECT event_id, stream_type, stream_id, stream_version, event_type, schema_version,
		occurred_at, metadata::text, payload::text, encode(prev_hash, 'hex'), encode(hash, 'hex')
		FROM events ORDER BY event_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []storedEvent
	for rows.Next() {
		var e storedEvent
		if err := rows.Scan(&e.EventID, &e.StreamType, &e.StreamID, &e.StreamVersion, &e.EventType, &e.SchemaVersion,
			&e.OccurredAt, &e.Metadata, &e.Payload, &e.PrevHash, &e.Hash); err != nil {
			t.Fatal(err)
		}
		e.OccurredAt = e.OccurredAt.UTC()
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// exportLines reads the whole feed of e's database as `mana events export`
// writes it: one JSON EventLine per element. Another test's transaction may
// hold the shared cluster's horizon back for a moment, so it reads until
// the feed shows every event.
func exportLines(t *testing.T, e *testEnv) [][]byte {
	t.Helper()
	want := e.count(t, "SELECT count(*) FROM events")
	deadline := time.Now().Add(time.Minute)
	for {
		var out [][]byte
		var after eventstore.Cursor
		for {
			recs, err := e.store.ReadFeed(ctxT(t), after, 500)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				b, err := json.Marshal(r.Line())
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, b)
				after = r.Cursor
			}
			if len(recs) < 500 {
				break
			}
		}
		if len(out) == want {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("the feed shows %d of %d events after a minute", len(out), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ndjson(lines [][]byte) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// populate appends a small history of every shape: a user's registration
// with sealed personal data, a credit account's stream, a package with
// updates, and one command appending to two streams at once.
func populate(t *testing.T, e *testEnv) {
	t.Helper()
	user, err := register(t, e, "import.person@example.com", "Import Person", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA")
	if err != nil {
		t.Fatal(err)
	}
	acct := domain.Account{UserID: user}
	credit := func(ev domain.CreditEvent, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.appendOne(t, domain.StreamCreditAccount, user.String(), eventstore.AnyVersion, ev); err != nil {
			t.Fatal(err)
		}
		acct.Apply(ev)
	}
	credit(domain.NewSignupBonus(user, 150), nil)
	credit(acct.Grant(uuid.New(), 300, "paid", "welcome"))
	credit(acct.Spend(uuid.New(), "chat", 40, "a spend with a sealed description", map[string]any{"k": "v"}))
	credit(acct.Adjust(uuid.New(), -5, "correction"))

	p := pkg("import")
	if _, err := e.appendOne(t, domain.StreamPackage, p.PackageID.String(), 0, p); err != nil {
		t.Fatal(err)
	}
	price, active := int64(250), false
	for v, u := range []domain.PackageUpdated{{PackageID: p.PackageID, PriceCents: &price}, {PackageID: p.PackageID, Active: &active}} {
		if _, err := e.appendOne(t, domain.StreamPackage, p.PackageID.String(), int64(v+1), u); err != nil {
			t.Fatal(err)
		}
	}
	// Two streams in one command.
	q, r := pkg("pair-a"), pkg("pair-b")
	_, err = e.store.Execute(ctxT(t), systemCmd("test.pair"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		_, err := tx.Append(ctx,
			eventstore.StreamAppend{StreamType: domain.StreamPackage, StreamID: q.PackageID.String(), Events: []domain.Event{q}},
			eventstore.StreamAppend{StreamType: domain.StreamPackage, StreamID: r.PackageID.String(), Events: []domain.Event{r}})
		return domain.Receipt{Status: http.StatusCreated}, err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// newTarget is an empty migrated database and a store over it without a
// keyring: an analyst's scratch copy.
func newTarget(t *testing.T) *testEnv {
	t.Helper()
	pool := pgtest.NewPool(t)
	s, err := eventstore.New(pool, eventstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{pool: pool, store: s}
}

func importBytes(t *testing.T, e *testEnv, in []byte, opts eventstore.ImportOptions) (eventstore.ImportReport, error) {
	t.Helper()
	return e.store.Import(ctxT(t), bytes.NewReader(in), opts)
}

// verifyClean runs the auditor's checks on e's database and fails the test
// on a discrepancy.
func verifyClean(t *testing.T, e *testEnv, events int) {
	t.Helper()
	rep, d, err := e.store.VerifyLedger(ctxT(t), eventstore.VerifyOptions{})
	if err != nil || d != nil {
		t.Fatalf("VerifyLedger: %v, %v", err, d)
	}
	if rep.Events != int64(events) {
		t.Fatalf("VerifyLedger checked %d events, want %d", rep.Events, events)
	}
}

// TestImportRoundTrip exports a populated database, imports it into a
// fresh one and finds the same events with the same hashes, the chains
// verifying; importing it again is refused without a change.
func TestImportRoundTrip(t *testing.T) {
	t.Parallel()
	src := newEnv(t)
	populate(t, src)
	lines := exportLines(t, src)
	in := ndjson(lines)

	dst := newTarget(t)
	for _, batch := range []int{0, 3} {
		t.Run(fmt.Sprintf("batch=%d", batch), func(t *testing.T) {
			dst := dst
			if batch != 0 {
				dst = newTarget(t)
			}
			rep, err := importBytes(t, dst, in, eventstore.ImportOptions{BatchSize: batch})
			if err != nil {
				t.Fatalf("import: %v (report %+v)", err, rep)
			}
			wantBatches := int64(1)
			if batch != 0 {
				wantBatches = int64((len(lines) + batch - 1) / batch)
			}
			if rep.Lines != int64(len(lines)) || rep.Events != int64(len(lines)) || rep.Batches != wantBatches || rep.Last.IsZero() {
				t.Fatalf("report %+v, want %d lines and events in %d batches", rep, len(lines), wantBatches)
			}
			if got, want := storedEvents(t, dst.pool), storedEvents(t, src.pool); !reflect.DeepEqual(got, want) {
				t.Fatalf("imported events differ:\n got %+v\nwant %+v", got, want)
			}
			verifyClean(t, dst, len(lines))
			// The target's own export carries the same lines but for the
			// cursor and recorded_at.
			again := exportLines(t, dst)
			for i := range again {
				var a, b eventstore.EventLine
				_ = json.Unmarshal(again[i], &a)
				_ = json.Unmarshal(lines[i], &b)
				a.Cursor, a.RecordedAt, b.Cursor, b.RecordedAt = "", time.Time{}, "", time.Time{}
				if !reflect.DeepEqual(normalize(t, a), normalize(t, b)) {
					t.Fatalf("line %d exported from the copy:\n%+v\nfrom the source:\n%+v", i+1, a, b)
				}
			}
		})
	}

	// A second import of the same file changes nothing.
	before := storedEvents(t, dst.pool)
	rep, err := importBytes(t, dst, in, eventstore.ImportOptions{})
	var ie *eventstore.ImportError
	if !errors.Is(err, eventstore.ErrImportDuplicate) || !errors.As(err, &ie) || ie.Line != 1 || rep.Events != 0 {
		t.Fatalf("re-import: %v (report %+v), want a duplicate at line 1 and nothing imported", err, rep)
	}
	if !reflect.DeepEqual(storedEvents(t, dst.pool), before) {
		t.Fatal("a refused re-import changed the events")
	}
}

// normalize re-encodes a line's JSON fields so key order and spacing do
// not matter.
func normalize(t *testing.T, l eventstore.EventLine) eventstore.EventLine {
	t.Helper()
	for _, m := range []*json.RawMessage{&l.Metadata, &l.Payload} {
		var v any
		if err := json.Unmarshal(*m, &v); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(v)
		*m = b
	}
	return l
}

// TestImportContinuesAStream imports an export in two parts: the second
// part's streams continue where the first part left them.
func TestImportContinuesAStream(t *testing.T) {
	t.Parallel()
	src := newEnv(t)
	populate(t, src)
	lines := exportLines(t, src)
	dst := newTarget(t)
	half := len(lines) / 2
	if _, err := importBytes(t, dst, ndjson(lines[:half]), eventstore.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := importBytes(t, dst, ndjson(lines[half:]), eventstore.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(storedEvents(t, dst.pool), storedEvents(t, src.pool)) {
		t.Fatal("the two parts do not add up to the source")
	}
	verifyClean(t, dst, len(lines))
}

// longestStream returns the indexes of the lines of the stream with the
// most events, in input order.
func longestStream(t *testing.T, lines [][]byte) []int {
	t.Helper()
	by := map[string][]int{}
	for i, raw := range lines {
		var l eventstore.EventLine
		if err := json.Unmarshal(raw, &l); err != nil {
			t.Fatal(err)
		}
		k := l.StreamType + "/" + l.StreamID
		by[k] = append(by[k], i)
	}
	var best []int
	for _, idx := range by {
		if len(idx) > len(best) {
			best = idx
		}
	}
	if len(best) < 4 {
		t.Fatalf("longest stream has %d events, want at least 4", len(best))
	}
	return best
}

func edit(t *testing.T, raw []byte, f func(*eventstore.EventLine)) []byte {
	t.Helper()
	var l eventstore.EventLine
	if err := json.Unmarshal(raw, &l); err != nil {
		t.Fatal(err)
	}
	f(&l)
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rehash(t *testing.T, l *eventstore.EventLine) {
	t.Helper()
	r, err := l.Record()
	if err != nil {
		t.Fatal(err)
	}
	h, err := eventstore.ComputeHash(&r)
	if err != nil {
		t.Fatal(err)
	}
	l.Hash = hex.EncodeToString(h)
}

// TestImportOutOfStreamOrder: the feed may show a stream's version n+1
// before version n; the import holds it back until its predecessor came,
// within MaxPending.
func TestImportOutOfStreamOrder(t *testing.T) {
	t.Parallel()
	src := newEnv(t)
	populate(t, src)
	lines := exportLines(t, src)
	s := longestStream(t, lines)
	swapped := append([][]byte(nil), lines...)
	// Version 3 and 4 of the stream before version 2.
	v2 := swapped[s[1]]
	copy(swapped[s[1]:], swapped[s[1]+1:s[3]+1])
	swapped[s[3]] = v2

	for _, batch := range []int{0, 2} {
		dst := newTarget(t)
		rep, err := importBytes(t, dst, ndjson(swapped), eventstore.ImportOptions{BatchSize: batch})
		if err != nil {
			t.Fatalf("batch %d: %v (report %+v)", batch, err, rep)
		}
		if !reflect.DeepEqual(storedEvents(t, dst.pool), storedEvents(t, src.pool)) {
			t.Fatalf("batch %d: the events differ", batch)
		}
		verifyClean(t, dst, len(lines))
	}

	// Two events waiting is one too many for MaxPending 1.
	dst := newTarget(t)
	_, err := importBytes(t, dst, ndjson(swapped), eventstore.ImportOptions{MaxPending: 1})
	var ie *eventstore.ImportError
	if !errors.Is(err, eventstore.ErrImportOrder) || !errors.As(err, &ie) || ie.Line != int64(s[2]+1) {
		t.Fatalf("MaxPending 1: %v, want ErrImportOrder at line %d", err, s[2]+1)
	}
}

// TestImportRefusesBadInput: every kind of bad line stops the import at
// that line, and the transaction it would have been part of inserts
// nothing.
func TestImportRefusesBadInput(t *testing.T) {
	t.Parallel()
	src := newEnv(t)
	populate(t, src)
	lines := exportLines(t, src)
	s := longestStream(t, lines)
	mid := s[1] // version 2 of the longest stream

	with := func(i int, raw []byte) [][]byte {
		out := append([][]byte(nil), lines...)
		out[i] = raw
		return out
	}
	without := func(i int) [][]byte {
		out := append([][]byte(nil), lines[:i]...)
		return append(out, lines[i+1:]...)
	}
	for _, tc := range []struct {
		name   string
		in     [][]byte
		kind   error
		line   int
		reason string
	}{
		{"not JSON", with(mid, []byte(`{"event_id":`)), eventstore.ErrImportFormat, mid + 1, "invalid JSON"},
		{"CSV", with(0, []byte("cursor,event_id,event_type")), eventstore.ErrImportFormat, 1, "invalid JSON"},
		{"payload changed", with(mid, edit(t, lines[mid], func(l *eventstore.EventLine) {
			l.Payload = bytes.Replace(l.Payload, []byte(`"userId"`), []byte(`"userID"`), 1)
		})), eventstore.ErrImportHash, mid + 1, "hash to"},
		{"metadata changed", with(mid, edit(t, lines[mid], func(l *eventstore.EventLine) {
			l.Metadata = json.RawMessage(`{"actor":"admin:forged"}`)
		})), eventstore.ErrImportHash, mid + 1, "hash to"},
		{"occurred_at changed", with(mid, edit(t, lines[mid], func(l *eventstore.EventLine) {
			l.OccurredAt = l.OccurredAt.Add(time.Microsecond)
		})), eventstore.ErrImportHash, mid + 1, "hash to"},
		{"rehashed on a forged prev_hash", with(mid, edit(t, lines[mid], func(l *eventstore.EventLine) {
			l.PrevHash = strings.Repeat("ab", 32)
			rehash(t, l)
		})), eventstore.ErrImportChain, mid + 1, "is not the hash of version 1"},
		{"rehashed payload, next link broken", with(mid, edit(t, lines[mid], func(l *eventstore.EventLine) {
			l.Payload = bytes.Replace(l.Payload, []byte(`"userId"`), []byte(`"userID"`), 1)
			rehash(t, l)
		})), eventstore.ErrImportChain, s[2] + 1, "is not the hash of version 2"},
		{"duplicate line", append(append([][]byte(nil), lines...), lines[mid]), eventstore.ErrImportDuplicate, len(lines) + 1, fmt.Sprintf("also on line %d", mid+1)},
		{"middle event missing", without(mid), eventstore.ErrImportChain, s[2], "version 2 of its stream is not in the input"},
		{"bad hash", with(mid, edit(t, lines[mid], func(l *eventstore.EventLine) { l.Hash = "zz" })), eventstore.ErrImportFormat, mid + 1, "hash: not hex"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dst := newTarget(t)
			rep, err := importBytes(t, dst, ndjson(tc.in), eventstore.ImportOptions{})
			var ie *eventstore.ImportError
			if !errors.Is(err, tc.kind) || !errors.As(err, &ie) {
				t.Fatalf("import: %v, want %v", err, tc.kind)
			}
			if ie.Line != int64(tc.line) || !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("import: %v, want line %d and %q", err, tc.line, tc.reason)
			}
			got := dst.count(t, "SELECT count(*) FROM events")
			if int64(got) != rep.Events {
				t.Errorf("%d events in the database, the report says %d", got, rep.Events)
			}
			// Whatever was committed before the failure still verifies.
			verifyClean(t, dst, got)
		})
	}
}

// TestImportRefusesAnotherHistory: a database with another event at a
// stream version the import brings is left alone.
func TestImportRefusesAnotherHistory(t *testing.T) {
	t.Parallel()
	src := newEnv(t)
	p := pkg("shared")
	if _, err := src.appendOne(t, domain.StreamPackage, p.PackageID.String(), 0, p); err != nil {
		t.Fatal(err)
	}
	lines := exportLines(t, src)

	dst := newEnvOn(t, pgtest.NewPool(t))
	// The same package, appended independently: another event id and hash.
	if _, err := dst.appendOne(t, domain.StreamPackage, p.PackageID.String(), 0, p); err != nil {
		t.Fatal(err)
	}
	before := storedEvents(t, dst.pool)
	_, err := importBytes(t, dst, ndjson(lines), eventstore.ImportOptions{})
	if !errors.Is(err, eventstore.ErrImportConflict) || !strings.Contains(err.Error(), "line 1 ") {
		t.Fatalf("import: %v, want ErrImportConflict at line 1", err)
	}
	if !reflect.DeepEqual(storedEvents(t, dst.pool), before) {
		t.Fatal("a refused import changed the events")
	}
}
