package main

import (
	"context"
	"fmt"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

func cmdLedger(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" {
		fmt.Fprint(e.stdout, "Usage: mana ledger verify [--checkpoint ID|latest] | checkpoint | check-proof --proof FILE --keys FILE\n\n  verify       check hash chains, postings and balances; exit 1 with the first bad cursor;\n               --checkpoint also proves the log up to a signed checkpoint was not rewritten\n  checkpoint   sign a Merkle checkpoint of the log up to the safe cursor, store, announce and print it\n  check-proof  verify an inclusion proof from GET /api/v1/ledger/proof/:eventId offline\n")
		if len(args) == 0 {
			return fmt.Errorf("%w: missing subcommand", errUsage)
		}
		return nil
	}
	switch args[0] {
	case "verify":
		return ledgerVerify(ctx, e, args[1:])
	case "checkpoint":
		return ledgerCheckpoint(ctx, e, args[1:])
	case "check-proof":
		return ledgerCheckProof(ctx, e, args[1:])
	}
	return fmt.Errorf("%w: unknown subcommand %q", errUsage, args[0])
}

func ledgerVerify(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "ledger verify", "ledger verify [--checkpoint ID|latest]\n\nIn one read-only snapshot as mana_auditor: recomputes every stream's hash chain, checks that every credit event's postings sum to zero and the trial balance is zero, and that every balances row equals the fold of its events up to the projection's checkpoint. Prints one line per passed check; exits non-zero with the first discrepancy and its cursor.")
	checkpoint := fs.String("checkpoint", "", "also verify this signed checkpoint: its Ed25519 signature with the stored key and its Merkle root recomputed from the log up to its cursor (an id, or latest; a bare --checkpoint means latest)")
	if err := parseFlags(fs, optionalFlagValue(args, "checkpoint", "latest")); err != nil {
		return err
	}
	checkpointID := int64(-1)
	if *checkpoint != "" {
		id, err := parseCheckpointFlag(*checkpoint)
		if err != nil {
			return err
		}
		checkpointID = id
	}
	pool, err := pg.Open(ctx, e.cfg.DatabaseURL, 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	// Verifying hashes needs no keys: an auditor can run it anywhere.
	store, err := eventstore.New(pool, eventstore.Options{})
	if err != nil {
		return err
	}
	// The three checks run in one REPEATABLE READ snapshot as mana_auditor
	// (eventstore.VerifyLedger); each prints its line as it passes, and
	// the first discrepancy is the one-line error.
	_, d, err := store.VerifyLedger(ctx, eventstore.VerifyOptions{Passed: func(check string, r eventstore.LedgerReport) {
		fmt.Fprintln(e.stdout, r.Line(check))
	}})
	if err != nil {
		return err
	}
	if d != nil {
		return d
	}
	if checkpointID >= 0 {
		return verifyCheckpoint(ctx, e, pool, checkpointID)
	}
	return nil
}
