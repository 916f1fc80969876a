package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pgtest"
)

// importedRow is an events row without what an import assigns afresh
// (tx_id, position, recorded_at).
type importedRow struct {
	EventID                           uuid.UUID
	StreamType, StreamID              string
	StreamVersion                     int64
	EventType                         string
	SchemaVersion                     int32
	OccurredAt                        time.Time
	Metadata, Payload, PrevHash, Hash string
}

// eventRows reads the events of the database at dsn whose ids are in ids
// (every event when ids is nil), by event id.
func eventRows(t *testing.T, dsn string, ids []uuid.UUID) []importedRow {
	t.Helper()
	conn := connect(t, dsn)
	rows, err := conn.Query(t.Context(), `SELECT event_id, stream_type, stream_id, stream_version, event_type, schema_version,
		occurred_at, metadata::text, payload::text, encode(prev_hash, 'hex'), encode(hash, 'hex')
		FROM events WHERE $1::uuid[] IS NULL OR event_id = ANY($1::uuid[]) ORDER BY event_id`, ids)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []importedRow
	for rows.Next() {
		var r importedRow
		if err := rows.Scan(&r.EventID, &r.StreamType, &r.StreamID, &r.StreamVersion, &r.EventType, &r.SchemaVersion,
			&r.OccurredAt, &r.Metadata, &r.Payload, &r.PrevHash, &r.Hash); err != nil {
			t.Fatal(err)
		}
		r.OccurredAt = r.OccurredAt.UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// parseExport decodes the NDJSON of `mana events export`.
func parseExport(t *testing.T, out string) []eventstore.EventLine {
	t.Helper()
	var lines []eventstore.EventLine
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var l eventstore.EventLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	return lines
}

// withoutIdentity drops what differs between databases: the cursor and
// recorded_at; and re-encodes the JSON fields so spacing does not matter.
func withoutIdentity(t *testing.T, ls []eventstore.EventLine) []eventstore.EventLine {
	t.Helper()
	out := make([]eventstore.EventLine, len(ls))
	for i, l := range ls {
		l.Cursor, l.RecordedAt = "", time.Time{}
		for _, m := range []*json.RawMessage{&l.Metadata, &l.Payload} {
			var v any
			if err := json.Unmarshal(*m, &v); err != nil {
				t.Fatal(err)
			}
			*m, _ = json.Marshal(v)
		}
		out[i] = l
	}
	return out
}

// TestEventsImport populates a database through the running service
// (registrations with sealed personal data, logins, spends, concurrent
// idempotent spends on one account), exports it, imports the export into a
// database that does not exist yet, and finds the same events with the
// same hashes: `ledger verify` passes there, the balances read model
// rebuilt from the copy verifies too, and the copy exports the same lines.
// Importing again, or into a database `mana migrate` seeded, is refused.
func TestEventsImport(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil)
	users := []creditUser{newCreditUser(t, s, "import-a"), newCreditUser(t, s, "import-b"), newCreditUser(t, s, "import-c")}
	for i, u := range users {
		use(t, s, u, int64(10+i), "chat", "first spend")
		use(t, s, u, 3, "img", "second spend", idemKey(fmt.Sprintf("import-%d", i)))
	}
	// Concurrent idempotent spends on one account: a transaction takes its
	// id with the idempotency row, before it locks the account, so the
	// feed may show a later version of the stream first.
	var wg sync.WaitGroup
	statuses := make([]int, 12)
	for i := range statuses {
		wg.Go(func() {
			r := s.c.Do(http.MethodPost, "/api/v1/credits/use", map[string]any{"amount": 1, "appId": "chat", "description": "burst"},
				users[0].auth(), idemKey(fmt.Sprintf("burst-%d", i)))
			statuses[i] = r.Status
		})
	}
	wg.Wait()
	for i, st := range statuses {
		if st != http.StatusCreated {
			t.Fatalf("concurrent spend %d = %d", i, st)
		}
	}
	src := s.vars["DATABASE_URL"]
	waitFeedSafe(t, src)

	srcVars := map[string]string{"DATABASE_URL": src, "DATA_DIR": s.vars["DATA_DIR"]}
	res := runCmd(t, srcVars, "events", "export")
	if res.code != 0 {
		t.Fatalf("export = %d, stderr %q", res.code, res.stderr)
	}
	exported := parseExport(t, res.stdout)
	if len(exported) < 20 {
		t.Fatalf("exported %d events, want the seeded packages and the users' history", len(exported))
	}
	file := filepath.Join(t.TempDir(), "events.ndjson")
	if err := os.WriteFile(file, []byte(res.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	ids := make([]uuid.UUID, len(exported))
	for i, l := range exported {
		ids[i] = l.EventID
	}

	// A database that does not exist yet: the import creates and
	// migrates it (without seeding packages: they come with the export).
	dst := missingDB(t)
	dstVars := map[string]string{"DATABASE_URL": dst, "DATA_DIR": t.TempDir()}
	res = runCmd(t, dstVars, "events", "import", "--file", file, "--batch", "7")
	wantBatches := (len(exported) + 6) / 7
	if res.code != 0 || !strings.HasPrefix(res.stdout, fmt.Sprintf("imported %d events in ", len(exported))) {
		t.Fatalf("import = %d, stdout %q, stderr %q; want %d events", res.code, res.stdout, res.stderr, len(exported))
	}
	// One transaction per 7 lines; fewer when all of a batch's events wait
	// for their predecessors.
	var n, batches int
	var upTo string
	if _, err := fmt.Sscanf(res.stdout, "imported %d events in %d transactions, up to cursor %s", &n, &batches, &upTo); err != nil ||
		batches < 1 || batches > wantBatches {
		t.Errorf("import printed %q, want at most %d transactions", res.stdout, wantBatches)
	}

	// Every field but tx_id, position and recorded_at is the source's.
	got, want := eventRows(t, dst, nil), eventRows(t, src, ids)
	if len(want) != len(exported) {
		t.Fatalf("the source holds %d of the %d exported events", len(want), len(exported))
	}
	if !reflect.DeepEqual(got, want) {
		for i := range min(len(got), len(want)) {
			if got[i] != want[i] {
				t.Fatalf("imported event differs:\n got %+v\nwant %+v", got[i], want[i])
			}
		}
		t.Fatalf("imported %d events, want %d", len(got), len(want))
	}

	credit := 0
	for _, l := range exported {
		if strings.HasPrefix(l.EventType, "credit.") {
			credit++
		}
	}
	res = runCmd(t, dstVars, "ledger", "verify")
	wantVerify := fmt.Sprintf("hash chains: ok (%d events)\npostings: ok (%d credit events, trial balance 0)\n", len(exported), credit)
	if res.code != 0 || !strings.HasPrefix(res.stdout, wantVerify) {
		t.Fatalf("ledger verify on the copy = %d, stdout %q, stderr %q; want %q", res.code, res.stdout, res.stderr, wantVerify)
	}
	// The copy is a working ledger: its balances read model, rebuilt from
	// the imported events, equals the fold. The rebuild must reach all of
	// the imported events (a transaction of a parallel test may hold the
	// shared cluster's feed horizon back for a moment).
	deadline := time.Now().Add(time.Minute)
	for {
		res := runCmd(t, dstVars, "projections", "rebuild", "balances")
		if res.code != 0 {
			t.Fatalf("projections rebuild balances on the copy = %d, stderr %q", res.code, res.stderr)
		}
		if res.stdout == "rebuilt balances up to "+upTo+"\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("projections rebuild balances on the copy: %q, want it up to %s", res.stdout, upTo)
		}
		time.Sleep(50 * time.Millisecond)
	}
	res = runCmd(t, dstVars, "ledger", "verify")
	if res.code != 0 || !strings.Contains(res.stdout, fmt.Sprintf("balances: ok (%d accounts at checkpoint ", len(users))) {
		t.Fatalf("ledger verify after the rebuild = %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}

	// The copy exports the same lines but for cursors and recorded_at, in
	// the same order (an event that waited for its predecessor excepted).
	res = runCmd(t, dstVars, "events", "export")
	if res.code != 0 {
		t.Fatalf("export of the copy = %d, stderr %q", res.code, res.stderr)
	}
	again := withoutIdentity(t, parseExport(t, res.stdout))
	orig := withoutIdentity(t, exported)
	byID := map[uuid.UUID]eventstore.EventLine{}
	for _, l := range orig {
		byID[l.EventID] = l
	}
	if len(again) != len(orig) {
		t.Fatalf("the copy exports %d lines, the source %d", len(again), len(orig))
	}
	for i, l := range again {
		if !reflect.DeepEqual(l, byID[l.EventID]) {
			t.Fatalf("line %d of the copy's export:\n%+v\nthe source's:\n%+v", i+1, l, byID[l.EventID])
		}
	}

	// Importing the same file again is refused on its first line, and
	// changes nothing.
	res = runCmd(t, dstVars, "events", "import", "--file", file)
	if res.code != 1 || len(lines(res.stderr)) != 1 ||
		!strings.HasPrefix(res.stderr, "mana events: line 1 (event "+exported[0].EventID.String()) ||
		!strings.Contains(res.stderr, "duplicate event: the database already holds this event; nothing was imported") {
		t.Fatalf("re-import = %d, stderr %q; want one line naming line 1 as a duplicate", res.code, res.stderr)
	}
	if n := len(eventRows(t, dst, nil)); n != len(exported) {
		t.Fatalf("the copy holds %d events after a refused re-import, want %d", n, len(exported))
	}

	// A database `mana migrate` seeded has its own package events.
	seeded := pgtest.NewDB(t)
	seededVars := map[string]string{"DATABASE_URL": seeded, "DATA_DIR": t.TempDir()}
	if res := runCmd(t, seededVars, "migrate"); res.code != 0 {
		t.Fatalf("migrate = %d, stderr %q", res.code, res.stderr)
	}
	res = runCmd(t, seededVars, "events", "import", "--file", file)
	if res.code != 1 || !strings.Contains(res.stderr, "stream version taken") || !strings.Contains(res.stderr, "import into a new database") {
		t.Fatalf("import into a seeded database = %d, stderr %q; want the conflict and the hint", res.code, res.stderr)
	}

	// Usage mistakes.
	if res := runCmd(t, dstVars, "events", "import", "--batch", "0"); res.code != 2 || !strings.Contains(res.stderr, "--batch") {
		t.Errorf("--batch 0 = %d, stderr %q", res.code, res.stderr)
	}
	if res := runCmd(t, dstVars, "events", "import", "--file", filepath.Join(t.TempDir(), "missing.ndjson")); res.code != 1 ||
		!strings.Contains(res.stderr, "no such file") {
		t.Errorf("missing file = %d, stderr %q", res.code, res.stderr)
	}
}
