package main

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/internal/pg"
)

// systemActor reads service-wide tables (sessions of every user, service
// keys) for the metrics, under the RLS scope the policies grant the service.
var systemActor = pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}

// scrapeQueryTimeout bounds each query a scrape runs.
const scrapeQueryTimeout = 2 * time.Second

// registerActiveSessions exposes mana_active_sessions, counted at scrape
// time: sessions that are active and not past their expiry. The count runs
// on the partial index of active sessions; NaN means the database did not
// answer.
func registerActiveSessions(reg prometheus.Registerer, pool *pgxpool.Pool) error {
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mana_active_sessions",
		Help: "Sessions that are active and unexpired, service-wide (every node reports the same count: aggregate with max).",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), scrapeQueryTimeout)
		defer cancel()
		var n int64
		err := pg.QueryRow(ctx, pool, systemActor,
			`SELECT count(*) FROM auth_sessions WHERE status = 'active' AND expires_at > now()`, nil, &n)
		if err != nil {
			return math.NaN()
		}
		return float64(n)
	}))
}

// appRefreshEvery is how often, at most, an unknown app id makes the
// registry reload the registered apps.
const appRefreshEvery = 5 * time.Second

// appRegistry knows the registered app ids (those with a service key, even
// a revoked one), so that mana_credits_spent_total labels only them and not
// whatever appId a user's token sends. Known ids are answered from memory;
// an unknown id reloads the set, at most every appRefreshEvery and by one
// caller at a time, so a key created by `mana admin service-key create` is
// picked up within seconds.
type appRegistry struct {
	pool    *pgxpool.Pool
	apps    atomic.Pointer[map[string]struct{}]
	loaded  atomic.Int64 // unix nanoseconds of the last load attempt
	loading sync.Mutex
}

func newAppRegistry(pool *pgxpool.Pool) *appRegistry { return &appRegistry{pool: pool} }

// Known implements api.Config.KnownApp.
func (r *appRegistry) Known(ctx context.Context, app string) bool {
	if r.has(app) {
		return true
	}
	if time.Since(time.Unix(0, r.loaded.Load())) < appRefreshEvery || !r.loading.TryLock() {
		return false
	}
	defer r.loading.Unlock()
	if time.Since(time.Unix(0, r.loaded.Load())) < appRefreshEvery {
		return r.has(app) // another caller just reloaded
	}
	r.loaded.Store(time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), scrapeQueryTimeout)
	defer cancel()
	apps := map[string]struct{}{}
	err := pg.InTx(ctx, r.pool, systemActor, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT DISTINCT app_id FROM service_keys`)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		for _, id := range ids {
			apps[id] = struct{}{}
		}
		return err
	})
	if err != nil {
		return false // keep the old set; the next unknown id retries
	}
	r.apps.Store(&apps)
	return r.has(app)
}

func (r *appRegistry) has(app string) bool {
	m := r.apps.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[app]
	return ok
}
