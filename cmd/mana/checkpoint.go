package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/ledger"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pg"
)

// checkpointInterval is how often the checkpoint signer of `serve` looks
// at the head of the feed; it signs only when the head moved.
const checkpointInterval = 5 * time.Minute

// checkpointLease is the lease the checkpoint signer runs under.
const checkpointLease = "worker:checkpoint-signer"

// ledgerCheckpoint is `mana ledger checkpoint`: sign a checkpoint up to the
// current safe cursor, store it, publish it when NATS_URL is set, and print
// it as JSON.
func ledgerCheckpoint(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "ledger checkpoint", "ledger checkpoint\n\nSigns a checkpoint with LEDGER_SIGNING_KEY: the Merkle root over the event hashes in feed order up to the newest cursor below the horizon. Stores it, announces it on NATS subject "+natsx.CheckpointSubject+" when NATS_URL is set, and prints it as JSON.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := loadDevSecrets(e.cfg); err != nil {
		return err
	}
	pool, err := pg.Open(ctx, e.cfg.DatabaseURL, 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	svc := ledger.New(pool, ledger.Options{SigningKey: e.cfg.LedgerSigningKey})
	cp, _, err := svc.Create(ctx, ledger.CreateOptions{})
	if err != nil {
		return err
	}
	if e.cfg.NATSURL != "" {
		if err := publishCheckpointTo(e.cfg.NATSURL, cp); err != nil {
			// Stored is what counts; the announcement is best effort.
			e.log.Warn("checkpoint stored but not announced on NATS", "id", cp.ID, "error", err)
		}
	}
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(cp)
}

// publishCheckpointTo announces cp on an external NATS server.
func publishCheckpointTo(url string, cp domain.Checkpoint) error {
	nc, err := nats.Connect(url, nats.Name("mana ledger checkpoint"), nats.Timeout(5*time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := publishCheckpoint(nc, cp); err != nil {
		return err
	}
	return nc.FlushTimeout(5 * time.Second)
}

// publishCheckpoint announces cp on the core NATS subject
// natsx.CheckpointSubject.
func publishCheckpoint(nc *nats.Conn, cp domain.Checkpoint) error {
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	return nc.Publish(natsx.CheckpointSubject, b)
}

// startCheckpointSigner runs the checkpoint signer under its lease until
// ctx ends: a checkpoint at once when the head moved since the latest one,
// then every checkpointInterval.
func startCheckpointSigner(ctx context.Context, e *env, store *eventstore.Store, svc *ledger.Service, nc *nats.Conn, holder string, interval time.Duration) {
	lease := store.Lease(checkpointLease, holder, e.cfg.LeaseTTL)
	_ = lease.Run(ctx, func(ctx context.Context) error {
		return svc.RunSigner(ctx, ledger.SignerOptions{
			Interval: interval,
			Guard: func(ctx context.Context, tx pgx.Tx) error {
				held, err := lease.HeldIn(ctx, tx)
				if err != nil {
					return err
				}
				if !held {
					return errors.New("lease " + checkpointLease + " lost")
				}
				return nil
			},
			Publish: func(_ context.Context, cp domain.Checkpoint) error {
				if nc == nil {
					return nil
				}
				return publishCheckpoint(nc, cp)
			},
			Logger: e.log,
		})
	}, func(other string) {
		e.log.Info("checkpoint signer idle: lease held by another process", "holder", other)
	})
}

// verifyCheckpoint is the --checkpoint part of `mana ledger verify`: the
// checkpoint's signature with its stored key, and its Merkle root
// recomputed from the log up to its cursor.
// id 0 is the latest checkpoint.
func verifyCheckpoint(ctx context.Context, e *env, pool *pgxpool.Pool, id int64) error {
	v, err := ledger.New(pool, ledger.Options{}).Verify(ctx, id)
	if err != nil {
		var de *domain.Error
		if errors.As(err, &de) {
			return fmt.Errorf("checkpoint: %s", de.Message)
		}
		return err
	}
	cp := v.Checkpoint
	if v.Problem != "" {
		return fmt.Errorf("checkpoint %d: FAILED (cursor %s, key %s): %s", cp.ID, cp.Cursor, cp.KeyID, v.Problem)
	}
	fmt.Fprintf(e.stdout, "checkpoint %d: ok (cursor %s, %d events, root %s, key %s)\n", cp.ID, cp.Cursor, cp.TreeSize, cp.Root, cp.KeyID)
	return nil
}

// parseCheckpointFlag parses --checkpoint's value: a checkpoint id, or
// latest (0).
func parseCheckpointFlag(which string) (int64, error) {
	if which == "latest" {
		return 0, nil
	}
	n, err := strconv.ParseInt(which, 10, 64)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%w: --checkpoint wants a checkpoint id or latest, not %q", errUsage, which)
	}
	return n, nil
}

// optionalFlagValue lets a string flag be given without a value: a bare
// -name or --name (last, or followed by another flag) becomes
// --name=def.
func optionalFlagValue(args []string, name, def string) []string {
	out := make([]string, 0, len(args))
	for i, a := range args {
		if (a == "-"+name || a == "--"+name) && (i+1 == len(args) || strings.HasPrefix(args[i+1], "-")) {
			a = "--" + name + "=" + def
		}
		out = append(out, a)
	}
	return out
}

// ledgerCheckProof is `mana ledger check-proof`: it verifies an inclusion
// proof offline against the published keys.
func ledgerCheckProof(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "ledger check-proof", "ledger check-proof --proof FILE|- --keys FILE [--event-hash HEX]\n\nVerifies offline, without a database, an inclusion proof saved from GET /api/v1/ledger/proof/:eventId: the checkpoint's Ed25519 signature with its key from the keys file (saved from GET /api/v1/ledger/keys), and that the audit path leads from the event's hash to the signed root.")
	proofPath := fs.String("proof", "", "the proof JSON file, or - for standard input")
	keysPath := fs.String("keys", "", "the keys JSON file ({\"keys\":[…]} as GET /api/v1/ledger/keys answers)")
	eventHash := fs.String("event-hash", "", "also require the proof to be for this event hash (hex), e.g. from `mana events export`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *proofPath == "" || *keysPath == "" {
		return fmt.Errorf("%w: --proof and --keys are required", errUsage)
	}
	var p domain.InclusionProof
	if err := readJSON(*proofPath, os.Stdin, &p); err != nil {
		return fmt.Errorf("proof: %w", err)
	}
	var keys struct {
		Keys []domain.LedgerKey `json:"keys"`
	}
	if *keysPath == "-" && *proofPath == "-" {
		return fmt.Errorf("%w: only one of --proof and --keys can be standard input", errUsage)
	}
	if err := readJSON(*keysPath, os.Stdin, &keys); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	if *eventHash != "" && !strings.EqualFold(*eventHash, p.EventHash) {
		return fmt.Errorf("proof: FAILED: it is for event hash %s, not %s", p.EventHash, *eventHash)
	}
	if err := ledger.CheckProof(p, keys.Keys); err != nil {
		return fmt.Errorf("proof: FAILED: %w", err)
	}
	fmt.Fprintf(e.stdout, "proof: ok (event %s at cursor %s is leaf %d of %d in checkpoint %d, cursor %s, root %s, signed by %s at %s)\n",
		p.EventID, p.Cursor, p.LeafIndex, p.TreeSize, p.Checkpoint.ID, p.Checkpoint.Cursor, p.Checkpoint.Root,
		p.Checkpoint.KeyID, p.Checkpoint.SignedAt.UTC().Format(time.RFC3339Nano))
	return nil
}

// readJSON decodes the JSON file at path ("-" for stdin) into v, refusing
// trailing data.
func readJSON(path string, stdin io.Reader, v any) error {
	var r io.Reader = stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	dec := json.NewDecoder(r)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("not valid JSON: %w", err)
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}
