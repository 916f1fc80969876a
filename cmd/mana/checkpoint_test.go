package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pgtest"
)

// waitFeedSafe waits until every event of the database at dsn is below
// the horizon, which another transaction anywhere in the shared cluster
// may hold back for a moment, so a checkpoint covers all of them.
func waitFeedSafe(t *testing.T, dsn string) {
	t.Helper()
	conn := connect(t, dsn)
	deadline := time.Now().Add(time.Minute)
	for {
		var pending int
		if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM events
			WHERE tx_id >= pg_snapshot_xmin(pg_current_snapshot())`).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events stayed above the horizon for a minute", pending)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rechain rewrites the payload of the Plus package's creation (the only
// event of its stream) and stores the hash recomputed over the new
// payload, behind the append-only trigger's back: every hash chain still
// verifies, and only a signed checkpoint can tell.
func rechain(t *testing.T, dsn string) {
	t.Helper()
	conn := connect(t, dsn)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "ALTER TABLE events DISABLE TRIGGER events_no_update_delete"); err != nil {
			return err
		}
		var r eventstore.Record
		err := tx.QueryRow(ctx, `UPDATE events SET payload = jsonb_set(payload, '{credits}', '1000000')
			WHERE event_type = 'package.created' AND payload->>'name' = 'Plus'
			RETURNING event_id, stream_type, stream_id, stream_version, event_type, schema_version,
			          occurred_at, metadata, payload, prev_hash`).Scan(&r.EventID, &r.StreamType, &r.StreamID,
			&r.StreamVersion, &r.EventType, &r.SchemaVersion, &r.OccurredAt, &r.Metadata, &r.Payload, &r.PrevHash)
		if err != nil {
			return err
		}
		h, err := eventstore.ComputeHash(&r)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE events SET hash = $1 WHERE event_id = $2", h, r.EventID); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "ALTER TABLE events ENABLE TRIGGER events_no_update_delete")
		return err
	})
	if err != nil {
		t.Fatalf("rechain: %v", err)
	}
}

// TestLedgerCheckpointCommand signs a checkpoint over a seeded database,
// verifies it, then rewrites one covered event consistently with its hash
// chain: the chains still verify, the checkpoint does not.
func TestLedgerCheckpointCommand(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)
	vars := map[string]string{"DATABASE_URL": dsn, "DATA_DIR": t.TempDir()}
	if res := runCmd(t, vars, "migrate"); res.code != 0 {
		t.Fatalf("migrate exited %d; stderr %q", res.code, res.stderr)
	}
	if res := runCmd(t, vars, "ledger", "verify", "--checkpoint"); res.code != 1 || !strings.Contains(res.stderr, "No ledger checkpoint has been signed yet") {
		t.Errorf("verify --checkpoint before any checkpoint = %d, stderr %q; want 1 and a clear reason", res.code, res.stderr)
	}
	waitFeedSafe(t, dsn)

	res := runCmd(t, vars, "ledger", "checkpoint")
	if res.code != 0 {
		t.Fatalf("ledger checkpoint = %d, stderr %q", res.code, res.stderr)
	}
	var cp domain.Checkpoint
	if err := json.Unmarshal([]byte(res.stdout), &cp); err != nil {
		t.Fatalf("ledger checkpoint printed %q: %v", res.stdout, err)
	}
	if cp.ID < 1 || cp.TreeSize != 4 || len(cp.Root) != 64 || len(cp.KeyID) != 16 || cp.Signature == "" {
		t.Fatalf("checkpoint %+v, want one over the 4 seeded events", cp)
	}

	for _, args := range [][]string{
		{"ledger", "verify", "--checkpoint"},
		{"ledger", "verify", "--checkpoint", "latest"},
		{"ledger", "verify", "--checkpoint", strconv.FormatInt(cp.ID, 10)},
		{"ledger", "verify", "--checkpoint=" + strconv.FormatInt(cp.ID, 10)},
	} {
		res := runCmd(t, vars, args...)
		want := "checkpoint " + strconv.FormatInt(cp.ID, 10) + ": ok (cursor " + cp.Cursor + ", 4 events, root " + cp.Root + ", key " + cp.KeyID + ")\n"
		if res.code != 0 || !strings.HasSuffix(res.stdout, want) {
			t.Errorf("%v = %d, stdout %q, stderr %q; want 0 ending with %q", args, res.code, res.stdout, res.stderr, want)
		}
	}
	if res := runCmd(t, vars, "ledger", "verify", "--checkpoint", "99"); res.code != 1 || !strings.Contains(res.stderr, "checkpoint 99 does not exist") {
		t.Errorf("verify --checkpoint 99 = %d, stderr %q", res.code, res.stderr)
	}
	if res := runCmd(t, vars, "ledger", "verify", "--checkpoint", "first"); res.code != 2 {
		t.Errorf("verify --checkpoint first = %d, stderr %q; want a usage error", res.code, res.stderr)
	}

	rechain(t, dsn)
	if res := runCmd(t, vars, "ledger", "verify"); res.code != 0 {
		t.Fatalf("plain verify after a consistent rewrite = %d, stderr %q; the rewrite was meant to keep the chains valid", res.code, res.stderr)
	}
	res = runCmd(t, vars, "ledger", "verify", "--checkpoint")
	if res.code != 1 {
		t.Fatalf("verify --checkpoint after a rewrite = %d, stdout %q, stderr %q; want 1", res.code, res.stdout, res.stderr)
	}
	if l := lines(res.stderr); len(l) != 1 ||
		!strings.HasPrefix(l[0], "mana ledger: checkpoint "+strconv.FormatInt(cp.ID, 10)+": FAILED") ||
		!strings.Contains(l[0], "events were rewritten") {
		t.Errorf("stderr %q, want one line naming the checkpoint and the rewrite", res.stderr)
	}
}

// TestLedgerCheckpointsOverHTTP runs serve against its own NATS server:
// the signer announces a checkpoint on NATS at start, the keys and the
// latest checkpoint are served, a proof fetched over HTTP verifies offline
// with check-proof, and a proof for an event after the checkpoint is a
// clear 409 until the next checkpoint.
func TestLedgerCheckpointsOverHTTP(t *testing.T) {
	t.Parallel()
	natsURL := startTestNATS(t)
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	announced := make(chan *nats.Msg, 16)
	if _, err := nc.ChanSubscribe(natsx.CheckpointSubject, announced); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	dsn := pgtest.NewDB(t)
	// The seeded events must be below the horizon before serve's signer
	// looks, or its first checkpoint could cover fewer of them.
	if res := runCmd(t, map[string]string{"DATABASE_URL": dsn, "DATA_DIR": t.TempDir()}, "migrate"); res.code != 0 {
		t.Fatalf("migrate: %d %s", res.code, res.stderr)
	}
	waitFeedSafe(t, dsn)
	s := startServe(t, map[string]string{"NATS_URL": natsURL, "DATABASE_URL": dsn})

	// The signer's first checkpoint, announced on NATS.
	var first domain.Checkpoint
	select {
	case m := <-announced:
		if err := json.Unmarshal(m.Data, &first); err != nil {
			t.Fatalf("announcement %q: %v", m.Data, err)
		}
	case <-time.After(authWait):
		t.Fatalf("no checkpoint announced on %s within %v", natsx.CheckpointSubject, authWait)
	}
	if first.TreeSize != 4 {
		t.Errorf("the first checkpoint covers %d events, want the 4 seeded", first.TreeSize)
	}

	// Keys are public.
	r := s.c.Do(http.MethodGet, "/api/v1/ledger/keys", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET /ledger/keys = %d %s", r.Status, r.Body)
	}
	var keys struct {
		Keys []domain.LedgerKey `json:"keys"`
	}
	r.JSON(t, &keys)
	if len(keys.Keys) != 1 || keys.Keys[0].KeyID != first.KeyID || keys.Keys[0].Algorithm != "Ed25519" {
		t.Fatalf("keys %+v, want the one key %s", keys.Keys, first.KeyID)
	}
	dir := t.TempDir()
	keysFile := filepath.Join(dir, "keys.json")
	if err := os.WriteFile(keysFile, r.Body, 0o600); err != nil {
		t.Fatal(err)
	}

	u := newCreditUser(t, s, "ledger")
	if r := s.c.Do(http.MethodGet, "/api/v1/ledger/checkpoints/latest", nil); r.Status != http.StatusUnauthorized {
		t.Errorf("GET /ledger/checkpoints/latest without a token = %d", r.Status)
	}
	r = s.c.Do(http.MethodGet, "/api/v1/ledger/checkpoints/latest", nil, u.auth())
	var latest domain.Checkpoint
	r.JSON(t, &latest)
	if r.Status != http.StatusOK || latest.ID != first.ID || latest.Root != first.Root || latest.Signature != first.Signature {
		t.Fatalf("GET /ledger/checkpoints/latest = %d %s, want the announced %+v", r.Status, r.Body, first)
	}

	// A proof of a seeded event verifies offline, bound to its exported
	// hash.
	exported := authExport(t, s.vars)
	if len(exported) < 5 {
		t.Fatalf("export has %d events, want the seeded ones and the user's", len(exported))
	}
	seeded := exported[2]
	r = s.c.Do(http.MethodGet, "/api/v1/ledger/proof/"+seeded.EventID.String(), nil, u.auth())
	if r.Status != http.StatusOK {
		t.Fatalf("GET /ledger/proof = %d %s", r.Status, r.Body)
	}
	var proof domain.InclusionProof
	r.JSON(t, &proof)
	if proof.LeafIndex != 2 || proof.Checkpoint.ID != first.ID || proof.Cursor != seeded.Cursor {
		t.Errorf("proof %+v, want leaf 2 of checkpoint %d at cursor %s", proof, first.ID, seeded.Cursor)
	}
	proofFile := filepath.Join(dir, "proof.json")
	if err := os.WriteFile(proofFile, r.Body, 0o600); err != nil {
		t.Fatal(err)
	}
	// check-proof needs no database at all.
	offline := map[string]string{"DATA_DIR": t.TempDir(), "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"}
	res := runCmd(t, offline, "ledger", "check-proof", "--proof", proofFile, "--keys", keysFile, "--event-hash", seeded.Hash)
	if res.code != 0 || !strings.HasPrefix(res.stdout, "proof: ok (event "+seeded.EventID.String()) {
		t.Fatalf("check-proof = %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}
	if res := runCmd(t, offline, "ledger", "check-proof", "--proof", proofFile, "--keys", keysFile, "--event-hash", exported[1].Hash); res.code != 1 {
		t.Errorf("check-proof for another event's hash = %d, stderr %q", res.code, res.stderr)
	}
	// A tampered proof fails.
	bad := proof
	bad.LeafIndex = 1
	b, _ := json.Marshal(bad)
	badFile := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(badFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if res := runCmd(t, offline, "ledger", "check-proof", "--proof", badFile, "--keys", keysFile); res.code != 1 ||
		!strings.Contains(res.stderr, "proof: FAILED") {
		t.Errorf("check-proof of a tampered proof = %d, stderr %q", res.code, res.stderr)
	}

	// The user's registration came after the checkpoint.
	newer := exported[len(exported)-1]
	r = s.c.Do(http.MethodGet, "/api/v1/ledger/proof/"+newer.EventID.String(), nil, u.auth())
	env := wantAuthError(t, r, http.StatusConflict, string(domain.CodeConflict))
	if !strings.Contains(env.Message, "not covered by checkpoint") {
		t.Errorf("409 message %q does not say the event is not covered yet", env.Message)
	}
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/ledger/proof/"+uuid.NewString(), nil, u.auth()), http.StatusNotFound, string(domain.CodeNotFound))
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/ledger/proof/not-a-uuid", nil, u.auth()), http.StatusBadRequest, string(domain.CodeValidationFailed))
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/ledger/proof/"+newer.EventID.String()+"?checkpoint=0", nil, u.auth()), http.StatusBadRequest, string(domain.CodeValidationFailed))
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/ledger/proof/"+newer.EventID.String(), nil), http.StatusUnauthorized, string(domain.CodeUnauthorized))

	// `ledger checkpoint` signs the next one and announces it on the
	// external NATS; then the newer event has its proof.
	waitFeedSafe(t, dsn)
	res = runCmd(t, s.vars, "ledger", "checkpoint")
	if res.code != 0 {
		t.Fatalf("ledger checkpoint = %d %s", res.code, res.stderr)
	}
	var second domain.Checkpoint
	if err := json.Unmarshal([]byte(res.stdout), &second); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-announced:
		var got domain.Checkpoint
		if err := json.Unmarshal(m.Data, &got); err != nil || got.ID != second.ID {
			t.Errorf("announced %s, want checkpoint %d", m.Data, second.ID)
		}
	case <-time.After(authWait):
		t.Errorf("ledger checkpoint announced nothing on NATS")
	}
	r = s.c.Do(http.MethodGet, "/api/v1/ledger/proof/"+newer.EventID.String(), nil, u.auth())
	if r.Status != http.StatusOK {
		t.Fatalf("proof after the next checkpoint = %d %s", r.Status, r.Body)
	}
	if err := os.WriteFile(proofFile, r.Body, 0o600); err != nil {
		t.Fatal(err)
	}
	if res := runCmd(t, offline, "ledger", "check-proof", "--proof", proofFile, "--keys", keysFile); res.code != 0 {
		t.Errorf("check-proof of the newer event = %d %s", res.code, res.stderr)
	}
	// The older checkpoint can still be asked for explicitly.
	r = s.c.Do(http.MethodGet, "/api/v1/ledger/proof/"+seeded.EventID.String()+"?checkpoint="+strconv.FormatInt(first.ID, 10), nil, u.auth())
	r.JSON(t, &proof)
	if r.Status != http.StatusOK || proof.Checkpoint.ID != first.ID {
		t.Errorf("proof in checkpoint %d = %d %s", first.ID, r.Status, r.Body)
	}
}
