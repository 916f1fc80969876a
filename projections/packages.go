package projections

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// packagesProjection builds the credit package catalogue, table packages.
type packagesProjection struct{ Handlers }

// Packages returns the projection "packages": one row per credit package,
// from package.created (an upsert keyed by the package id, so a re-created
// package replaces its row but keeps created_at).
func Packages() Projection {
	return packagesProjection{Handlers{"package.created": applyPackageCreated}}
}

func (packagesProjection) Name() string { return "packages" }

func (packagesProjection) Tables() []Table {
	return []Table{{Name: "packages", Access: func(t string) string {
		return `GRANT SELECT ON ` + t + ` TO mana_app, mana_auditor;
GRANT SELECT, INSERT, UPDATE, DELETE ON ` + t + ` TO mana_projector;`
	}}}
}

func applyPackageCreated(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.PackageCreated)
	if !ok {
		return fmt.Errorf("package.created: unexpected payload %T", ev.Event)
	}
	_, err := w.Exec(ctx, `INSERT INTO `+w.Table("packages")+` AS p
    (id, name, credits, price_cents, currency, sort_order, active, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
ON CONFLICT (id) DO UPDATE SET
    name = excluded.name, credits = excluded.credits, price_cents = excluded.price_cents,
    currency = excluded.currency, sort_order = excluded.sort_order, active = excluded.active,
    updated_at = excluded.updated_at`,
		e.PackageID, e.Name, e.Credits, e.PriceCents, e.Currency, e.SortOrder, e.Active, ev.OccurredAt)
	if err != nil {
		return fmt.Errorf("upsert package: %w", err)
	}
	return nil
}

// Package is a row of the packages read model.
type Package struct {
	ID         uuid.UUID
	Name       string
	Credits    int64
	PriceCents int64
	Currency   string
	SortOrder  int
	Active     bool
	CreatedAt  time.Time
	UpdatedAt  time.Time
}

// ActivePackages returns the packages on sale in catalogue order: by
// sort_order, then id so that equal orders are stable (the index
// packages_sort_idx serves exactly this). It reads as mana_app.
func ActivePackages(ctx context.Context, pool *pgxpool.Pool) ([]Package, error) {
	var out []Package
	err := pg.InTx(ctx, pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeApp}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id, name, credits, price_cents, currency, sort_order, active, created_at, updated_at
FROM packages WHERE active ORDER BY sort_order, id`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Package, error) {
			var p Package
			err := r.Scan(&p.ID, &p.Name, &p.Credits, &p.PriceCents, &p.Currency, &p.SortOrder, &p.Active, &p.CreatedAt, &p.UpdatedAt)
			return p, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list packages: %w", err)
	}
	return out, nil
}
