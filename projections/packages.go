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
// package replaces its row but keeps created_at) and package.updated (the
// fields the event carries replace the row's, the others stay).
func Packages() Projection {
	return packagesProjection{Handlers{
		"package.created": applyPackageCreated,
		"package.updated": applyPackageUpdated,
	}}
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

// applyPackageUpdated writes the fields a package.updated carries; absent
// (nil) fields keep their value. An update of a package without a row
// changes nothing: the write side appends package.updated only to a
// package's own stream after its package.created, so in feed order the row
// always exists first, and halting the catalogue on such an event would
// help no one.
func applyPackageUpdated(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.PackageUpdated)
	if !ok {
		return fmt.Errorf("package.updated: unexpected payload %T", ev.Event)
	}
	_, err := w.Exec(ctx, `UPDATE `+w.Table("packages")+` SET
    name = coalesce($2, name), credits = coalesce($3, credits), price_cents = coalesce($4, price_cents),
    sort_order = coalesce($5, sort_order), active = coalesce($6, active), updated_at = $7
WHERE id = $1`,
		e.PackageID, e.Name, e.Credits, e.PriceCents, e.SortOrder, e.Active, ev.OccurredAt)
	if err != nil {
		return fmt.Errorf("update package: %w", err)
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
	return listPackages(ctx, pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeApp}, true)
}

// AllPackages returns every package, on sale or not, in catalogue order
// (sort_order, then id), for administrators. It reads as mana_app with
// admin scope.
func AllPackages(ctx context.Context, pool *pgxpool.Pool) ([]Package, error) {
	return listPackages(ctx, pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeAdmin}, false)
}

func listPackages(ctx context.Context, pool *pgxpool.Pool, as pg.Actor, activeOnly bool) ([]Package, error) {
	q := `SELECT id, name, credits, price_cents, currency, sort_order, active, created_at, updated_at FROM packages`
	if activeOnly {
		q += ` WHERE active`
	}
	q += ` ORDER BY sort_order, id`
	var out []Package
	err := pg.InTx(ctx, pool, as, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, q)
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
