package main

import (
	"strings"
	"testing"
)

// noDB points commands at a server that is not there, so a test that
// wrongly gets past argument parsing fails fast instead of creating a
// database or ./data.
var noDB = map[string]string{
	"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none?connect_timeout=1&sslmode=disable",
	"DATA_DIR":     "/nonexistent/mana-test-data",
}

// TestRunWithoutArgs prints the usage and fails with a one-line reason.
func TestRunWithoutArgs(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{nil, {}} {
		res := runCmd(t, noDB, args...)
		if res.code != 2 {
			t.Errorf("run(%q) exited %d, want 2", args, res.code)
		}
		if res.stdout != usage {
			t.Errorf("run(%q) stdout %q, want the usage", args, res.stdout)
		}
		if l := lines(res.stderr); len(l) != 1 || !strings.Contains(l[0], "--help") {
			t.Errorf("run(%q) stderr %q, want one line pointing at --help", args, res.stderr)
		}
	}
}

// TestRunHelp checks --help on every command: exit 0, the command's usage
// on stdout, nothing on stderr.
func TestRunHelp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--help"}, usage},
		{[]string{"-h"}, usage},
		{[]string{"help"}, usage},
		{[]string{"serve", "--help"}, "Usage: mana serve"},
		{[]string{"serve", "-h"}, "Usage: mana serve"},
		{[]string{"migrate", "--help"}, "Usage: mana migrate"},
		{[]string{"ledger", "--help"}, "Usage: mana ledger verify"},
		{[]string{"ledger", "verify", "--help"}, "Usage: mana ledger verify"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			res := runCmd(t, noDB, tc.args...)
			if res.code != 0 {
				t.Errorf("exit %d, want 0; stderr %q", res.code, res.stderr)
			}
			if !strings.HasPrefix(res.stdout, tc.want) {
				t.Errorf("stdout %q, want it to start with %q", res.stdout, tc.want)
			}
			if res.stderr != "" {
				t.Errorf("stderr %q, want nothing", res.stderr)
			}
		})
	}
	// serve's help documents its flag.
	if res := runCmd(t, noDB, "serve", "--help"); !strings.Contains(res.stdout, "-port") {
		t.Errorf("serve --help does not document --port: %q", res.stdout)
	}
}

// TestRunUsageErrors checks that command-line mistakes exit 2 with a
// one-line reason on stderr naming the mistake, without doing any work.
func TestRunUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string // in the one stderr line
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"--port"}, `unknown command "--port"`},
		{[]string{"serve", "--bogus"}, "-bogus"},
		{[]string{"serve", "--port", "x"}, "-port"},
		{[]string{"serve", "extra"}, `unexpected argument "extra"`},
		{[]string{"migrate", "now"}, `unexpected argument "now"`},
		{[]string{"ledger"}, "missing subcommand"},
		{[]string{"ledger", "audit"}, `unknown subcommand "audit"`},
		{[]string{"ledger", "verify", "--all"}, "-all"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			res := runCmd(t, noDB, tc.args...)
			if res.code != 2 {
				t.Errorf("exit %d, want 2; stderr %q", res.code, res.stderr)
			}
			l := lines(res.stderr)
			if len(l) != 1 || !strings.HasSuffix(res.stderr, "\n") {
				t.Fatalf("stderr %q, want exactly one line", res.stderr)
			}
			if !strings.HasPrefix(l[0], "mana") || !strings.Contains(l[0], tc.want) {
				t.Errorf("stderr %q, want a line from mana containing %q", l[0], tc.want)
			}
		})
	}
}

// TestRunUnknownCommandSkipsConfig checks that an unknown command is
// reported as such even when the environment is invalid too.
func TestRunUnknownCommandSkipsConfig(t *testing.T) {
	t.Parallel()
	res := runCmd(t, map[string]string{"PORT": "abc"}, "frobnicate")
	if res.code != 2 || !strings.Contains(res.stderr, "unknown command") || strings.Contains(res.stderr, "PORT") {
		t.Errorf("exit %d stderr %q, want 2 and the unknown command", res.code, res.stderr)
	}
}

// TestRunRuntimeErrorIsOneLine checks that a failing command exits 1 with
// its (possibly multi-line) error folded onto one line.
func TestRunRuntimeErrorIsOneLine(t *testing.T) {
	t.Parallel()
	res := runCmd(t, noDB, "ledger", "verify")
	if res.code != 1 {
		t.Errorf("ledger verify without a server exited %d, want 1", res.code)
	}
	if l := lines(res.stderr); len(l) != 1 || !strings.HasPrefix(l[0], "mana ledger: ") {
		t.Errorf("stderr %q, want one line starting \"mana ledger: \"", res.stderr)
	}
	if got := oneLine("a\n\tb  c\r\n"); got != "a b c" {
		t.Errorf("oneLine = %q", got)
	}
}
