package main

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pg"
)

func cmdAdmin(ctx context.Context, e *env, args []string) error {
	const help = "Usage: mana admin set-role EMAIL ROLE\n\n  set-role  give a user the role user or admin; revokes the user's sessions\n"
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" {
		fmt.Fprint(e.stdout, help)
		if len(args) == 0 {
			return fmt.Errorf("%w: missing subcommand", errUsage)
		}
		return nil
	}
	switch args[0] {
	case "set-role":
		return adminSetRole(ctx, e, args[1:])
	}
	return fmt.Errorf("%w: unknown subcommand %q", errUsage, args[0])
}

func adminSetRole(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "admin set-role", "admin set-role EMAIL ROLE\n\nSets the role (user or admin) and revokes every session of the user, so no token carries the old role.")
	if err := fs.Parse(args); err != nil {
		return parseFlags(fs, args)
	}
	if fs.NArg() != 2 {
		return fmt.Errorf("%w: admin set-role takes EMAIL and ROLE", errUsage)
	}
	email, role := fs.Arg(0), fs.Arg(1)
	if !domain.ValidRole(role) {
		return fmt.Errorf("%w: ROLE must be user or admin", errUsage)
	}
	pool, err := pg.Open(ctx, e.cfg.DatabaseURL, 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := openStore(e.cfg, pool, nil)
	if err != nil {
		return err
	}
	// Revocations reach apps through a shared NATS; an embedded one belongs
	// to its serve process, so without NATS_URL only the events record them.
	var nc *nats.Conn
	if e.cfg.NATSURL != "" {
		conn, err := natsx.Connect(ctx, natsx.Config{URL: e.cfg.NATSURL, Name: "mana admin"})
		if err != nil {
			return err
		}
		defer conn.Close()
		nc = conn.NC
	}
	svc, _, err := newIdentity(ctx, e, store, nc, nil)
	if err != nil {
		return err
	}
	changed, err := svc.SetRole(ctx, email, role, domain.RequestMeta{RequestID: "cli"})
	if err != nil {
		return err
	}
	if changed {
		fmt.Fprintf(e.stdout, "role set to %s; sessions revoked\n", role)
	} else {
		fmt.Fprintf(e.stdout, "role already %s\n", role)
	}
	return nil
}
