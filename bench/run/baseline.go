package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/internal/password"
)

// pgbenchResult is one pgbench run: TPS and per-transaction latency
// percentiles (ms) from its transaction log.
type pgbenchResult struct {
	Script  string  `json:"script"`
	Clients int     `json:"clients"`
	TPS     float64 `json:"tps"`
	P50     float64 `json:"p50"`
	P95     float64 `json:"p95"`
	P99     float64 `json:"p99"`
}

// The baseline scripts. Each is what the service's write path reduces to
// in PostgreSQL, played by pgbench's C client with no HTTP, no JSON and no
// transaction around it.
const (
	pgbenchSetup = `
DROP TABLE IF EXISTS bench_rows, bench_plain_events;
CREATE TABLE bench_rows (id int PRIMARY KEY, balance bigint NOT NULL);
INSERT INTO bench_rows SELECT g, 1000000000 FROM generate_series(1, 1000) g;
-- The events columns with a primary key only: the ~300-byte INSERT.
CREATE TABLE bench_plain_events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id       uuid        NOT NULL,
    stream_type    text        NOT NULL,
    stream_id      text        NOT NULL,
    stream_version bigint      NOT NULL,
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT statement_timestamp(),
    metadata       jsonb       NOT NULL,
    payload        jsonb       NOT NULL,
    prev_hash      bytea       NOT NULL,
    hash           bytea       NOT NULL
);
`
	pgbenchTeardown = `DROP TABLE IF EXISTS bench_rows, bench_plain_events;`

	scriptUpdateRandom = "\\set id random(1, 1000)\nUPDATE bench_rows SET balance = balance - 1 WHERE id = :id;\n"
	scriptUpdateHot    = "UPDATE bench_rows SET balance = balance - 1 WHERE id = 1;\n"
	// 299 bytes of metadata + payload JSON, a new stream each time (as
	// bench/append.sh's "plain" variant). jsonb drops the space in
	// ": true", which keeps pgbench from reading ":true" as a variable.
	scriptInsert = `INSERT INTO bench_plain_events (event_id, stream_type, stream_id, stream_version, event_type, schema_version,
  occurred_at, metadata, payload, prev_hash, hash)
VALUES (gen_random_uuid(), 'package', gen_random_uuid()::text, 1, 'package.created', 1, now(),
  '{"actor":"system","requestId":"req-bench-00000000","correlationId":"0b0e6f4e-7a43-4c55-9d1e-2f5a8c3b9e10"}',
  '{"packageId":"3f2b6c1e-8d4a-4e7b-9c0d-5a6b7c8d9e0f","name":"Benchmark package, padded to a three-hundred byte event","credits":100,"priceCents":100,"currency":"eur","sortOrder":1,"active": true}',
  '\x0000000000000000000000000000000000000000000000000000000000000000',
  '\x5f3c9a1b2d4e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8');
`
)

var tpsLine = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)

// runPgbench runs script with clients clients for d against dsn and reads
// the latencies from pgbench's per-transaction log.
func runPgbench(dsn, name, script string, clients int, d time.Duration) (pgbenchResult, error) {
	dir, err := os.MkdirTemp("", "pgbench-")
	if err != nil {
		return pgbenchResult{}, err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, name+".sql")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		return pgbenchResult{}, err
	}
	threads := min(clients, runtime.NumCPU())
	cmd := exec.Command("pgbench", "-n", "-M", "prepared", "-j", strconv.Itoa(threads), "-c", strconv.Itoa(clients),
		"-T", strconv.Itoa(int(d.Seconds())), "-l", "--log-prefix", filepath.Join(dir, "log"), "-f", file, dsn)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return pgbenchResult{}, fmt.Errorf("pgbench %s: %v\n%s", name, err, out)
	}
	m := tpsLine.FindSubmatch(out)
	if m == nil {
		return pgbenchResult{}, fmt.Errorf("pgbench %s: no tps line\n%s", name, out)
	}
	r := pgbenchResult{Script: strings.TrimSpace(script), Clients: clients}
	r.TPS, _ = strconv.ParseFloat(string(m[1]), 64)
	// Log lines: client_id transaction_no time_us script_no epoch epoch_us.
	logs, _ := filepath.Glob(filepath.Join(dir, "log.*"))
	var lat []time.Duration
	for _, l := range logs {
		f, err := os.Open(l)
		if err != nil {
			return r, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 3 {
				continue
			}
			us, err := strconv.ParseInt(fs[2], 10, 64)
			if err == nil {
				lat = append(lat, time.Duration(us)*time.Microsecond)
			}
		}
		f.Close()
	}
	slices.Sort(lat)
	s := sample{lat: lat}
	r.P50, r.P95, r.P99 = s.pct(0.50), s.pct(0.95), s.pct(0.99)
	return r, nil
}

// execSQL runs each of sqls on dsn in turn (each in its own implicit
// transaction).
func execSQL(ctx context.Context, dsn string, sqls ...string) error {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return err
	}
	defer pool.Close()
	for _, q := range sqls {
		if _, err := pool.Exec(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// rate runs fn on every CPU for d and returns completions per second.
func rate(d time.Duration, fn func() error) (float64, error) {
	var n atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if err := fn(); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return 0, err
	}
	return float64(n.Load()) / time.Since(start).Seconds(), nil
}

// argon2Rate is the box's argon2id hash rate with the service's default
// parameters (OWASP: 19 MiB, t=2, p=1), one hash per core at a time, as
// the service's hasher runs them.
func argon2Rate(d time.Duration) (float64, error) {
	h := password.New(password.OWASP, 0)
	return rate(d, func() error {
		_, err := h.Hash(context.Background(), benchPassword)
		return err
	})
}

// rs256Rate is the box's RS256 signing rate (RSA-2048, golang-jwt, the
// service's signer) on every core, for claims shaped like its access
// tokens.
func rs256Rate(d time.Duration) (float64, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return 0, err
	}
	return rate(d, func() error {
		now := time.Now()
		c := jwt.MapClaims{
			"sub": uuid.NewString(), "email": "bench@example.com", "role": "user", "sid": uuid.NewString(),
			"iss": "manacore", "aud": []string{"manacore"}, "iat": now.Unix(), "exp": now.Add(15 * time.Minute).Unix(),
			"jti": uuid.NewString(),
		}
		t := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
		t.Header["kid"] = "bench"
		_, err := t.SignedString(key)
		return err
	})
}
