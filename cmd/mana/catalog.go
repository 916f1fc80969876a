package main

import (
	"context"

	"github.com/google/uuid"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/catalog"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/projections"
)

// newCatalog builds the package catalogue service over store; its lists
// wait for the packages read model through runner when this node runs it.
func newCatalog(e *env, store *eventstore.Store, runner *projections.Runner) (*catalog.Service, error) {
	return catalog.New(catalog.Config{
		Store:     store,
		Freshness: projections.NewFreshness(store.Pool(), runner, e.cfg.RYWTimeout),
	})
}

// catalogAPI serves api.Catalog with the catalogue service.
type catalogAPI struct{ svc *catalog.Service }

var _ api.Catalog = catalogAPI{}

func (a catalogAPI) Packages(ctx context.Context, reader uuid.UUID, minPosition string) ([]domain.Package, error) {
	return a.svc.Packages(ctx, reader, minPosition)
}

func (a catalogAPI) AllPackages(ctx context.Context, reader uuid.UUID, minPosition string) ([]api.AdminPackage, error) {
	list, err := a.svc.All(ctx, reader, minPosition)
	if err != nil {
		return nil, err
	}
	out := make([]api.AdminPackage, len(list))
	for i, p := range list {
		out[i] = api.AdminPackage(p)
	}
	return out, nil
}

func (a catalogAPI) CreatePackage(ctx context.Context, c domain.Caller, in api.PackageInput, key string) (domain.Receipt, error) {
	return a.svc.Create(ctx, c, catalog.NewPackage{Name: in.Name, Credits: in.Credits, PriceCents: in.PriceCents,
		Currency: in.Currency, SortOrder: in.SortOrder, Active: in.Active}, key)
}

func (a catalogAPI) UpdatePackage(ctx context.Context, c domain.Caller, id uuid.UUID, in api.PackagePatch) (domain.Receipt, error) {
	return a.svc.Update(ctx, c, id, catalog.Changes(in))
}

// openCatalog opens the database and the catalogue service for a CLI
// command. Its lists poll the packages checkpoint (the projection runs in
// serve, not here).
func openCatalog(ctx context.Context, e *env) (*catalog.Service, func(), error) {
	pool, err := pg.Open(ctx, e.cfg.DatabaseURL, 4)
	if err != nil {
		return nil, nil, err
	}
	store, err := openStore(e.cfg, pool, nil)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	svc, err := newCatalog(e, store, nil)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return svc, pool.Close, nil
}
