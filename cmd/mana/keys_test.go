package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/manacore/mana/internal/pgtest"
)

// keyRows parses `keys list` output into its data rows, checking the
// header.
func keyRows(t *testing.T, out string) [][]string {
	t.Helper()
	ls := lines(out)
	if len(ls) == 0 || !slices.Equal(strings.Fields(ls[0]), []string{"KID", "ALG", "NOT_BEFORE", "RETIRE_AFTER", "SIGNING"}) {
		t.Fatalf("keys list header: %q", out)
	}
	var rows [][]string
	for _, l := range ls[1:] {
		f := strings.Fields(l)
		if len(f) != 5 {
			t.Fatalf("keys list row %q", l)
		}
		rows = append(rows, f)
	}
	return rows
}

func TestKeysCommand(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"DATABASE_URL": pgtest.NewDB(t), "DATA_DIR": t.TempDir()}

	res := runCmd(t, vars, "keys", "generate")
	if res.code != 0 {
		t.Fatalf("keys generate: %d %s", res.code, res.stderr)
	}
	res = runCmd(t, vars, "keys", "list")
	if res.code != 0 {
		t.Fatalf("keys list: %d %s", res.code, res.stderr)
	}
	rows := keyRows(t, res.stdout)
	if len(rows) != 1 || rows[0][1] != "RS256" || rows[0][3] != "-" || rows[0][4] != "yes" {
		t.Fatalf("after generate: %v", rows)
	}
	first := rows[0][0]

	before := time.Now()
	res = runCmd(t, vars, "keys", "rotate")
	if res.code != 0 {
		t.Fatalf("keys rotate: %d %s", res.code, res.stderr)
	}
	rows = keyRows(t, runCmd(t, vars, "keys", "list").stdout)
	if len(rows) != 2 || rows[0][0] != first || rows[0][4] != "yes" || rows[1][4] != "no" {
		t.Fatalf("after rotate: %v", rows)
	}
	if !strings.Contains(res.stdout, rows[1][0]) {
		t.Fatalf("rotate output %q does not name the new key %s", res.stdout, rows[1][0])
	}
	notBefore, err := time.Parse(time.RFC3339, rows[1][2])
	if err != nil {
		t.Fatal(err)
	}
	if !notBefore.After(before.Add(14*time.Minute)) || notBefore.After(time.Now().Add(16*time.Minute)) {
		t.Fatalf("rotated key's not_before %s, want about 15 minutes from now", notBefore)
	}
	retire, err := time.Parse(time.RFC3339, rows[0][3])
	if err != nil {
		t.Fatalf("old key's retire_after %q: %v", rows[0][3], err)
	}
	if got := retire.Sub(notBefore); got != 20*time.Minute {
		t.Fatalf("old key retires %s after the new one signs, want 20m", got)
	}
}

func TestKeysHelp(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"DATABASE_URL": "postgres://127.0.0.1:1/none", "DATA_DIR": t.TempDir()}
	for _, args := range [][]string{{"keys", "--help"}, {"keys", "generate", "--help"}, {"keys", "rotate", "-h"}, {"keys", "list", "--help"}} {
		res := runCmd(t, vars, args...)
		if res.code != 0 || !strings.Contains(res.stdout, "keys") || res.stderr != "" {
			t.Fatalf("%v: code %d stdout %q stderr %q", args, res.code, res.stdout, res.stderr)
		}
	}
	if res := runCmd(t, vars, "--help"); !strings.Contains(res.stdout, "mana keys generate|rotate|list") {
		t.Fatal("mana --help does not list keys")
	}
	for _, args := range [][]string{{"keys"}, {"keys", "nope"}, {"keys", "list", "extra"}} {
		if res := runCmd(t, vars, args...); res.code != 2 {
			t.Fatalf("%v: code %d, want 2", args, res.code)
		}
	}
}
