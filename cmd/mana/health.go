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
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/projections"
)

// feedStallDegraded is how long the oldest write transaction in the cluster
// may stay open before /health reports the feed as degraded: while it is
// open no event after it reaches any reader.
const feedStallDegraded = 30 * time.Second

// health implements api.HealthChecker over the service's dependencies.
type health struct {
	pool        *pgxpool.Pool
	migrator    *pg.Migrator
	store       *eventstore.Store
	nats        *natsx.Conn
	relay       *eventstore.Relay
	runner      *projections.Runner
	projections []projections.Projection
}

// Lag beyond these marks the relay or a projection degraded in /health.
const (
	relayLagDegraded      = 1000
	projectionLagDegraded = 30.0 // seconds
)

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
	if h.nats != nil {
		if h.nats.NC.IsConnected() {
			checks["nats"] = api.Check{Status: api.CheckOK}
		} else {
			checks["nats"] = api.Check{Status: api.CheckDegraded, Detail: "disconnected"}
		}
	}
	if st, err := h.store.RelayStatus(ctx); err != nil {
		checks["relay"] = api.Check{Status: api.CheckDegraded, Detail: "status unknown"}
	} else if st.LagEvents > relayLagDegraded {
		checks["relay"] = api.Check{Status: api.CheckDegraded, Detail: fmt.Sprintf("%d events behind", st.LagEvents)}
	} else {
		checks["relay"] = api.Check{Status: api.CheckOK, Detail: fmt.Sprintf("checkpoint %s", st.Checkpoint)}
	}
	if len(h.projections) > 0 {
		sts, err := projections.Statuses(ctx, h.pool, h.projections)
		if err != nil {
			checks["projections"] = api.Check{Status: api.CheckDegraded, Detail: "status unknown"}
		}
		for _, st := range sts {
			c := api.Check{Status: api.CheckOK}
			switch {
			case st.Failures > 0:
				c = api.Check{Status: api.CheckDegraded, Detail: fmt.Sprintf("halted on a poison event (%d failures)", st.Failures)}
			case st.LagSeconds > projectionLagDegraded:
				c = api.Check{Status: api.CheckDegraded, Detail: fmt.Sprintf("%.0fs behind", st.LagSeconds)}
			}
			checks["projection:"+st.Name] = c
		}
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
