package main

import (
	"context"
	"fmt"
	"strconv"

	"github.com/google/uuid"

	"github.com/nats-io/nats.go"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/credits"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pg"
)

func cmdAdmin(ctx context.Context, e *env, args []string) error {
	const help = "Usage: mana admin set-role EMAIL ROLE | service-key create APP [--max-per-user-per-day N] | service-key revoke KEY_ID | grant|adjust USER_ID AMOUNT --reason R | refund USER_ID TRANSACTION_ID AMOUNT --reason R\n\n  set-role     give a user the role user or admin; revokes the user's sessions\n  service-key  create or revoke an app's service key (the secret is shown once)\n  grant        add credits (--bucket free|paid)\n  adjust       correct a balance by a signed amount\n  refund       give back part or all of a spend or capture\n"
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
	case "service-key":
		return adminServiceKey(ctx, e, args[1:])
	case "grant", "adjust", "refund":
		return adminCredits(ctx, e, args[0], args[1:])
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

func adminServiceKey(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || (args[0] != "create" && args[0] != "revoke") {
		fmt.Fprint(e.stdout, "Usage: mana admin service-key create APP [--max-per-user-per-day N] | revoke KEY_ID\n")
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-h") {
			return nil
		}
		return fmt.Errorf("%w: want create or revoke", errUsage)
	}
	fs := newFlags(e, "admin service-key "+args[0], "admin service-key create APP [--max-per-user-per-day N] | revoke KEY_ID")
	limit := fs.Int64("max-per-user-per-day", 0, "cap on what the app may spend per user per UTC day (0 = none)")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: service-key %s takes one argument", errUsage, args[0])
	}
	cs, done, err := openCredits(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	if args[0] == "create" {
		k, err := cs.CreateServiceKey(ctx, pos[0], *limit)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "key id: %s\napp: %s\nX-Service-Key: %s\n(the key is shown once; only its hash is stored)\n", k.ID, k.AppID, k.Secret)
		return nil
	}
	ok, err := cs.RevokeServiceKey(ctx, pos[0])
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no active service key %q", pos[0])
	}
	fmt.Fprintln(e.stdout, "revoked")
	return nil
}

func adminCredits(ctx context.Context, e *env, op string, args []string) error {
	fs := newFlags(e, "admin "+op, "admin "+op+" USER_ID [TRANSACTION_ID] AMOUNT --reason R [--bucket free|paid]")
	reason := fs.String("reason", "", "why (required; recorded in the event)")
	bucket := fs.String("bucket", "free", "bucket for grant: free or paid")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	want := 2
	if op == "refund" {
		want = 3
	}
	if len(pos) != want {
		return fmt.Errorf("%w: admin %s takes %d arguments", errUsage, op, want)
	}
	user, err := uuid.Parse(pos[0])
	if err != nil {
		return fmt.Errorf("%w: USER_ID must be a UUID", errUsage)
	}
	in := domain.AdminCreditInput{UserID: user, Reason: *reason, Bucket: *bucket}
	amountArg := pos[1]
	if op == "refund" {
		if in.TransactionID, err = uuid.Parse(pos[1]); err != nil {
			return fmt.Errorf("%w: TRANSACTION_ID must be a UUID", errUsage)
		}
		amountArg = pos[2]
	}
	if in.Amount, err = strconv.ParseInt(amountArg, 10, 64); err != nil {
		return fmt.Errorf("%w: AMOUNT must be an integer", errUsage)
	}
	cs, done, err := openCredits(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	caller := domain.Caller{Kind: "admin", Meta: domain.RequestMeta{RequestID: "cli"}}
	var r domain.Receipt
	switch op {
	case "grant":
		r, err = cs.Grant(ctx, caller, in)
	case "adjust":
		r, err = cs.Adjust(ctx, caller, in)
	default:
		r, err = cs.Refund(ctx, caller, in)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s\n", r.Body)
	return nil
}

// openCredits opens the database and the credits service for a CLI command.
func openCredits(ctx context.Context, e *env) (*credits.Service, func(), error) {
	pool, err := pg.Open(ctx, e.cfg.DatabaseURL, 4)
	if err != nil {
		return nil, nil, err
	}
	store, err := openStore(e.cfg, pool, nil)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	cs, err := newCredits(e, store, nil)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return cs, pool.Close, nil
}
