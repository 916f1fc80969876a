package main

import (
	"context"
	"net/http"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// seedPackages records domain.DefaultPackages as package.created events,
// each in its own stream, unless the stream already exists. Concurrent
// seeders race on the stream version; the loser re-runs, sees the package
// and skips it. It returns how many packages this call created.
func seedPackages(ctx context.Context, store *eventstore.Store) (int, error) {
	created := 0
	for _, p := range domain.DefaultPackages() {
		cmd := eventstore.Command{
			Name:     "packages.seed",
			Actor:    pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem},
			Metadata: domain.Metadata{Actor: domain.SystemActor},
		}
		made := false
		_, err := store.Execute(ctx, cmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			made = false
			_, version, err := tx.Load(ctx, domain.StreamPackage, p.PackageID.String(), 0)
			if err != nil || version > 0 {
				return domain.Receipt{}, err
			}
			_, err = tx.Append(ctx, eventstore.StreamAppend{
				StreamType: domain.StreamPackage, StreamID: p.PackageID.String(),
				ExpectedVersion: 0, Events: []domain.Event{p},
			})
			made = err == nil
			return domain.Receipt{Status: http.StatusCreated}, err
		})
		if err != nil {
			return created, err
		}
		if made {
			created++
		}
	}
	return created, nil
}
