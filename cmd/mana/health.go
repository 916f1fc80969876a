package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// feedStallDegraded is how long the oldest write transaction in the cluster
// may stay open before /health reports the feed as degraded: while it is
// open no event after it reaches any reader.
const feedStallDegraded = 30 * time.Second

// health implements api.HealthChecker over the service's dependencies.
type health struct {
	pool     *pgxpool.Pool
	migrator *pg.Migrator
	store    *eventstore.Store
}

// Ready reports whether PostgreSQL answers and every migration is applied.
func (h *health) Ready(ctx context.Context) error {
	if err := h.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	ok, err := h.migrator.Current(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("migrations pending")
	}
	return nil
}

// Checks reports each dependency for /health.
func (h *health) Checks(ctx context.Context) map[string]api.Check {
	checks := map[string]api.Check{}
	if err := h.pool.Ping(ctx); err != nil {
		checks["postgres"] = api.Check{Status: api.CheckDown, Detail: "unreachable"}
		return checks
	}
	checks["postgres"] = api.Check{Status: api.CheckOK}
	if ok, err := h.migrator.Current(ctx); err != nil || !ok {
		checks["migrations"] = api.Check{Status: api.CheckDegraded, Detail: "pending"}
	} else {
		checks["migrations"] = api.Check{Status: api.CheckOK}
	}
	if stall, err := h.store.FeedStall(ctx); err != nil {
		checks["feed"] = api.Check{Status: api.CheckDegraded, Detail: "stall unknown"}
	} else if stall > feedStallDegraded {
		checks["feed"] = api.Check{Status: api.CheckDegraded, Detail: fmt.Sprintf("oldest write transaction open %s", stall.Round(time.Second))}
	} else {
		checks["feed"] = api.Check{Status: api.CheckOK}
	}
	return checks
}

// register exposes the feed stall as a gauge, read at scrape time.
func (h *health) register(reg prometheus.Registerer) error {
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mana_feed_stall_seconds",
		Help: "Age of the oldest open write transaction in the PostgreSQL cluster; the event feed cannot pass it.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		d, err := h.store.FeedStall(ctx)
		if err != nil {
			return -1
		}
		return d.Seconds()
	}))
}
