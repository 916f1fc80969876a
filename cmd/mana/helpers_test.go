package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/internal/pgtest"
)

// commandTimeout bounds one short command (migrate, ledger verify) in tests.
const commandTimeout = 2 * time.Minute

// envOf returns a getenv over vars; every other variable is unset, so tests
// never see the developer's environment, except for the test defaults of
// DATABASE_MAX_CONNS and RATE_LIMITS below.
func envOf(vars map[string]string) func(string) string {
	return func(name string) string {
		if v, ok := vars[name]; ok {
			return v
		}
		// Many servers run at once in these tests and the shared
		// PostgreSQL allows 100 connections: keep each pool small.
		if name == "DATABASE_MAX_CONNS" {
			return "6"
		}
		// Tests send many requests from 127.0.0.1 (register and login
		// loops, hundreds of concurrent spends): rate limits are off
		// unless a test sets RATE_LIMITS ("" for the defaults).
		if name == "RATE_LIMITS" {
			return "off"
		}
		return ""
	}
}

// result is what one call of run produced.
type result struct {
	code           int
	stdout, stderr string
}

// runCmd calls run with args and vars as the whole environment, bounded by
// commandTimeout.
func runCmd(t *testing.T, vars map[string]string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), commandTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, envOf(vars), &stdout, &stderr)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// lines splits s into its non-empty lines.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// logWriter collects what run writes to stderr and reports the address of
// the first "listening" log line on addr. It is safe for concurrent use.
type logWriter struct {
	mu      sync.Mutex
	all     bytes.Buffer
	partial []byte
	addr    chan string // buffered, receives at most one address
	sent    bool
}

func newLogWriter() *logWriter { return &logWriter{addr: make(chan string, 1)} }

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all.Write(p)
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := w.partial[:i]
		w.partial = w.partial[i+1:]
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(line, &rec) == nil && rec.Msg == "listening" && !w.sent {
			w.sent = true
			w.addr <- rec.Addr
		}
	}
	return len(p), nil
}

// String returns everything written so far.
func (w *logWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

// logMessages returns the msg field of every JSON log line in s.
func logMessages(s string) []string {
	var msgs []string
	for _, l := range lines(s) {
		var rec struct {
			Msg string `json:"msg"`
		}
		if json.Unmarshal([]byte(l), &rec) == nil && rec.Msg != "" {
			msgs = append(msgs, rec.Msg)
		}
	}
	return msgs
}

// connect opens a single connection to dsn, closed when the test ends.
func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// countEvents returns how many events of eventType the database at dsn
// holds.
func countEvents(t *testing.T, dsn, eventType string) int {
	t.Helper()
	conn := connect(t, dsn)
	var n int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM events WHERE event_type = $1", eventType).Scan(&n); err != nil {
		t.Fatalf("count %s events: %v", eventType, err)
	}
	return n
}

// missingDB returns the DSN of a database that does not exist yet on the
// test server, with a name of pgtest's clone prefix, and drops it WITH
// (FORCE) when the test ends.
func missingDB(t *testing.T) string {
	t.Helper()
	admin := pgtest.Admin(t)
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	name := "mana_t_fresh_" + hex.EncodeToString(b)

	var dsn string
	if u, err := url.Parse(admin); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Path, u.RawPath = "/"+name, ""
		dsn = u.String()
	} else {
		dsn = admin + " dbname=" + name
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Errorf("drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
	return dsn
}
