package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/console"
	"github.com/manacore/mana/internal/ledger"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/projections"
)

// shutdownGrace bounds how long in-flight requests may finish after a
// termination signal.
const shutdownGrace = 15 * time.Second

// version is the build version, set with -ldflags "-X main.version=…".
var version = "dev"

func cmdServe(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "serve", "serve [--components=api,relay,projections,workers] [--port N]\n\nMigrates the database, seeds the default packages and runs the chosen components until SIGINT or SIGTERM.")
	port := fs.Int("port", e.cfg.Port, "HTTP port (overrides PORT; 0 picks a free port)")
	comps := fs.String("components", allComponents, "comma-separated components to run")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	run, err := parseComponents(*comps)
	if err != nil {
		return err
	}
	holder := holderID()

	pool, err := pg.Open(ctx, e.cfg.DatabaseURL, e.cfg.DatabaseMaxConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrate(ctx, pool); err != nil {
		return err
	}
	migrator, err := pg.NewMigrator(pool)
	if err != nil {
		return err
	}
	defer migrator.Close()

	h := &health{pool: pool, migrator: migrator}
	apps := newAppRegistry(pool)
	srv := api.New(api.Config{BodyLimit: e.cfg.BodyLimit, Logger: e.log, Health: h, Version: version,
		CORSOrigins: e.cfg.CORSOrigins, KnownApp: apps.Known})
	reg := srv.Registry()
	if err := registerActiveSessions(reg, pool); err != nil {
		return err
	}
	store, err := openStore(e.cfg, pool, reg)
	if err != nil {
		return err
	}
	h.store = store
	if err := h.register(reg); err != nil {
		return err
	}
	if _, err := seedPackages(ctx, store); err != nil {
		return err
	}
	// Signed checkpoints: the current LEDGER_SIGNING_KEY is published at
	// /api/v1/ledger/keys from the start, before it signs anything.
	checkpoints := ledger.New(pool, ledger.Options{SigningKey: e.cfg.LedgerSigningKey})
	if _, err := checkpoints.RegisterKey(ctx); err != nil {
		return err
	}

	// Background components stop at a checkpoint when bg is cancelled,
	// after the HTTP server has drained.
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	var wg sync.WaitGroup
	var nc *natsx.Conn
	{
		nc, err = natsx.Connect(ctx, natsx.Config{URL: e.cfg.NATSURL, DataDir: e.cfg.DataDir, MaxAge: e.cfg.JetStreamMaxAge, Name: "mana " + holder, Logger: e.log})
		if err != nil {
			return err
		}
		defer nc.Close()
		h.nats = nc
		if nc.Embedded {
			e.log.Info("embedded NATS JetStream", "store", nc.StoreDir)
		}
	}
	if run.relay {
		relay := store.NewRelay(nc.JS, eventstoreRelayOptions(holder, e, reg))
		store.OnAppend(relay.Notify)
		h.relay = relay
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := relay.Run(bg); err != nil {
				e.log.Error("relay stopped", "error", err)
			}
		}()
	}
	if run.projections {
		runner, err := projections.NewRunner(projections.Config{
			Store: store, JetStream: nc.JS, Projections: projections.All(),
			Holder: holder, Logger: e.log, Registerer: reg, LeaseTTL: e.cfg.LeaseTTL,
		})
		if err != nil {
			return err
		}
		h.runner = runner
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := runner.Run(bg); err != nil {
				e.log.Error("projections stopped", "error", err)
			}
		}()
	}
	h.projections = projections.All()

	if run.api {
		// Client addresses and rate limits, before any route serves.
		releaseEdge, err := setupEdge(ctx, e, srv, store)
		if err != nil {
			return err
		}
		defer releaseEdge()
		var runner *projections.Runner
		if h.runner != nil {
			runner = h.runner
		}
		idsvc, ts, err := newIdentity(ctx, e, store, nc.NC, runner)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); ts.Run(bg) }()
		srv.SetIdentity(idsvc)
		srv.SetAccount(idsvc, idsvc)
		srv.SetTwoFactor(idsvc, idsvc)
		cs, err := newCredits(e, store, runner)
		if err != nil {
			return err
		}
		srv.SetCredits(cs, idsvc)
		// DELETE /auth/account closes the credit account in the erasure's
		// transaction.
		idsvc.SetCreditAccounts(cs)
		srv.SetAccountDeletion(idsvc, idsvc)
		ps, err := newPurchases(e, cs)
		if err != nil {
			return err
		}
		srv.SetPurchases(ps, idsvc)
		cat, err := newCatalog(e, store, runner)
		if err != nil {
			return err
		}
		srv.SetCatalog(catalogAPI{cat}, idsvc)
		srv.SetLedger(checkpoints, idsvc)
		srv.SetEvents(eventLogAPI{store: store}, idsvc)
		if err := mountConsole(e, srv, console.Config{
			Identity: idsvc, Credits: cs, Recovery: idsvc, TwoFactor: idsvc, Purchases: ps,
			Checkpoints: checkpoints, Events: consoleEvents{store: store},
			Operations: consoleOperations{pool: pool, store: store},
		}); err != nil {
			return err
		}
	}
	if run.workers {
		cs, err := newCredits(e, store, nil)
		if err != nil {
			return err
		}
		lease := store.Lease("worker:hold-expiry", holder, e.cfg.LeaseTTL)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = lease.Run(bg, func(ctx context.Context) error { return cs.RunExpiry(ctx, time.Second) },
				func(other string) { e.log.Info("hold expiry idle: lease held by another process", "holder", other) })
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			startCheckpointSigner(bg, e, store, checkpoints, nc.NC, holder, checkpointInterval)
		}()
		runMail, err := newMailWorker(e, store, holder, reg)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); runMail(bg) }()
	}

	var hs *http.Server
	served := make(chan error, 1)
	if run.api {
		ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(*port)))
		if err != nil {
			return fmt.Errorf("listen on port %d: %w", *port, err)
		}
		hs = &http.Server{
			Handler:           srv.Handler(),
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       60 * time.Second,
			WriteTimeout:      60 * time.Second,
			IdleTimeout:       120 * time.Second,
		}
		go func() { served <- hs.Serve(ln) }()
		e.log.Info("listening", "addr", ln.Addr().String(), "version", version, "holder", holder)
	} else {
		e.log.Info("running without the api component", "version", version, "holder", holder)
	}

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// Shut down in order: stop advertising readiness, let in-flight
	// requests finish, stop the relay and projectors at a checkpoint, then
	// drain NATS and close the pool (deferred, in reverse).
	e.log.Info("shutting down")
	srv.SetReady(false)
	if hs != nil {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve: %w", err)
		}
	}
	stopBG()
	wg.Wait()
	e.log.Info("stopped")
	return nil
}
