package main

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pgtest"
)

func TestEventsExport(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)
	env := map[string]string{"DATABASE_URL": dsn, "DATA_DIR": t.TempDir()}
	if r := runCmd(t, env, "migrate"); r.code != 0 {
		t.Fatalf("migrate: %d %s", r.code, r.stderr)
	}
	r := runCmd(t, env, "events", "export")
	code, stdout := r.code, r.stdout
	if code != 0 {
		t.Fatalf("export: %d %s", code, r.stderr)
	}
	var evs []eventstore.EventLine
	sc := bufio.NewScanner(strings.NewReader(stdout))
	for sc.Scan() {
		var l eventstore.EventLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		evs = append(evs, l)
	}
	if len(evs) != 4 {
		t.Fatalf("exported %d events, want the 4 seeded packages", len(evs))
	}
	for i, l := range evs {
		if l.EventType != "package.created" || l.Hash == "" || len(l.Payload) == 0 || l.Cursor == "" {
			t.Fatalf("line %d incomplete: %+v", i, l)
		}
		if i > 0 {
			prev, _ := eventstore.ParseCursor(evs[i-1].Cursor)
			cur, _ := eventstore.ParseCursor(l.Cursor)
			if !prev.Less(cur) {
				t.Fatalf("line %d out of feed order", i)
			}
		}
	}
	// A cursor range: after the first, up to and including the third.
	r = runCmd(t, env, "events", "export", "--from", evs[0].Cursor, "--to", evs[2].Cursor)
	code, stdout = r.code, r.stdout
	if got := strings.Count(stdout, "\n"); code != 0 || got != 2 || !strings.Contains(stdout, evs[1].EventID.String()) || !strings.Contains(stdout, evs[2].EventID.String()) {
		t.Fatalf("range export: code %d, %d lines:\n%s", code, got, stdout)
	}
	r = runCmd(t, env, "events", "export", "--types", "user.registered")
	code, stdout = r.code, r.stdout
	if code != 0 || stdout != "" {
		t.Fatalf("type filter kept %q", stdout)
	}
	r = runCmd(t, env, "events", "export", "--format", "csv")
	code, stdout = r.code, r.stdout
	if code != 0 || strings.Count(stdout, "\n") != 5 || !strings.HasPrefix(stdout, "cursor,event_id,event_type") {
		t.Fatalf("csv export: %d\n%s", code, stdout)
	}
	if r := runCmd(t, env, "events", "export", "--from", "nonsense"); r.code != 2 || !strings.Contains(r.stderr, "--from") {
		t.Fatalf("bad cursor: %d %q", r.code, r.stderr)
	}
}
