package main

import (
	"context"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/internal/pgtest"
	manasql "github.com/manacore/mana/sql"
)

// migrateLine is what a successful `mana migrate` prints.
const migrateLine = "migrations applied: %d; default packages seeded: %d\n"

// TestMigrateIsIdempotent runs migrate twice on a migrated clone: the first
// run seeds the four default packages, the second changes nothing.
func TestMigrateIsIdempotent(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)
	vars := map[string]string{"DATABASE_URL": dsn, "DATA_DIR": t.TempDir()}

	if n := countEvents(t, dsn, "package.created"); n != 0 {
		t.Fatalf("fresh clone holds %d package.created events, want 0", n)
	}
	for i, seeded := range []int{4, 0} {
		res := runCmd(t, vars, "migrate")
		if res.code != 0 {
			t.Fatalf("migrate #%d exited %d; stderr %q", i+1, res.code, res.stderr)
		}
		if want := fmt.Sprintf(migrateLine, 0, seeded); res.stdout != want {
			t.Errorf("migrate #%d printed %q, want %q", i+1, res.stdout, want)
		}
		if res.stderr != "" {
			t.Errorf("migrate #%d wrote to stderr: %q", i+1, res.stderr)
		}
		if n := countEvents(t, dsn, "package.created"); n != 4 {
			t.Errorf("after migrate #%d: %d package.created events, want 4", i+1, n)
		}
	}
}

// TestMigrateConcurrentlyCreatesDatabase runs four migrates at once against
// a database that does not exist yet: they race to create it, to apply the
// migrations and to seed, and together do each exactly once.
func TestMigrateConcurrentlyCreatesDatabase(t *testing.T) {
	t.Parallel()
	dsn := missingDB(t)
	if exists(t, dsn) {
		t.Fatal("the database exists before migrate ran")
	}
	vars := map[string]string{"DATABASE_URL": dsn, "DATA_DIR": t.TempDir()}

	const runs = 4
	results := make([]result, runs)
	var start, wg sync.WaitGroup
	start.Add(1)
	for i := range runs {
		wg.Go(func() {
			start.Wait()
			ctx, cancel := context.WithTimeout(t.Context(), commandTimeout)
			defer cancel()
			var stdout, stderr strings.Builder
			code := run(ctx, []string{"migrate"}, envOf(vars), &stdout, &stderr)
			results[i] = result{code: code, stdout: stdout.String(), stderr: stderr.String()}
		})
	}
	start.Done()
	wg.Wait()

	var applied, seeded int
	for i, res := range results {
		if res.code != 0 {
			t.Errorf("migrate #%d exited %d; stderr %q", i+1, res.code, res.stderr)
			continue
		}
		var a, s int
		if _, err := fmt.Sscanf(res.stdout, migrateLine, &a, &s); err != nil {
			t.Errorf("migrate #%d printed %q: %v", i+1, res.stdout, err)
		}
		applied += a
		seeded += s
	}
	if t.Failed() {
		t.FailNow()
	}
	files, err := fs.Glob(manasql.Migrations, "migrations/*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("embedded migrations: %v (%d files)", err, len(files))
	}
	if applied != len(files) {
		t.Errorf("the runs applied %d migrations in all, want each of the %d once", applied, len(files))
	}
	if seeded != 4 {
		t.Errorf("the runs seeded %d packages in all, want 4", seeded)
	}
	if n := countEvents(t, dsn, "package.created"); n != 4 {
		t.Errorf("package.created events = %d, want 4", n)
	}
	// The chains the racing seeders wrote hold.
	res := runCmd(t, vars, "ledger", "verify")
	if res.code != 0 || !strings.HasPrefix(res.stdout, "hash chains: ok (4 events)\n") {
		t.Errorf("ledger verify after concurrent migrate: %d %q %q", res.code, res.stdout, res.stderr)
	}
}

// exists reports whether the database named in dsn exists, asking the
// admin database.
func exists(t *testing.T, dsn string) bool {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("parse %s: %v", dsn, err)
	}
	conn := connect(t, pgtest.Admin(t))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", cfg.Database).Scan(&ok); err != nil {
		t.Fatalf("look up database %s: %v", cfg.Database, err)
	}
	return ok
}
