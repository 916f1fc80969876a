// Package pg is the PostgreSQL adapter shared by the event store and the
// projections: it opens the connection pool (creating the database when it
// is missing), applies the embedded migrations, and runs transactions under
// one of the service's roles with the caller's identity set for Row-Level
// Security.
package pg

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// IdleInTransactionTimeout bounds how long a transaction may sit idle. The
// feed horizon is cluster-wide, so a forgotten transaction would stall every
// reader; PostgreSQL ends it instead. Begin sets it for each transaction
// (SET LOCAL semantics) rather than as a startup parameter of the session:
// PgBouncer refuses unknown startup parameters, and in transaction mode a
// session setting would not follow the client anyway.
const IdleInTransactionTimeout = 15 * time.Second

// Open returns a pool for dsn. When the database does not exist it is
// created first, which needs the CREATEDB privilege. synchronous_commit is
// left on. The only startup parameter added is application_name, which
// PgBouncer passes on; idle_in_transaction_session_timeout is set per
// transaction by Begin.
//
// For PgBouncer in transaction mode add
// default_query_exec_mode=cache_describe to the DSN: pgx then prepares no
// named statement (PgBouncer 1.18 cannot follow one from server connection
// to server connection) yet encodes parameters by the types the server
// describes. Mode exec is not enough: it infers types from Go values and
// cannot encode, say, []uuid.UUID or a map for a jsonb parameter. PgBouncer
// reports a missing database as a protocol error (08P01), not
// invalid_catalog_name, so through it the database must already exist. See
// docs/operations.md.
func Open(ctx context.Context, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "mana"
	if err := ensureDatabase(ctx, cfg.ConnConfig); err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	return pool, nil
}

// ensureDatabase creates the configured database when a connection to it
// fails with invalid_catalog_name.
func ensureDatabase(ctx context.Context, cc *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err == nil {
		return conn.Close(ctx)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	admin := cc.Copy()
	admin.Database = "postgres"
	conn, err = pgx.ConnectConfig(ctx, admin)
	if err != nil {
		admin.Database = "template1"
		if conn, err = pgx.ConnectConfig(ctx, admin); err != nil {
			return fmt.Errorf("connect to create database %q: %w", cc.Database, err)
		}
	}
	defer conn.Close(ctx)
	// A concurrent creator of the same database makes this one fail with
	// duplicate_database when it committed first, or with unique_violation
	// on pg_database when both inserted the catalog row at once. Either way
	// the database now exists.
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{cc.Database}.Sanitize())
	if err != nil && !(errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "23505")) {
		return fmt.Errorf("create database %q: %w", cc.Database, err)
	}
	return nil
}
