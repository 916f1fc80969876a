package pg_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestRolesAreCreatedOnceWhenDatabasesMigrateTogether migrates several
// databases of one fresh cluster at the same moment: each tries to create
// the cluster-wide roles.
func TestRolesAreCreatedOnceWhenDatabasesMigrateTogether(t *testing.T) {
	t.Parallel()
	cluster := pgtest.NewCluster(t)
	const n = 4
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			ctx := ctxT(t)
			pool, err := pg.Open(ctx, cluster.DSN(fmt.Sprintf("db_%d", i)), 4)
			if err != nil {
				errs[i] = err
				return
			}
			defer pool.Close()
			m, err := pg.NewMigrator(pool)
			if err != nil {
				errs[i] = err
				return
			}
			defer m.Close()
			_, errs[i] = m.Up(ctx)
		}(i)
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("migrate db_%d: %v", i, err)
		}
	}
	pool := cluster.NewPool(t, "db_0")
	var roles int
	if err := pool.QueryRow(ctxT(t), "SELECT count(*) FROM pg_roles WHERE rolname IN ('mana_app','mana_projector','mana_auditor') AND NOT rolcanlogin").Scan(&roles); err != nil {
		t.Fatal(err)
	}
	if roles != 3 {
		t.Fatalf("%d NOLOGIN service roles, want 3", roles)
	}
}

func TestActorIsSetForTheTransactionOnly(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	user := uuid.New()
	err := pg.InTx(ctxT(t), pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user}, func(tx pgx.Tx) error {
		var role, scope, uid string
		if err := tx.QueryRow(ctxT(t), "SELECT current_user, mana_scope(), mana_user_id()::text").Scan(&role, &scope, &uid); err != nil {
			return err
		}
		if role != "mana_app" || scope != "user" || uid != user.String() {
			t.Errorf("in tx: role=%s scope=%s user=%s", role, scope, uid)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing leaks onto pooled connections: every connection is back to
	// the login role with no identity.
	conns := make([]*pgxpool.Conn, 0, pgtest.PoolMaxConns)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for i := 0; i < pgtest.PoolMaxConns; i++ {
		c, err := pool.Acquire(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		var role, scope string
		var uid *string
		if err := c.QueryRow(ctxT(t), "SELECT current_user, mana_scope(), mana_user_id()::text").Scan(&role, &scope, &uid); err != nil {
			t.Fatal(err)
		}
		if role == "mana_app" || scope != "user" || uid != nil {
			t.Fatalf("connection %d kept the transaction's identity: %s %s %v", i, role, scope, uid)
		}
	}
}

// TestForcedRowLevelSecurity proves, as the service's real connection user
// going through the transaction helper, that a user sees only their own
// rows of a per-user table even without a WHERE clause, and that the table
// forces RLS on its owner too.
func TestForcedRowLevelSecurity(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	a, b := uuid.New(), uuid.New()
	err := pg.InTx(ctxT(t), pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctxT(t), "INSERT INTO user_positions (user_id, tx_id, position) VALUES ($1, '1', 1), ($2, '2', 2)", a, b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	visible := func(actor pg.Actor) []uuid.UUID {
		var ids []uuid.UUID
		err := pg.InTx(ctxT(t), pool, actor, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctxT(t), "SELECT user_id FROM user_positions")
			if err != nil {
				return err
			}
			ids, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	if got := visible(pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: a}); len(got) != 1 || got[0] != a {
		t.Fatalf("user A sees %v", got)
	}
	if got := visible(pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: b}); len(got) != 1 || got[0] != b {
		t.Fatalf("user B sees %v", got)
	}
	if got := visible(pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser}); len(got) != 0 {
		t.Fatalf("no user sees %v", got)
	}
	if got := visible(pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeAdmin}); len(got) != 2 {
		t.Fatalf("admin scope sees %v", got)
	}
	// User A cannot write B's row either.
	err = pg.InTx(ctxT(t), pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: a}, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctxT(t), "UPDATE user_positions SET position = 99")
		if err == nil && tag.RowsAffected() != 1 {
			t.Errorf("user A updated %d rows", tag.RowsAffected())
		}
		_, err = tx.Exec(ctxT(t), "INSERT INTO user_positions (user_id, tx_id, position) VALUES ($1, '3', 3)", uuid.New())
		return err
	})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("user A inserted another user's row: %v", err)
	}
	// Every per-user table has RLS enabled and forced.
	rows, err := pool.Query(ctxT(t), `SELECT relname FROM pg_class
		WHERE relname IN ('user_positions', 'idempotency_keys', 'password_credentials')
		  AND relkind = 'r' AND relrowsecurity AND relforcerowsecurity`)
	if err != nil {
		t.Fatal(err)
	}
	forced, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(forced) != 3 {
		t.Fatalf("tables with forced RLS: %v", forced)
	}
}

// TestForceRLSBindsTheOwner shows why FORCE matters: a non-superuser that
// owns a per-user table is still filtered by its policies.
func TestForceRLSBindsTheOwner(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	ctx := ctxT(t)
	owner := "mana_test_owner_" + uuid.NewString()[:8]
	ident := pgx.Identifier{owner}.Sanitize()
	if _, err := pool.Exec(ctx, "CREATE ROLE "+ident+" NOLOGIN"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c := context.Background()
		pool.Exec(c, "REASSIGN OWNED BY "+ident+" TO CURRENT_USER")
		pool.Exec(c, "DROP OWNED BY "+ident)
		pool.Exec(c, "DROP ROLE "+ident)
	})
	if _, err := pool.Exec(ctx, "ALTER TABLE user_positions OWNER TO "+ident); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO user_positions (user_id, tx_id, position) VALUES ($1, '1', 1)", uuid.New()); err != nil {
		t.Fatal(err)
	}
	var n int
	err := pg.InTx(ctx, pool, pg.Actor{Role: pg.Role(owner), Scope: pg.ScopeUser, UserID: uuid.New()}, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, "SELECT count(*) FROM user_positions").Scan(&n)
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("the table's owner sees %d rows of another user", n)
	}
}

func TestBeginRefusesUnsafeNames(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	for _, a := range []pg.Actor{
		{Role: "mana_app'; DROP TABLE events; --"},
		{Role: pg.RoleApp, Scope: "user' OR '1"},
	} {
		if _, err := pg.Begin(ctxT(t), pool, a, pgx.TxOptions{}); err == nil {
			t.Fatalf("Begin accepted %+v", a)
		}
	}
	// Isolation and access modes still apply.
	tx, err := pg.Begin(ctxT(t), pool, pg.Actor{Role: pg.RoleAuditor, Scope: pg.ScopeAuditor}, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctxT(t))
	var iso, ro, role string
	if err := tx.QueryRow(ctxT(t), "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'), current_user").Scan(&iso, &ro, &role); err != nil {
		t.Fatal(err)
	}
	if iso != "repeatable read" || ro != "on" || role != "mana_auditor" {
		t.Fatalf("isolation %s read-only %s role %s", iso, ro, role)
	}
}

func TestQueryRowActsAsTheActorForOneStatement(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	user := uuid.New()
	var role, scope, uid string
	if err := pg.QueryRow(ctxT(t), pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user},
		"SELECT current_user::text, mana_scope(), mana_user_id()::text", nil, &role, &scope, &uid); err != nil {
		t.Fatal(err)
	}
	if role != "mana_app" || scope != "user" || uid != user.String() {
		t.Fatalf("as actor: %s %s %s", role, scope, uid)
	}
	// Row-level security applies: a user sees only their own row.
	other := uuid.New()
	if _, err := pool.Exec(ctxT(t), "INSERT INTO user_positions (user_id, tx_id, position) VALUES ($1, '1', 1)", other); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pg.QueryRow(ctxT(t), pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user},
		"SELECT count(*) FROM user_positions", nil, &n); err != nil || n != 0 {
		t.Fatalf("user saw %d foreign rows (%v)", n, err)
	}
	// Nothing stays on the connection afterwards.
	for i := 0; i < pgtest.PoolMaxConns; i++ {
		var r string
		if err := pool.QueryRow(ctxT(t), "SELECT current_user::text").Scan(&r); err != nil || r == "mana_app" {
			t.Fatalf("connection kept the role: %s %v", r, err)
		}
	}
}
