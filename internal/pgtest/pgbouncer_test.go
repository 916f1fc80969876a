package pgtest

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/manacore/mana/internal/pg"
)

// TestPgBouncerTransactionMode checks the PgBouncer of NewPgBouncer and,
// through it, what the service relies on: pg.Open's startup parameters are
// accepted, pg.Begin's multi-statement begin query and pg.QueryRow's
// pipeline keep the actor for their transaction only, and
// idle_in_transaction_session_timeout applies per transaction.
func TestPgBouncerTransactionMode(t *testing.T) {
	t.Parallel()
	b := NewPgBouncer(t, Admin(t))
	dsn := b.Through(t, NewDB(t))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	cfg := map[string]string{}
	for _, row := range b.Show(t, "SHOW CONFIG") {
		cfg[row["key"]] = row["value"]
	}
	if cfg["pool_mode"] != "transaction" {
		t.Fatalf("pool_mode = %q", cfg["pool_mode"])
	}

	pool, err := pg.Open(ctx, dsn, 4)
	if err != nil {
		t.Fatalf("pg.Open through pgbouncer: %v", err)
	}
	defer pool.Close()
	if mode := pool.Config().ConnConfig.DefaultQueryExecMode; mode != pgx.QueryExecModeCacheDescribe {
		t.Fatalf("DefaultQueryExecMode = %v, want cache_describe", mode)
	}

	user := uuid.New()
	actor := pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user}
	err = pg.InTx(ctx, pool, actor, func(tx pgx.Tx) error {
		var role, scope, uid, idle string
		err := tx.QueryRow(ctx, "SELECT current_user, mana_scope(), mana_user_id()::text, current_setting('idle_in_transaction_session_timeout')").
			Scan(&role, &scope, &uid, &idle)
		if err != nil {
			return err
		}
		if role != "mana_app" || scope != "user" || uid != user.String() || idle != "15s" {
			t.Errorf("in tx: role=%s scope=%s user=%s idle_in_transaction_session_timeout=%s", role, scope, uid, idle)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("InTx through pgbouncer: %v", err)
	}

	var role, uid string
	if err := pg.QueryRow(ctx, pool, actor, "SELECT current_user, mana_user_id()::text", nil, &role, &uid); err != nil {
		t.Fatalf("QueryRow through pgbouncer: %v", err)
	}
	if role != "mana_app" || uid != user.String() {
		t.Errorf("QueryRow: role=%s user=%s", role, uid)
	}

	// Many statements with parameters at once, on every server connection:
	// nothing is prepared, so nothing is missing on another connection.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			var n int
			if err := pool.QueryRow(ctx, "SELECT $1::int + 1", i).Scan(&n); err != nil {
				errs <- err
			} else if n != i+1 {
				errs <- errors.New("wrong sum")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("parallel query: %v", err)
	}

	// Outside a transaction nothing of the actor or the timeout is left on
	// whichever server connection answers.
	for range 8 {
		var role, idle string
		var scope *string
		if err := pool.QueryRow(ctx, "SELECT current_user, current_setting('mana.scope', true), current_setting('idle_in_transaction_session_timeout')").Scan(&role, &scope, &idle); err != nil {
			t.Fatal(err)
		}
		if role == "mana_app" || (scope != nil && *scope != "") || idle != "0" {
			t.Fatalf("a server connection kept a transaction's settings: role=%s scope=%v idle=%s", role, scope, idle)
		}
	}

	if n := b.Transactions(t, dbName(t, dsn)); n < 64 {
		t.Errorf("pgbouncer passed %d transactions to the database, want ≥ 64", n)
	}
}

// TestPgBouncerExecModes shows why the service uses pgx's cache_describe
// mode behind PgBouncer 1.18 in transaction mode: the default mode's named
// prepared statements do not follow the client to another server
// connection, and mode exec cannot encode the service's parameter types.
func TestPgBouncerExecModes(t *testing.T) {
	t.Parallel()
	b := NewPgBouncer(t, Admin(t))
	dsn := b.DSN(dbName(t, Admin(t)))
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ids := []uuid.UUID{uuid.New(), uuid.New()}
	meta := map[string]any{"model": "small", "tokens": 42}
	const q = "SELECT cardinality($1::uuid[]), $2::jsonb ->> 'model'"

	t.Run("cache_statement breaks", func(t *testing.T) {
		client := dial(t, ctx, strings.Replace(dsn, "cache_describe", "cache_statement", 1))
		holder := dial(t, ctx, dsn)
		var n int
		// Prepared on the server connection that is free first …
		if err := client.QueryRow(ctx, "SELECT $1::int", 1).Scan(&n); err != nil {
			t.Fatal(err)
		}
		// … which another client then holds in a transaction (PgBouncer
		// hands out the most recently released connection first).
		tx, err := holder.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(context.Background())
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		err = client.QueryRow(ctx, "SELECT $1::int", 1).Scan(&n)
		if err == nil {
			t.Fatal("a statement prepared on one server connection ran on another")
		}
		t.Logf("as expected: %v", err)
	})
	t.Run("exec cannot encode uuid[]", func(t *testing.T) {
		client := dial(t, ctx, strings.Replace(dsn, "cache_describe", "exec", 1))
		var n int
		var model string
		err := client.QueryRow(ctx, q, ids, meta).Scan(&n, &model)
		if err == nil {
			t.Fatal("mode exec encoded []uuid.UUID: reconsider the choice of cache_describe")
		}
		t.Logf("as expected: %v", err)
	})
	t.Run("cache_describe works", func(t *testing.T) {
		client := dial(t, ctx, dsn)
		for range 3 { // described once, then from the cache
			var n int
			var model string
			if err := client.QueryRow(ctx, q, ids, meta).Scan(&n, &model); err != nil {
				t.Fatal(err)
			}
			if n != 2 || model != "small" {
				t.Fatalf("got %d %q", n, model)
			}
		}
	})
}

// TestPgBouncerPoolsPerTransaction proves transaction pooling: a client
// whose statements run while another client holds a transaction open gets
// different server connections over time, which session pooling would
// never give it.
func TestPgBouncerPoolsPerTransaction(t *testing.T) {
	t.Parallel()
	b := NewPgBouncer(t, Admin(t))
	dsn := b.Through(t, NewDB(t))
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	holder := dial(t, ctx, dsn)
	other := dial(t, ctx, dsn)
	pids := map[uint32]bool{}
	for range 5 {
		tx, err := holder.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var held uint32
		if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&held); err != nil {
			t.Fatal(err)
		}
		var pid uint32
		if err := other.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		if pid == held {
			t.Fatalf("two clients share server connection %d while one is in a transaction", pid)
		}
		pids[pid] = true
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		// The held connection is free again (and pgbouncer reuses the
		// most recently released first).
		if err := other.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		pids[pid] = true
	}
	if len(pids) < 2 {
		t.Fatalf("one client always got server connection(s) %v: not transaction pooling", pids)
	}
}

// TestPgBouncerLocalIdleTimeout shows the mechanism pg.Begin relies on
// through pgbouncer: idle_in_transaction_session_timeout set for the
// transaction only (set_config(…, true)) ends a transaction left idle, and
// the client's next transaction runs on a live server connection.
func TestPgBouncerLocalIdleTimeout(t *testing.T) {
	t.Parallel()
	b := NewPgBouncer(t, Admin(t))
	dsn := b.Through(t, NewDB(t))
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	pool, err := pg.Open(ctx, dsn, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{BeginQuery: "BEGIN; SELECT set_config('idle_in_transaction_session_timeout', '200', true)"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	_, err = tx.Exec(ctx, "SELECT 1")
	_ = tx.Rollback(ctx)
	if err == nil {
		t.Fatal("a transaction idle past its local idle_in_transaction_session_timeout went on")
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		t.Logf("idle transaction ended with %s: %s", pgErr.Code, pgErr.Message)
	} else {
		t.Logf("idle transaction ended with %v", err)
	}
	var one int
	if err := pool.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("the pool does not recover: %v", err)
	}
}

// TestMigrationsThroughPgBouncer migrates an empty database through
// pgbouncer, twice at once: goose's table locker takes turns through a lock
// row, with no session advisory lock, so transaction pooling cannot break
// it.
func TestMigrationsThroughPgBouncer(t *testing.T) {
	t.Parallel()
	b := NewPgBouncer(t, Admin(t))
	dsn := b.Through(t, NewEmptyDB(t))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = migrate(ctx, dsn) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("migrator %d through pgbouncer: %v", i, err)
		}
	}
	pool, err := pg.Open(ctx, dsn, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	m, err := pg.NewMigrator(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	current, err := m.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !current {
		t.Fatal("the database is not at the newest migration")
	}
	if !exists(t, pool, "events") {
		t.Fatal("events table missing")
	}
}

func dial(t *testing.T, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func dbName(t *testing.T, dsn string) string {
	t.Helper()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Database
}
