package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/tokens"
)

func cmdKeys(ctx context.Context, e *env, args []string) error {
	const help = "Usage: mana keys generate|rotate|list\n\n" +
		"  generate  add a signing key that signs at once; older keys stay published\n" +
		"  rotate    add a key that is published now and signs in 15 minutes; older keys retire 20 minutes after that\n" +
		"  list      one line per key: kid, algorithm, not-before, retire-after, whether it signs now\n"
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" {
		fmt.Fprint(e.stdout, help)
		if len(args) == 0 {
			return fmt.Errorf("%w: missing subcommand", errUsage)
		}
		return nil
	}
	sub, rest := args[0], args[1:]
	var synopsis string
	switch sub {
	case "generate":
		synopsis = "keys generate\n\nAdds an RSA-2048 signing key with not_before = now: it signs at once on every node after its next reload (within 30 s). Older keys stay published."
	case "rotate":
		synopsis = "keys rotate\n\nAdds an RSA-2048 signing key with not_before = now + 15 min: published in the JWKS at once, signing from then on. Every older key gets retire_after = that not_before + 20 min."
	case "list":
		synopsis = "keys list\n\nPrints every signing key, retired ones included: KID ALG NOT_BEFORE RETIRE_AFTER SIGNING (times in UTC)."
	default:
		return fmt.Errorf("%w: unknown subcommand %q", errUsage, sub)
	}
	if err := parseFlags(newFlags(e, "keys "+sub, synopsis), rest); err != nil {
		return err
	}

	pool, err := pg.Open(ctx, e.cfg.DatabaseURL, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := loadDevSecrets(e.cfg); err != nil {
		return err
	}
	kr, err := keyring.New(e.cfg.DataKEK, e.cfg.EmailIndexKey)
	if err != nil {
		return err
	}
	svc, err := tokens.New(ctx, tokens.Options{
		Pool: pool, Keyring: kr, Issuer: e.cfg.JWTIssuer, Audience: e.cfg.JWTAudience,
		Clock: domain.SystemClock, Logger: e.log,
	})
	if err != nil {
		return err
	}

	switch sub {
	case "generate":
		k, err := svc.Generate(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "generated key %s (%s), signing from %s\n", k.KID, k.Alg, formatKeyTime(k.NotBefore))
	case "rotate":
		k, err := svc.Rotate(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "rotated: key %s (%s) published now, signs from %s; older keys retire by %s\n",
			k.KID, k.Alg, formatKeyTime(k.NotBefore), formatKeyTime(k.NotBefore.Add(tokens.RetireGrace)))
	case "list":
		keys, err := svc.List(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KID\tALG\tNOT_BEFORE\tRETIRE_AFTER\tSIGNING")
		for _, k := range keys {
			signing := "no"
			if k.Signing {
				signing = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.KID, k.Alg, formatKeyTime(k.NotBefore), formatKeyTime(k.RetireAfter), signing)
		}
		return tw.Flush()
	}
	return nil
}

// formatKeyTime prints a key time in UTC to the second, "-" for none.
func formatKeyTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
