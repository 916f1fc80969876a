package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/manacore/mana/internal/pgtest"
)

// TestLedgerVerify checks the seeded chains, then tampers with one stored
// payload and expects verify to name that event's cursor.
func TestLedgerVerify(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)
	vars := map[string]string{"DATABASE_URL": dsn, "DATA_DIR": t.TempDir()}
	if res := runCmd(t, vars, "migrate"); res.code != 0 {
		t.Fatalf("migrate exited %d; stderr %q", res.code, res.stderr)
	}

	res := runCmd(t, vars, "ledger", "verify")
	const seeded = "hash chains: ok (4 events)\npostings: ok (0 credit events, trial balance 0)\nbalances: ok (0 accounts at checkpoint 0-0)\n" +
		"accounts: ok (0 write-side accounts)\n"
	if res.code != 0 || res.stdout != seeded || res.stderr != "" {
		t.Fatalf("ledger verify on a seeded database = %d, stdout %q, stderr %q; want 0 and %q",
			res.code, res.stdout, res.stderr, seeded)
	}

	// Tamper with the Plus package's price, bypassing the append-only
	// trigger for one statement.
	conn := connect(t, dsn)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // no-op after commit
	var cursor string
	for _, sql := range []string{
		"ALTER TABLE events DISABLE TRIGGER events_no_update_delete",
		`UPDATE events SET payload = jsonb_set(payload, '{credits}', '1000000')
		 WHERE event_type = 'package.created' AND payload->>'name' = 'Plus'
		 RETURNING tx_id::text || '-' || position`,
		"ALTER TABLE events ENABLE TRIGGER events_no_update_delete",
	} {
		if strings.HasPrefix(sql, "UPDATE") {
			err = tx.QueryRow(ctx, sql).Scan(&cursor)
		} else {
			_, err = tx.Exec(ctx, sql)
		}
		if err != nil {
			t.Fatalf("tamper: %s: %v", sql, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("tamper: commit: %v", err)
	}

	res = runCmd(t, vars, "ledger", "verify")
	if res.code != 1 {
		t.Errorf("ledger verify on a tampered database exited %d, want 1", res.code)
	}
	if res.stdout != "" {
		t.Errorf("ledger verify on a tampered database printed %q", res.stdout)
	}
	errLines := lines(res.stderr)
	if len(errLines) != 1 || !strings.HasSuffix(res.stderr, "\n") {
		t.Fatalf("stderr is %d lines, want one: %q", len(errLines), res.stderr)
	}
	if want := "FAILED at cursor " + cursor + " "; !strings.Contains(errLines[0], want) {
		t.Errorf("stderr %q does not contain %q", errLines[0], want)
	}
	if !strings.HasPrefix(errLines[0], "mana ledger: hash chains: FAILED") {
		t.Errorf("stderr %q does not start with the command and the verdict", errLines[0])
	}

	// The trigger is back: the events table refuses changes again.
	if _, err := conn.Exec(ctx, "DELETE FROM events WHERE event_type = 'package.created'"); err == nil {
		t.Errorf("events accepted a DELETE after the tampering transaction re-enabled its trigger")
	}
}
