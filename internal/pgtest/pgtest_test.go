package pgtest

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/internal/pg"
)

func TestNewPoolClonesAreIsolated(t *testing.T) {
	t.Parallel()
	var names [2]string
	// Each clone creates its own table, then waits for the other before
	// checking that the other's table is not visible. A subtest that fails
	// early still closes its channel, so its sibling never hangs.
	done := [2]chan struct{}{make(chan struct{}), make(chan struct{})}
	t.Run("group", func(t *testing.T) {
		for i := range 2 {
			t.Run(string(rune('a'+i)), func(t *testing.T) {
				t.Parallel()
				var signal sync.Once
				ready := func() { signal.Do(func() { close(done[i]) }) }
				defer ready()
				pool := NewPool(t)
				ctx := t.Context()
				if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&names[i]); err != nil {
					t.Fatal(err)
				}
				own, foreign := "only_in_"+string(rune('a'+i)), "only_in_"+string(rune('a'+1-i))
				if _, err := pool.Exec(ctx, "CREATE TABLE "+own+" (id int)"); err != nil {
					t.Fatal(err)
				}
				ready()
				<-done[1-i]
				if !exists(t, pool, own) {
					t.Errorf("own table %s missing", own)
				}
				if exists(t, pool, foreign) {
					t.Errorf("table %s of the other clone is visible in %s", foreign, names[i])
				}
			})
		}
	})
	if names[0] == names[1] || !strings.HasPrefix(names[0], clonePrefix) {
		t.Fatalf("clones named %q and %q", names[0], names[1])
	}
	// The subtests have ended: their cleanups dropped both databases.
	admin := adminConn(t)
	var left int
	err := admin.QueryRow(t.Context(), "SELECT count(*) FROM pg_database WHERE datname = ANY($1)", names[:]).Scan(&left)
	if err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d clone databases survive their tests", left)
	}
}

func TestTemplateHasMigrations(t *testing.T) {
	t.Parallel()
	pool := NewPool(t)
	ctx := t.Context()
	if !exists(t, pool, "events") {
		t.Error("events table missing in the clone")
	}
	var roles int
	err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE rolname IN ('mana_app', 'mana_projector', 'mana_auditor')").Scan(&roles)
	if err != nil {
		t.Fatal(err)
	}
	if roles != 3 {
		t.Errorf("found %d of the 3 service roles", roles)
	}
	m, err := pg.NewMigrator(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if current, err := m.Current(ctx); err != nil || !current {
		t.Errorf("clone migrations current = %v, %v; want true", current, err)
	}

	name, err := templateName()
	if err != nil {
		t.Fatal(err)
	}
	var isTemplate, allowConn bool
	err = adminConn(t).QueryRow(ctx, "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = $1", name).
		Scan(&isTemplate, &allowConn)
	if err != nil {
		t.Fatalf("template %s: %v", name, err)
	}
	if !isTemplate || allowConn {
		t.Errorf("template %s: IS_TEMPLATE %v, ALLOW_CONNECTIONS %v; want true, false", name, isTemplate, allowConn)
	}
}

func TestNewDBConcurrent(t *testing.T) {
	t.Parallel()
	for i := range 6 {
		t.Run(string(rune('a'+i)), func(t *testing.T) {
			t.Parallel()
			if !exists(t, NewPool(t), "events") {
				t.Error("events table missing")
			}
		})
	}
}

// Processes racing to build the same template all get it, and exactly one
// copy survives.
func TestEnsureTemplateRace(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	name := templatePrefix + "race" + randomHex(4)
	t.Cleanup(func() { _ = dropDatabase(context.Background(), admin, name) })

	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			// Each racer builds on its own connection, like separate
			// processes would.
			_, errs[i] = ensureTemplate(t.Context(), admin, name)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Errorf("ensureTemplate: %v", err)
		}
	}
	var n, tmps int
	err := admin.QueryRow(t.Context(), `
SELECT count(*) FILTER (WHERE datname = $1), count(*) FILTER (WHERE datname LIKE $2)
FROM pg_database`, name, tmpPrefix+strings.TrimPrefix(name, templatePrefix)+"%").Scan(&n, &tmps)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || tmps != 0 {
		t.Errorf("%d templates and %d temporary copies left; want 1 and 0", n, tmps)
	}
}

// Databases that killed test processes left behind are dropped once old
// enough; young ones, which a running test may be using, stay.
func TestCollectGarbage(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	ctx := t.Context()
	old, young := clonePrefix+"gc"+randomHex(4), clonePrefix+"gc"+randomHex(4)
	for name, age := range map[string]time.Duration{old: staleClone + time.Minute, young: time.Minute} {
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+ident(name)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = dropDatabase(context.Background(), admin, name) })
		created := time.Now().Add(-age).UTC().Format(time.RFC3339)
		if _, err := admin.Exec(ctx, "COMMENT ON DATABASE "+ident(name)+" IS '"+commentPrefix+created+"'"); err != nil {
			t.Fatal(err)
		}
	}
	current, err := templateName()
	if err != nil {
		t.Fatal(err)
	}
	// A drop may lose its 2 s lock wait to the other test processes that
	// are creating databases at the same moment; collection is
	// best-effort and retried by later processes, so retry here, bounded.
	for i := 0; i < 10; i++ {
		collectGarbage(ctx, admin, current)
		var gone bool
		if err := admin.QueryRow(ctx, "SELECT NOT EXISTS (SELECT FROM pg_database WHERE datname = $1)", old).Scan(&gone); err != nil {
			t.Fatal(err)
		}
		if gone {
			break
		}
	}
	for name, want := range map[string]bool{old: false, young: true, current: true} {
		var got bool
		if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s exists = %v after collectGarbage, want %v", name, got, want)
		}
	}
}

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres:///test?host=/var/run/postgresql":          "postgres:///mana_t_x?host=/var/run/postgresql",
		"postgres://u:p@127.0.0.1:5432/test?sslmode=disable": "postgres://u:p@127.0.0.1:5432/mana_t_x?sslmode=disable",
		"postgresql://h/":       "postgresql://h/mana_t_x",
		"host=/tmp dbname=test": "host=/tmp dbname=test dbname=mana_t_x",
	} {
		if got := withDatabase(in, "mana_t_x"); got != want {
			t.Errorf("withDatabase(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	c := NewCluster(t)
	pool := c.NewPool(t, "mana")
	ctx := t.Context()

	var fsync, syncCommit string
	if err := pool.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('synchronous_commit')").Scan(&fsync, &syncCommit); err != nil {
		t.Fatal(err)
	}
	if fsync != "off" || syncCommit != "on" {
		t.Errorf("fsync=%s synchronous_commit=%s; want off, on", fsync, syncCommit)
	}
	if !exists(t, pool, "events") {
		t.Error("events table missing on the cluster")
	}
	if _, err := pool.Exec(ctx, "CREATE TABLE survives (v int); INSERT INTO survives VALUES (42)"); err != nil {
		t.Fatal(err)
	}

	c.Restart(t)
	pool.Reset() // its connections died with the old server
	var v int
	if err := pool.QueryRow(ctx, "SELECT v FROM survives").Scan(&v); err != nil || v != 42 {
		t.Fatalf("after restart: v = %d, %v; want 42", v, err)
	}

	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := os.Stat(c.dir); !os.IsNotExist(err) {
		t.Errorf("cluster directory after Stop: %v", err)
	}
	if err := ping(ctx, c.DSN("postgres")); err == nil {
		t.Error("stopped cluster still answers")
	}
}

// BenchmarkClone compares the CREATE DATABASE strategies for cloning the
// template, each clone followed by its DROP, as a test pays both.
func BenchmarkClone(b *testing.B) {
	NewDB(b) // builds the template outside the timing
	admin := adminConn(b)
	for _, strategy := range []string{"WAL_LOG", "FILE_COPY"} {
		b.Run(strategy, func(b *testing.B) {
			for b.Loop() {
				name := clonePrefix + randomHex(8)
				if err := clone(b.Context(), admin, name, strategy); err != nil {
					b.Fatal(err)
				}
				if err := dropDatabase(b.Context(), admin, name); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(strategy+"/parallel", func(b *testing.B) {
			b.SetParallelism(2) // 2×GOMAXPROCS tests cloning at once
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					name := clonePrefix + randomHex(8)
					if err := clone(context.Background(), admin, name, strategy); err != nil {
						b.Error(err)
						return
					}
					if err := dropDatabase(context.Background(), admin, name); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkNewCluster(b *testing.B) {
	for b.Loop() {
		c, err := newCluster(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Stop(); err != nil {
			b.Fatal(err)
		}
	}
}

func adminConn(t testing.TB) *pgxpool.Pool {
	t.Helper()
	Admin(t)
	pool, err := adminPool()
	if err != nil {
		t.Fatal(err)
	}
	return pool
}

func exists(t testing.TB, pool *pgxpool.Pool, table string) bool {
	t.Helper()
	var ok bool
	if err := pool.QueryRow(t.Context(), "SELECT to_regclass($1) IS NOT NULL", "public."+table).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}
