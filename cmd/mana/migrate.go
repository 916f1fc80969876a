package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/pg"
)

func cmdMigrate(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "migrate", "migrate\n\nCreates the database if missing, applies every pending migration and seeds the default credit packages. Safe to run concurrently and repeatedly.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	pool, err := pg.Open(ctx, e.cfg.DatabaseURL, 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	applied, err := migrate(ctx, pool)
	if err != nil {
		return err
	}
	store, err := openStore(e.cfg, pool, nil)
	if err != nil {
		return err
	}
	seeded, err := seedPackages(ctx, store)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "migrations applied: %d; default packages seeded: %d\n", applied, seeded)
	return nil
}

// migrate applies pending migrations to the pool's database.
func migrate(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	m, err := pg.NewMigrator(pool)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	return m.Up(ctx)
}

// openStore loads the secrets (generating dev ones when allowed) and
// returns the event store over pool.
func openStore(cfg *Config, pool *pgxpool.Pool, reg prometheus.Registerer) (*eventstore.Store, error) {
	if err := loadDevSecrets(cfg); err != nil {
		return nil, err
	}
	kr, err := keyring.New(cfg.DataKEK, cfg.EmailIndexKey)
	if err != nil {
		return nil, err
	}
	return eventstore.New(pool, eventstore.Options{Keyring: kr, Registerer: reg})
}
