package pg

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	manasql "github.com/manacore/mana/sql"
)

// Migrator applies the embedded forward-only migrations. Concurrent
// migrators of one database take turns through a lock row (goose's table
// locker), not a session advisory lock, so it also works through PgBouncer.
type Migrator struct {
	db       *sql.DB
	provider *goose.Provider
}

// NewMigrator prepares a migrator over pool. Close it when done.
func NewMigrator(pool *pgxpool.Pool) (*Migrator, error) {
	migrations, err := fs.Sub(manasql.Migrations, "migrations")
	if err != nil {
		return nil, err
	}
	locker, err := lock.NewPostgresTableLocker(
		lock.WithTableName("schema_migrations_lock"),
		lock.WithTableLockTimeout(250*time.Millisecond, 2400),
		lock.WithTableLeaseDuration(30*time.Second),
	)
	if err != nil {
		return nil, fmt.Errorf("migration locker: %w", err)
	}
	db := stdlib.OpenDBFromPool(pool)
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations,
		goose.WithTableName("schema_migrations"),
		goose.WithLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("migration provider: %w", err)
	}
	return &Migrator{db: db, provider: p}, nil
}

// Up applies every pending migration and returns how many ran.
func (m *Migrator) Up(ctx context.Context) (int, error) {
	res, err := m.provider.Up(ctx)
	if err != nil {
		return len(res), fmt.Errorf("migrate: %w", err)
	}
	return len(res), nil
}

// Current reports whether the database has every embedded migration.
func (m *Migrator) Current(ctx context.Context) (bool, error) {
	current, target, err := m.provider.GetVersions(ctx)
	if err != nil {
		return false, fmt.Errorf("migration status: %w", err)
	}
	return current >= target, nil
}

// Close releases the migrator's database handle (not the pool).
func (m *Migrator) Close() error { return m.db.Close() }
