package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"text/tabwriter"

	"github.com/google/uuid"

	"github.com/nats-io/nats.go"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/catalog"
	"github.com/manacore/mana/internal/credits"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pg"
)

func cmdAdmin(ctx context.Context, e *env, args []string) error {
	const help = "Usage: mana admin set-role EMAIL ROLE | service-key create APP [--max-per-user-per-day N] | service-key revoke KEY_ID | grant|adjust USER_ID AMOUNT --reason R | refund USER_ID TRANSACTION_ID AMOUNT --reason R | packages list|create|update ...\n\n  set-role     give a user the role user, admin or auditor; revokes the user's sessions\n  service-key  create or revoke an app's service key (the secret is shown once)\n  grant        add credits (--bucket free|paid)\n  adjust       correct a balance by a signed amount\n  refund       give back part or all of a spend or capture\n  packages     list, create or update the credit packages on sale\n"
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
	case "packages":
		return adminPackages(ctx, e, args[1:])
	}
	return fmt.Errorf("%w: unknown subcommand %q", errUsage, args[0])
}

func adminSetRole(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "admin set-role", "admin set-role EMAIL ROLE\n\nSets the role (user, admin or auditor) and revokes every session of the user, so no token carries the old role.")
	if err := fs.Parse(args); err != nil {
		return parseFlags(fs, args)
	}
	if fs.NArg() != 2 {
		return fmt.Errorf("%w: admin set-role takes EMAIL and ROLE", errUsage)
	}
	email, role := fs.Arg(0), fs.Arg(1)
	if !domain.ValidRole(role) {
		return fmt.Errorf("%w: ROLE must be user, admin or auditor", errUsage)
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

const packagesUsage = `Usage: mana admin packages list [--min-position CURSOR]
       mana admin packages create NAME --credits N --price-cents N [--sort-order N] [--active=false] [--idempotency-key K]
       mana admin packages update PACKAGE_ID [--name NAME] [--credits N] [--price-cents N] [--sort-order N] [--active=true|false]

  list    every package, on sale or not, by sort order (from the packages read model)
  create  record a package (currency eur); prints it and the write's position
  update  change some fields of a package; prints it and the write's position
`

// adminPackages manages the credit package catalogue.
func adminPackages(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "create" && args[0] != "update") {
		fmt.Fprint(e.stdout, packagesUsage)
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-h") {
			return nil
		}
		return fmt.Errorf("%w: want list, create or update", errUsage)
	}
	switch args[0] {
	case "list":
		return adminPackagesList(ctx, e, args[1:])
	case "create":
		return adminPackagesCreate(ctx, e, args[1:])
	}
	return adminPackagesUpdate(ctx, e, args[1:])
}

// cliAdmin is the caller of admin commands run from the CLI.
var cliAdmin = domain.Caller{Kind: "admin", Meta: domain.RequestMeta{RequestID: "cli"}}

func adminPackagesList(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "admin packages list", "admin packages list [--min-position CURSOR]")
	minPos := fs.String("min-position", "", "wait until the list reflects this position (printed by create and update)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	svc, done, err := openCatalog(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	list, err := svc.All(ctx, uuid.Nil, *minPos)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tCREDITS\tPRICE_CENTS\tCURRENCY\tSORT_ORDER\tACTIVE")
	for _, p := range list {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%d\t%t\n", p.ID, p.Name, p.Credits, p.PriceCents, p.Currency, p.SortOrder, p.Active)
	}
	return tw.Flush()
}

func adminPackagesCreate(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "admin packages create", "admin packages create NAME --credits N --price-cents N [--sort-order N] [--active=false] [--idempotency-key K]")
	credits := fs.Int64("credits", 0, "credits the package grants (required, > 0)")
	price := fs.Int64("price-cents", 0, "price in euro cents (required, > 0)")
	order := fs.Int("sort-order", 0, "position in the catalogue (ascending)")
	active := fs.Bool("active", true, "on sale")
	key := fs.String("idempotency-key", "", "makes a retry of this command record the package once")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: admin packages create takes NAME", errUsage)
	}
	svc, done, err := openCatalog(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	r, err := svc.Create(ctx, cliAdmin, catalog.NewPackage{Name: pos[0], Credits: *credits, PriceCents: *price,
		SortOrder: *order, Active: *active}, *key)
	if err != nil {
		return err
	}
	printWrite(e, r)
	return nil
}

func adminPackagesUpdate(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "admin packages update", "admin packages update PACKAGE_ID [--name NAME] [--credits N] [--price-cents N] [--sort-order N] [--active=true|false]")
	name := fs.String("name", "", "new name")
	credits := fs.Int64("credits", 0, "new credits (> 0)")
	price := fs.Int64("price-cents", 0, "new price in euro cents (> 0)")
	order := fs.Int("sort-order", 0, "new position in the catalogue")
	active := fs.Bool("active", true, "on sale (--active=false takes it off sale)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: admin packages update takes PACKAGE_ID", errUsage)
	}
	id, err := uuid.Parse(pos[0])
	if err != nil {
		return fmt.Errorf("%w: PACKAGE_ID must be a UUID", errUsage)
	}
	var ch catalog.Changes
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "name":
			ch.Name = name
		case "credits":
			ch.Credits = credits
		case "price-cents":
			ch.PriceCents = price
		case "sort-order":
			ch.SortOrder = order
		case "active":
			ch.Active = active
		}
	})
	svc, done, err := openCatalog(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	r, err := svc.Update(ctx, cliAdmin, id, ch)
	if err != nil {
		return err
	}
	printWrite(e, r)
	return nil
}

// printWrite prints a write's answer: its JSON body, then the position to
// pass to list --min-position when it recorded anything.
func printWrite(e *env, r domain.Receipt) {
	fmt.Fprintf(e.stdout, "%s\n", r.Body)
	if r.Position != "" {
		fmt.Fprintf(e.stdout, "position: %s\n", r.Position)
	}
}
