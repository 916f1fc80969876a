package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/internal/pg"
)

// shutdownGrace bounds how long in-flight requests may finish after a
// termination signal.
const shutdownGrace = 15 * time.Second

// version is the build version, set with -ldflags "-X main.version=…".
var version = "dev"

func cmdServe(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "serve", "serve [--port N]\n\nMigrates the database, seeds the default packages and serves the HTTP API until SIGINT or SIGTERM.")
	port := fs.Int("port", e.cfg.Port, "HTTP port (overrides PORT; 0 picks a free port)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
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
	srv := api.New(api.Config{BodyLimit: e.cfg.BodyLimit, Logger: e.log, Health: h, Version: version})
	store, err := openStore(e.cfg, pool, srv.Registry())
	if err != nil {
		return err
	}
	h.store = store
	if err := h.register(srv.Registry()); err != nil {
		return err
	}
	if _, err := seedPackages(ctx, store); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(*port)))
	if err != nil {
		return fmt.Errorf("listen on port %d: %w", *port, err)
	}
	hs := &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	e.log.Info("listening", "addr", ln.Addr().String(), "version", version)

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// Shut down in order: stop advertising readiness, let in-flight
	// requests finish, then close the pool (deferred).
	e.log.Info("shutting down")
	srv.SetReady(false)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	e.log.Info("stopped")
	return nil
}
