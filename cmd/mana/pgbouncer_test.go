package main

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/manacore/mana/internal/pgtest"
)

// The auth and credit HTTP suites again, with DATABASE_URL going through
// PgBouncer 1.18 in transaction mode (default_query_exec_mode=cache_describe), on an
// empty database: serve runs every migration through PgBouncer too, then
// all its components (api, relay, projections, workers). The database is
// created directly on the server: PgBouncer cannot create one (see
// docs/operations.md).

// pgbouncerServer starts a PgBouncer in front of the test server and an
// empty database on it, and returns serve's variables for them. When the
// test and its parallel subtests are done it checks that the traffic went
// through PgBouncer.
func pgbouncerServer(t *testing.T) map[string]string {
	t.Helper()
	b := pgtest.NewPgBouncer(t, pgtest.Admin(t))
	dsn := b.Through(t, pgtest.NewEmptyDB(t))
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	// Runs after the server has stopped, before the database is dropped
	// and PgBouncer stopped.
	t.Cleanup(func() {
		// The migrations alone are a few hundred transactions.
		n := b.Transactions(t, cfg.Database)
		if n < 500 {
			t.Errorf("pgbouncer passed only %d transactions to %s", n, cfg.Database)
		}
		t.Logf("pgbouncer passed %d transactions to %s", n, cfg.Database)
		if t.Failed() {
			t.Logf("pgbouncer log:\n%s", b.Log())
		}
	})
	return map[string]string{"DATABASE_URL": dsn}
}

func TestAuthThroughPgBouncer(t *testing.T) {
	t.Parallel()
	testAuthSuite(t, startAuthServer(t, pgbouncerServer(t)))
}

func TestCreditsThroughPgBouncer(t *testing.T) {
	t.Parallel()
	testCreditSuite(t, startServe(t, pgbouncerServer(t)))
}
