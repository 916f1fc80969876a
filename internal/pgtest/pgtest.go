// Package pgtest gives tests real PostgreSQL databases, fast.
//
// Every test binary finds one server (Admin), migrates one template database
// per set of migrations, and hands each test its own clone of it (NewDB,
// NewPool), dropped when the test ends. Cloning a small template takes tens of
// milliseconds, so tests that must commit can run in parallel, each in its own
// database.
//
// Tests that hold write transactions open must not share a server with other
// tests: the event feed reads below pg_snapshot_xmin, which is cluster-wide, so
// an open transaction in one test would stall the feed of every other. Such
// tests start a private, throwaway server with NewCluster.
//
// The package is imported only from _test.go files.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/internal/pg"
	manasql "github.com/manacore/mana/sql"
)

// EnvAdminDSN names the environment variable that points the tests at a
// PostgreSQL server. Its role needs CREATEDB and must own (or be a superuser
// over) the databases it creates; the first migration also creates roles, so
// CREATEROLE or a superuser is needed once per server.
const EnvAdminDSN = "TEST_DATABASE_URL"

// LocalAdminDSN is the server tried when TEST_DATABASE_URL is unset: the
// local PostgreSQL over its Unix socket, as the current OS user.
const LocalAdminDSN = "postgres:///test?host=/var/run/postgresql"

// PoolMaxConns is the size of the pools NewPool and Cluster.NewPool return.
const PoolMaxConns = 8

// Database name prefixes. Only databases with these prefixes are ever
// dropped by this package.
const (
	templatePrefix = "mana_tpl_"    // + migrations hash: the migrated template
	tmpPrefix      = "mana_tpltmp_" // + hash + random: a template being built
	clonePrefix    = "mana_t_"      // + random: one test's database
)

// Databases left behind by killed test processes (t.Cleanup never ran) are
// dropped by a later process once they are this old. The ages are far above
// any test's lifetime so a running test never loses its database; a template
// dropped under a running process is rebuilt by it (see clone).
const (
	staleClone    = 2 * time.Hour
	staleTmp      = 10 * time.Minute
	staleTemplate = time.Hour
)

// commentPrefix starts the COMMENT ON DATABASE this package writes on every
// database it creates; the rest is the creation time (RFC 3339), which
// pg_database does not record.
const commentPrefix = "pgtest created "

var adminDSN = sync.OnceValues(resolveAdmin)

// Admin returns the DSN of the server tests run against, as a role that may
// create databases. It is, in order: TEST_DATABASE_URL when set; the local
// server (LocalAdminDSN) when it answers; a postgres:15 container started
// through ory/dockertest when a Docker engine is reachable (started once per
// test process and stopped by Docker when the process's -test.timeout runs
// out). When none of them works, Admin fails the test with t.Fatalf: tests
// never skip the database.
//
// The choice is made once per process; Admin is safe for concurrent use.
func Admin(t testing.TB) string {
	t.Helper()
	dsn, err := adminDSN()
	if err != nil {
		t.Fatalf("pgtest: no PostgreSQL server for tests: %v\n"+
			"Set %s to an admin DSN (a role with CREATEDB, e.g. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable), "+
			"start the local server (%s), or make a Docker engine reachable.",
			err, EnvAdminDSN, LocalAdminDSN)
	}
	return dsn
}

func resolveAdmin() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if dsn := os.Getenv(EnvAdminDSN); dsn != "" {
		if err := ping(ctx, dsn); err != nil {
			return "", fmt.Errorf("%s=%s does not answer: %w", EnvAdminDSN, redact(dsn), err)
		}
		return dsn, nil
	}
	localErr := ping(ctx, LocalAdminDSN)
	if localErr == nil {
		return LocalAdminDSN, nil
	}
	dsn, dockerErr := startDocker()
	if dockerErr == nil {
		return dsn, nil
	}
	return "", fmt.Errorf("%s is unset; local server %s: %v; Docker: %v",
		EnvAdminDSN, LocalAdminDSN, localErr, dockerErr)
}

// ping connects to dsn once, with a short bound so an absent server fails
// fast.
func ping(ctx context.Context, dsn string) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return err
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 3*time.Second {
		cfg.ConnectTimeout = 3 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// redact hides the password of a URL-form DSN.
func redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		return u.Redacted()
	}
	return dsn
}

// withDatabase returns dsn pointing at database db instead.
func withDatabase(dsn, db string) string {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Path = "/" + db
		u.RawPath = ""
		return u.String()
	}
	// Keyword/value form: a later keyword overrides an earlier one.
	return dsn + " dbname=" + db
}

// NewDB creates a fresh database for t, a clone of the migrated template, and
// returns its DSN (Admin's DSN with the database replaced). The database is
// dropped WITH (FORCE) when t ends, so connections left open do not block
// the cleanup. The first call in a process builds the template if the server
// lacks it, which takes about a second; later calls take from 40 ms on an
// idle server to a few hundred under heavy load.
//
// NewDB is safe for concurrent use by parallel tests and by test binaries
// running at the same time against the same server. It fails the test with
// t.Fatalf when the server is unreachable or the migrations fail.
func NewDB(t testing.TB) string {
	t.Helper()
	admin := Admin(t)
	pool, err := adminPool()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	name := clonePrefix + randomHex(8)
	if err := clone(t.Context(), pool, name, "" /* default strategy */); err != nil {
		t.Fatalf("pgtest: create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := dropDatabase(ctx, pool, name); err != nil {
			t.Errorf("pgtest: drop test database %s: %v", name, err)
		}
	})
	return withDatabase(admin, name)
}

// NewPool creates a database with NewDB and returns a pool of up to
// PoolMaxConns connections to it, opened with pg.Open. The pool is closed,
// and then the database dropped, when t ends.
func NewPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	dsn := NewDB(t)
	pool, err := pg.Open(t.Context(), dsn, PoolMaxConns)
	if err != nil {
		t.Fatalf("pgtest: open test database: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

var adminPool = sync.OnceValues(func() (*pgxpool.Pool, error) {
	dsn, err := adminDSN()
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse admin DSN: %w", err)
	}
	// Clones of one template may run at once, but each copies the template
	// through the server's I/O: beyond a few at a time they only queue
	// there.
	cfg.MaxConns = 4
	cfg.ConnConfig.RuntimeParams["application_name"] = "pgtest"
	// The pool lives as long as the process: it is never closed.
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("admin pool: %w", err)
	}
	return pool, nil
})

// clone creates database name from the template. An empty strategy leaves
// the server's default, WAL_LOG on PostgreSQL 15: for this ~8 MB template it
// measured 2-4 times faster than FILE_COPY on an idle server (about 30 ms
// against 80 ms, plus 8 ms against 26 ms for the DROP) and no slower under
// load, and FILE_COPY forces two cluster-wide checkpoints per clone, which
// every other test on the server would pay for. BenchmarkClone compares them.
//
// Another process may drop a template it considers stale at any moment
// (after an hour); a clone that finds its template gone rebuilds it once.
func clone(ctx context.Context, pool *pgxpool.Pool, name, strategy string) error {
	for attempt := 0; ; attempt++ {
		tpl, err := tmpl.get(ctx, pool)
		if err != nil {
			return err
		}
		sql := "CREATE DATABASE " + ident(name) + " TEMPLATE " + ident(tpl)
		if strategy != "" {
			sql += " STRATEGY = " + strategy
		}
		_, err = pool.Exec(ctx, sql)
		if err == nil {
			break
		}
		if attempt == 0 && pgCode(err) == "3D000" { // template does not exist
			tmpl.forget(tpl)
			continue
		}
		return fmt.Errorf("clone %s: %w", tpl, err)
	}
	if err := comment(ctx, pool, name); err != nil {
		_ = dropDatabase(context.WithoutCancel(ctx), pool, name)
		return err
	}
	return nil
}

// templateCache remembers the template database of this process.
type templateCache struct {
	mu   sync.Mutex
	name string
	err  error
}

var tmpl templateCache

// get returns the template's name, building it on first use. A failure is
// remembered: the migrations are compiled in, so it would only repeat.
func (tp *templateCache) get(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.name != "" || tp.err != nil {
		return tp.name, tp.err
	}
	// The template outlives the test that happened to ask first: do not
	// let its context cancel the build for everyone.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	name, err := templateName()
	if err != nil {
		tp.err = err
		return "", err
	}
	tp.name, tp.err = ensureTemplate(ctx, pool, name)
	if tp.err == nil {
		collectGarbage(ctx, pool, tp.name)
	}
	return tp.name, tp.err
}

// forget makes the next get look for (and rebuild) the template.
func (tp *templateCache) forget(name string) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.name == name {
		tp.name = ""
	}
}

// templateName is mana_tpl_ and the first 12 hex digits of a SHA-256 over
// the embedded migration files' names and contents, so editing, adding or
// renaming a migration yields a new template.
func templateName() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(manasql.Migrations, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(manasql.Migrations, path)
		if err != nil {
			return err
		}
		// Length prefixes keep name/content boundaries unambiguous.
		fmt.Fprintf(h, "%d:%s\n%d:", len(path), path, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hash migrations: %w", err)
	}
	return templatePrefix + hex.EncodeToString(h.Sum(nil))[:12], nil
}

// ensureTemplate makes sure the migrated template called name exists on the
// server and returns name.
//
// Test binaries of different packages run in parallel processes, so the
// template is built race-free: each builder migrates its own uniquely named
// database and renames it into place; a rename that finds the name taken
// lost the race, and the loser drops its copy. A database with the template's
// name is therefore always completely migrated. It is marked IS_TEMPLATE and
// ALLOW_CONNECTIONS false before the rename, so no session can hold it open
// and block CREATE DATABASE … TEMPLATE.
func ensureTemplate(ctx context.Context, pool *pgxpool.Pool, name string) (string, error) {
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", fmt.Errorf("look up template: %w", err)
	}
	if exists {
		return name, nil
	}

	tmp := tmpPrefix + strings.TrimPrefix(name, templatePrefix) + "_" + randomHex(4)
	if _, err := pool.Exec(ctx, "CREATE DATABASE "+ident(tmp)); err != nil {
		return "", fmt.Errorf("create template: %w", err)
	}
	// From here on, tmp is ours to drop on every failure.
	fail := func(err error) (string, error) {
		_ = dropDatabase(context.WithoutCancel(ctx), pool, tmp)
		return "", err
	}
	if err := comment(ctx, pool, tmp); err != nil {
		return fail(err)
	}
	if err := migrate(ctx, withDatabase(pool.Config().ConnString(), tmp)); err != nil {
		return fail(fmt.Errorf("migrate template: %w", err))
	}
	_, err := pool.Exec(ctx, "ALTER DATABASE "+ident(tmp)+" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
	if err != nil {
		return fail(fmt.Errorf("mark template: %w", err))
	}
	// RENAME waits (up to 5 s, server-side) for the migration's sessions to
	// finish exiting.
	_, err = pool.Exec(ctx, "ALTER DATABASE "+ident(tmp)+" RENAME TO "+ident(name))
	switch {
	case err == nil:
		return name, nil
	case pgCode(err) == "42P04" || pgCode(err) == "23505":
		// Another process won: duplicate_database when its rename had
		// committed, unique_violation on pg_database's name index when both
		// renames ran at once.
		_ = dropDatabase(ctx, pool, tmp)
		return name, nil
	default:
		return fail(fmt.Errorf("rename template: %w", err))
	}
}

// migrate applies the embedded migrations to the database at dsn and closes
// every connection it opened.
func migrate(ctx context.Context, dsn string) error {
	pool, err := pg.Open(ctx, dsn, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	m, err := pg.NewMigrator(pool)
	if err != nil {
		return err
	}
	defer m.Close()
	_, err = m.Up(ctx)
	return err
}

// comment records the creation time of database name, for collectGarbage.
func comment(ctx context.Context, pool *pgxpool.Pool, name string) error {
	// The literal is an RFC 3339 time: it holds no quote.
	_, err := pool.Exec(ctx, "COMMENT ON DATABASE "+ident(name)+" IS '"+commentPrefix+time.Now().UTC().Format(time.RFC3339)+"'")
	if err != nil {
		return fmt.Errorf("comment on database %s: %w", name, err)
	}
	return nil
}

// collectGarbage drops, best-effort, the databases earlier processes left
// behind: clones of killed tests, half-built templates and templates of
// other migrations, once they are old enough that no running test can still
// use them (see staleClone). It never touches the current template, and it
// gives up quickly on a database someone is cloning.
func collectGarbage(ctx context.Context, pool *pgxpool.Pool, current string) {
	rows, err := pool.Query(ctx, `
SELECT datname, coalesce(shobj_description(oid, 'pg_database'), '')
FROM pg_database
WHERE datname LIKE 'mana\_t%'`)
	if err != nil {
		return
	}
	type db struct{ name, comment string }
	dbs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (db, error) {
		var d db
		return d, r.Scan(&d.name, &d.comment)
	})
	if err != nil {
		return
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SET lock_timeout = '2s'"); err != nil {
		return
	}
	defer func() { _, _ = conn.Exec(ctx, "RESET lock_timeout") }()
	now := time.Now()
	for _, d := range dbs {
		if d.name == current || !strings.HasPrefix(d.comment, commentPrefix) {
			continue // not ours, or in use
		}
		created, err := time.Parse(time.RFC3339, strings.TrimPrefix(d.comment, commentPrefix))
		if err != nil {
			continue
		}
		age := now.Sub(created)
		switch {
		case strings.HasPrefix(d.name, tmpPrefix) && age > staleTmp,
			strings.HasPrefix(d.name, templatePrefix) && age > staleTemplate,
			strings.HasPrefix(d.name, clonePrefix) && age > staleClone:
			_, _ = conn.Exec(ctx, "ALTER DATABASE "+ident(d.name)+" WITH IS_TEMPLATE false")
			_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(d.name)+" WITH (FORCE)")
		}
	}
}

// dropDatabase drops name, also when it is marked as a template, closing
// whatever sessions are still connected to it.
func dropDatabase(ctx context.Context, db *pgxpool.Pool, name string) error {
	if strings.HasPrefix(name, templatePrefix) || strings.HasPrefix(name, tmpPrefix) {
		if _, err := db.Exec(ctx, "ALTER DATABASE "+ident(name)+" WITH IS_TEMPLATE false"); err != nil && pgCode(err) != "3D000" {
			return err
		}
	}
	_, err := db.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)")
	return err
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}
