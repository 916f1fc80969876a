package projections_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/projections"
)

// expected is what the read models must hold, tracked by the writer from
// the events it appended.
type expected struct {
	packages map[uuid.UUID]packageRow
	users    map[uuid.UUID]userRow
}

type packageRow struct {
	name, currency       string
	credits, price       int64
	order                int
	active               bool
	createdAt, updatedAt time.Time
}

type userRow struct {
	email, name, role    string
	createdAt, updatedAt time.Time
}

// write appends until stop is closed and at least min commands ran (at
// most max): new packages, re-created packages, registrations and
// erasures, one event per command. It returns the expected read models and
// the number of events.
func (e *env) write(ctx context.Context, stop <-chan struct{}, started chan<- struct{}, minN, maxN int) (expected, int, error) {
	exp := expected{packages: map[uuid.UUID]packageRow{}, users: map[uuid.UUID]userRow{}}
	var pkgIDs, userIDs []uuid.UUID
	for i := 0; i < maxN; i++ {
		if i == minN/2 {
			close(started)
		}
		if i >= minN {
			select {
			case <-stop:
				return exp, i, nil
			default:
			}
		}
		switch {
		case i%4 == 3 && i%8 == 7 && len(userIDs) > 0:
			id := userIDs[0]
			userIDs = userIDs[1:]
			if _, err := e.eraseCtx(ctx, id); err != nil {
				return exp, i, err
			}
			delete(exp.users, id)
		case i%4 == 3 && len(pkgIDs) > 0:
			id := pkgIDs[i%len(pkgIDs)]
			old := exp.packages[id]
			p := &domain.PackageCreated{PackageID: id, Name: old.name + "+", Credits: old.credits, PriceCents: old.price + 1,
				Currency: old.currency, SortOrder: old.order, Active: !old.active}
			recs, err := e.appendEvents(ctx, domain.StreamPackage, id.String(), p)
			if err != nil {
				return exp, i, err
			}
			exp.packages[id] = packageRow{p.Name, p.Currency, p.Credits, p.PriceCents, p.SortOrder, p.Active, old.createdAt, recs[0].OccurredAt}
		case i%4 == 2:
			id := uuid.New()
			u := &domain.UserRegistered{UserID: id, Email: fmt.Sprintf("u%d@example.org", i), Name: fmt.Sprintf("User %d", i),
				Role: "user", RegisteredAt: time.Date(2026, 3, 1, 0, 0, i, 0, time.UTC)}
			recs, err := e.appendEvents(ctx, domain.StreamUser, id.String(), u)
			if err != nil {
				return exp, i, err
			}
			userIDs = append(userIDs, id)
			exp.users[id] = userRow{u.Email, u.Name, u.Role, u.RegisteredAt, recs[0].OccurredAt}
		default:
			p := newPackage(fmt.Sprintf("p%d", i), i%5)
			recs, err := e.appendEvents(ctx, domain.StreamPackage, p.PackageID.String(), p)
			if err != nil {
				return exp, i, err
			}
			pkgIDs = append(pkgIDs, p.PackageID)
			exp.packages[p.PackageID] = packageRow{p.Name, p.Currency, p.Credits, p.PriceCents, p.SortOrder, p.Active, recs[0].OccurredAt, recs[0].OccurredAt}
		}
	}
	return exp, maxN, nil
}

// catalog describes a table's shape and access: columns, indexes and
// constraints (by name), owner, grants, row-level security and policies.
func (e *env) catalog(t *testing.T, table string) []string {
	t.Helper()
	var out []string
	err := e.pool.QueryRow(ctxT(t), `SELECT ARRAY[
    (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull, ', ' ORDER BY attnum)
        FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped),
    (SELECT string_agg(pg_get_indexdef(indexrelid), '; ' ORDER BY 1) FROM pg_index WHERE indrelid = c.oid),
    (SELECT coalesce(string_agg(conname || ' ' || pg_get_constraintdef(oid), '; ' ORDER BY conname), '') FROM pg_constraint WHERE conrelid = c.oid),
    pg_get_userbyid(c.relowner)::text,
    (SELECT string_agg(a::text, ', ' ORDER BY a::text) FROM unnest(c.relacl) a),
    c.relrowsecurity::text, c.relforcerowsecurity::text,
    (SELECT coalesce(string_agg(format('%s %s %s USING %s CHECK %s', polname, polcmd, polroles::regrole[]::text,
        pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)), '; ' ORDER BY polname), '')
        FROM pg_policy WHERE polrelid = c.oid)
] FROM pg_class c WHERE c.oid = $1::text::regclass`, table).Scan(&out)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRebuildUnderConcurrentWrites rebuilds three projections while events
// keep coming and the live runner keeps running: afterwards every read
// model holds exactly what its events say (each event applied once, in
// feed order), and the tables' shape, grants, row-level security and
// policies are those the migrations created.
func TestRebuildUnderConcurrentWrites(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := newCounter(t, e, "rb")
	projs := []projections.Projection{projections.Packages(), projections.Users(), c}
	tables := []string{"packages", "users", "applied_rb"}
	before := map[string][]string{}
	for _, tb := range tables {
		before[tb] = e.catalog(t, tb)
	}
	r, _ := e.newRunner(t, "node-a", projs, nil)
	start(t, r)

	type result struct {
		exp expected
		n   int
		err error
	}
	stop, started, done := make(chan struct{}), make(chan struct{}), make(chan result, 1)
	go func() {
		exp, n, err := e.write(ctxT(t), stop, started, 120, 5000)
		done <- result{exp, n, err}
	}()
	select {
	case <-started:
	case <-time.After(wait):
		t.Fatal("writer did not start")
	}
	for _, p := range projs {
		cur, err := projections.Rebuild(ctxT(t), e.store, p, "rebuilder")
		if err != nil {
			close(stop)
			t.Fatal(err)
		}
		t.Logf("rebuilt %s at %s", p.Name(), cur)
	}
	close(stop)
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	// One more event after every rebuild: the live runner must have taken
	// its lease back to apply it.
	extra := newPackage("after", 9)
	recs, err := e.appendEvents(ctxT(t), domain.StreamPackage, extra.PackageID.String(), extra)
	if err != nil {
		t.Fatal(err)
	}
	res.exp.packages[extra.PackageID] = packageRow{extra.Name, extra.Currency, extra.Credits, extra.PriceCents, extra.SortOrder, extra.Active, recs[0].OccurredAt, recs[0].OccurredAt}
	feed := e.feed(t, res.n+1)
	t.Logf("%d events", len(feed))
	for _, p := range projs {
		e.waitApplied(t, p.Name(), feed[len(feed)-1].Cursor)
	}

	e.checkApplied(t, "rb", feed)
	e.checkPackages(t, res.exp.packages)
	e.checkUsers(t, res.exp.users)
	for _, tb := range tables {
		if after := e.catalog(t, tb); !slices.Equal(before[tb], after) {
			t.Errorf("%s changed by the rebuild:\nbefore %q\n after %q", tb, before[tb], after)
		}
	}
	if n := e.count(t, `SELECT count(*) FROM pg_class WHERE relname LIKE '%\_rebuild'`); n != 0 {
		t.Errorf("%d shadow tables left", n)
	}
	st, err := projections.Statuses(ctxT(t), e.pool, projs)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Holder != "node-a" || s.Failures != 0 || s.LagEvents != 0 {
			t.Errorf("status after rebuild: %+v", s)
		}
	}
}

// TestRebuildKeepsReadsAndAccess: the rebuilt users table serves a user
// only their own row under row-level security, as the migrated one did,
// and a rebuild of an idle projection changes nothing.
func TestRebuildKeepsReadsAndAccess(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	alice, _ := e.register(t, "alice@example.org", "Alice")
	bob, _ := e.register(t, "bob@example.org", "Bob")
	e.erase(t, bob)
	carol, _ := e.register(t, "carol@example.org", "Carol")
	feed := e.feed(t, 4)

	r, _ := e.newRunner(t, "node-a", []projections.Projection{projections.Users()}, nil)
	start(t, r)
	e.waitApplied(t, "users", feed[3].Cursor)
	live := e.users(t)
	cur, err := projections.Rebuild(ctxT(t), e.store, projections.Users(), "rebuilder")
	if err != nil {
		t.Fatal(err)
	}
	if cur != feed[3].Cursor {
		t.Errorf("rebuild ended at %s, want %s", cur, feed[3].Cursor)
	}
	if got := e.users(t); !slices.Equal(got, live) {
		t.Errorf("rebuilt users %v, live were %v", got, live)
	}
	if len(live) != 2 {
		t.Errorf("users %v: want alice and carol", live)
	}
	// As alice, through the app role: her row only.
	tx, err := e.pool.Begin(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctxT(t))
	if _, err := tx.Exec(ctxT(t), `SELECT set_config('role', 'mana_app', true), set_config('mana.scope', 'user', true), set_config('mana.user_id', $1, true)`, alice.String()); err != nil {
		t.Fatal(err)
	}
	var ids []uuid.UUID
	rows, err := tx.Query(ctxT(t), `SELECT id FROM users`)
	if err != nil {
		t.Fatal(err)
	}
	if ids, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID]); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 1 || ids[0] != alice {
		t.Errorf("alice sees %v (carol is %s)", ids, carol)
	}
}

func (e *env) users(t *testing.T) []string {
	t.Helper()
	rows, err := e.pool.Query(ctxT(t), `SELECT format('%s %s %s %s %s %s %s', id, email, name, role, email_verified, created_at, updated_at) FROM users ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *env) checkPackages(t *testing.T, want map[uuid.UUID]packageRow) {
	t.Helper()
	rows, err := e.pool.Query(ctxT(t), `SELECT id, name, currency, credits, price_cents, sort_order, active, created_at, updated_at FROM packages`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[uuid.UUID]packageRow{}
	var (
		id uuid.UUID
		p  packageRow
	)
	if _, err := pgx.ForEachRow(rows, []any{&id, &p.name, &p.currency, &p.credits, &p.price, &p.order, &p.active, &p.createdAt, &p.updatedAt}, func() error {
		p.createdAt, p.updatedAt = p.createdAt.UTC(), p.updatedAt.UTC()
		got[id] = p
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("packages has %d rows, want %d", len(got), len(want))
	}
	for id, w := range want {
		w.createdAt, w.updatedAt = w.createdAt.UTC(), w.updatedAt.UTC()
		if got[id] != w {
			t.Errorf("package %s: %+v, want %+v", id, got[id], w)
		}
	}
}

func (e *env) checkUsers(t *testing.T, want map[uuid.UUID]userRow) {
	t.Helper()
	rows, err := e.pool.Query(ctxT(t), `SELECT id, email, name, role, created_at, updated_at FROM users`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[uuid.UUID]userRow{}
	var (
		id uuid.UUID
		u  userRow
	)
	if _, err := pgx.ForEachRow(rows, []any{&id, &u.email, &u.name, &u.role, &u.createdAt, &u.updatedAt}, func() error {
		u.createdAt, u.updatedAt = u.createdAt.UTC(), u.updatedAt.UTC()
		got[id] = u
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("users has %d rows, want %d", len(got), len(want))
	}
	for id, w := range want {
		w.createdAt, w.updatedAt = w.createdAt.UTC(), w.updatedAt.UTC()
		if got[id] != w {
			t.Errorf("user %s: %+v, want %+v", id, got[id], w)
		}
	}
}

// TestRebuildSwapWaitsForReaders: a reader inside a transaction keeps
// reading the old table while the rebuild waits to swap; the swap happens
// once the reader is done.
func TestRebuildSwapWaitsForReaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.appendPackages(t, 5, 1)
	feed := e.feed(t, 5)
	r, _ := e.newRunner(t, "node-a", []projections.Projection{projections.Packages()}, nil)
	start(t, r)
	e.waitApplied(t, "packages", feed[4].Cursor)

	reader, err := e.pool.Begin(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Rollback(ctxT(t))
	var oid uint32
	if err := reader.QueryRow(ctxT(t), `SELECT 'packages'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	readCount := func() int {
		var n int
		if err := reader.QueryRow(ctxT(t), `SELECT count(*) FROM packages`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := readCount(); n != 5 {
		t.Fatalf("reader sees %d packages", n)
	}
	done := make(chan error, 1)
	go func() {
		_, err := projections.Rebuild(ctxT(t), e.store, projections.Packages(), "rebuilder")
		done <- err
	}()
	eventually(t, "the swap waiting for the reader's lock", func() bool {
		return e.count(t, `SELECT count(*) FROM pg_locks WHERE relation = $1 AND NOT granted`, oid) > 0
	})
	if n := readCount(); n != 5 {
		t.Errorf("reader sees %d packages during the swap", n)
	}
	if err := reader.Commit(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("rebuild did not finish")
	}
	var newOID uint32
	if err := e.pool.QueryRow(ctxT(t), `SELECT 'packages'::regclass::oid`).Scan(&newOID); err != nil {
		t.Fatal(err)
	}
	if newOID == oid {
		t.Error("packages was not swapped")
	}
	if n := e.count(t, `SELECT count(*) FROM packages`); n != 5 {
		t.Errorf("rebuilt packages has %d rows", n)
	}
}
