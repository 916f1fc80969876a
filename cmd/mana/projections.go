package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/projections"
)

func cmdProjections(ctx context.Context, e *env, args []string) error {
	const help = "Usage: mana projections status|rebuild NAME|skip NAME CURSOR\n\n  status           one line per projection: name, checkpoint, lag, failures, holder\n  rebuild NAME     rebuild a read model online into a shadow table and swap it in\n  skip NAME CURSOR pass a poison event (recorded)\n"
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" {
		fmt.Fprint(e.stdout, help)
		if len(args) == 0 {
			return fmt.Errorf("%w: missing subcommand", errUsage)
		}
		return nil
	}
	sub, rest := args[0], args[1:]
	var synopsis string
	want := 0
	switch sub {
	case "status":
		synopsis = "projections status\n\nPrints name, checkpoint (<tx_id>-<position>), lag in events and seconds, unresolved failures and the lease holder."
	case "rebuild":
		synopsis, want = "projections rebuild NAME\n\nRebuilds NAME online: takes its lease (the live projector pauses), replays the feed into a shadow table and swaps it in with the checkpoint in one transaction.", 1
	case "skip":
		synopsis, want = "projections skip NAME CURSOR\n\nLets NAME pass the poison event at CURSOR without applying it; the skip is recorded in projection_failures.", 2
	default:
		return fmt.Errorf("%w: unknown subcommand %q", errUsage, sub)
	}
	fs := newFlags(e, "projections "+sub, synopsis)
	if err := fs.Parse(rest); err != nil {
		return parseFlags(fs, rest)
	}
	if fs.NArg() != want {
		return fmt.Errorf("%w: projections %s takes %d argument(s)", errUsage, sub, want)
	}
	all := projections.All()
	var proj projections.Projection
	if want > 0 {
		p, ok := projections.Find(all, fs.Arg(0))
		if !ok {
			return fmt.Errorf("%w: unknown projection %q", errUsage, fs.Arg(0))
		}
		proj = p
	}
	var cursor eventstore.Cursor
	if want == 2 {
		c, err := eventstore.ParseCursor(fs.Arg(1))
		if err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		cursor = c
	}

	pool, err := pg.Open(ctx, e.cfg.DatabaseURL, 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	switch sub {
	case "status":
		sts, err := projections.Statuses(ctx, pool, all)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tCHECKPOINT\tLAG_EVENTS\tLAG_SECONDS\tFAILURES\tHOLDER")
		for _, st := range sts {
			holder := st.Holder
			if holder == "" {
				holder = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%d\t%s\n", st.Name, st.Checkpoint, st.LagEvents, st.LagSeconds, st.Failures, holder)
		}
		return tw.Flush()
	case "rebuild":
		store, err := openStore(e.cfg, pool, nil)
		if err != nil {
			return err
		}
		c, err := projections.Rebuild(ctx, store, proj, holderID())
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "rebuilt %s up to %s\n", proj.Name(), c)
		return nil
	default: // skip
		if err := projections.Skip(ctx, pool, proj.Name(), cursor, "cli:"+holderID()); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s will skip the event at %s\n", proj.Name(), cursor)
		return nil
	}
}
