package ledger

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pgtest"
)

// appendEvents inserts n events with random hashes in one transaction, as
// the connection user: the tree covers the hash column whatever the
// chains say, and these tests are about the tree.
func appendEvents(t *testing.T, pool *pgxpool.Pool, n int) []uuid.UUID {
	t.Helper()
	ctx := t.Context()
	ids := make([]uuid.UUID, n)
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for i := range ids {
			ids[i] = uuid.New()
			h := make([]byte, 32)
			_, _ = rand.Read(h)
			if _, err := tx.Exec(ctx, `INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type,
				schema_version, occurred_at, metadata, payload, prev_hash, hash)
				VALUES ($1, 'test', $2, 1, 'test.happened', 1, now(), '{}', '{}', $3, $4)`,
				ids[i], ids[i].String(), make([]byte, 32), h); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	waitSafe(t, pool)
	return ids
}

// waitSafe waits until every event is below the horizon: another
// transaction anywhere in the cluster may hold it back for a moment.
func waitSafe(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var pending int
		if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM events
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

func newService(t *testing.T, pool *pgxpool.Pool, seed byte) *Service {
	t.Helper()
	priv, _ := testKey(t, seed)
	return New(pool, Options{SigningKey: priv, PageSize: 3})
}

func TestCheckpointsProofsAndTampering(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	ctx := t.Context()
	s := newService(t, pool, 9)

	if _, _, err := s.Create(ctx, CreateOptions{}); err != ErrEmptyLog {
		t.Fatalf("Create on an empty log: %v, want ErrEmptyLog", err)
	}
	if _, err := s.LatestCheckpoint(ctx); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("LatestCheckpoint before any: %v, want NOT_FOUND", err)
	}

	var ids []uuid.UUID
	for range 4 {
		ids = append(ids, appendEvents(t, pool, 5)...)
	}
	cp, created, err := s.Create(ctx, CreateOptions{})
	if err != nil || !created {
		t.Fatalf("Create: %v, %v", created, err)
	}
	if cp.TreeSize != int64(len(ids)) || cp.ID == 0 || len(cp.Root) != 64 {
		t.Fatalf("checkpoint %+v, want %d events", cp, len(ids))
	}
	keys, err := s.SigningKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].KeyID != cp.KeyID {
		t.Fatalf("SigningKeys = %+v, %v; want the one key %s", keys, err, cp.KeyID)
	}
	if again, created, err := s.Create(ctx, CreateOptions{OnlyIfMoved: true}); err != nil || created || again.ID != cp.ID {
		t.Fatalf("Create(OnlyIfMoved) with an unmoved head = %+v, %v, %v; want checkpoint %d, not created", again, created, err, cp.ID)
	}
	v, err := s.Verify(ctx, 0)
	if err != nil || v.Problem != "" || v.Checkpoint.ID != cp.ID {
		t.Fatalf("Verify latest = %+v, %v", v, err)
	}

	for i, id := range ids {
		p, err := s.Proof(ctx, id, 0)
		if err != nil {
			t.Fatalf("Proof(%s): %v", id, err)
		}
		if p.LeafIndex != int64(i) || p.Checkpoint.ID != cp.ID {
			t.Fatalf("proof of event %d: leaf %d in checkpoint %d", i, p.LeafIndex, p.Checkpoint.ID)
		}
		if err := CheckProof(p, keys); err != nil {
			t.Fatalf("CheckProof of event %d: %v", i, err)
		}
	}
	if _, err := s.Proof(ctx, uuid.New(), 0); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Errorf("Proof of an unknown event: %v, want NOT_FOUND", err)
	}
	if _, err := s.Proof(ctx, ids[0], cp.ID+100); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Errorf("Proof in an unknown checkpoint: %v, want NOT_FOUND", err)
	}

	// Later events are not covered until the next checkpoint; a new key
	// signs it and both keys stay listed.
	later := appendEvents(t, pool, 2)
	if _, err := s.Proof(ctx, later[0], 0); domain.ErrorCode(err) != domain.CodeConflict ||
		!strings.Contains(err.Error(), "not covered by checkpoint") {
		t.Errorf("Proof of a later event: %v, want CONFLICT not covered", err)
	}
	s2 := newService(t, pool, 10)
	cp2, created, err := s2.Create(ctx, CreateOptions{OnlyIfMoved: true})
	if err != nil || !created || cp2.TreeSize != int64(len(ids)+2) || cp2.KeyID == cp.KeyID {
		t.Fatalf("second checkpoint %+v, %v, %v", cp2, created, err)
	}
	keys, _ = s.SigningKeys(ctx)
	if len(keys) != 2 {
		t.Fatalf("keys after a second signing key: %+v", keys)
	}
	p, err := s.Proof(ctx, later[1], 0)
	if err != nil || CheckProof(p, keys) != nil || p.Checkpoint.ID != cp2.ID {
		t.Fatalf("proof of a later event in the new checkpoint: %+v, %v", p, err)
	}
	// An old checkpoint still proves its events and verifies.
	p, err = s.Proof(ctx, ids[3], cp.ID)
	if err != nil || CheckProof(p, keys) != nil {
		t.Fatalf("proof in the first checkpoint: %v", err)
	}
	if v, err := s.Verify(ctx, cp.ID); err != nil || v.Problem != "" {
		t.Fatalf("Verify first = %+v, %v", v, err)
	}

	// Rewrite one covered event's hash behind the trigger's back.
	tamper(t, pool, ids[7])
	for _, id := range []int64{cp.ID, cp2.ID} {
		v, err := s.Verify(ctx, id)
		if err != nil || !strings.Contains(v.Problem, "rewritten") {
			t.Errorf("Verify %d after tampering = %+v, %v; want a rewritten problem", id, v, err)
		}
	}
	if _, err := s.Proof(ctx, ids[2], cp.ID); err == nil || domain.ErrorCode(err) != domain.CodeInternal {
		t.Errorf("Proof over a tampered log: %v, want an internal error", err)
	}
}

// tamper sets an event's hash to random bytes with the append-only trigger
// disabled for the one transaction.
func tamper(t *testing.T, pool *pgxpool.Pool, id uuid.UUID) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	h := make([]byte, 32)
	_, _ = rand.Read(h)
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, q := range []string{
			"ALTER TABLE events DISABLE TRIGGER events_no_update_delete",
			"UPDATE events SET hash = $1 WHERE event_id = $2",
			"ALTER TABLE events ENABLE TRIGGER events_no_update_delete",
		} {
			var args []any
			if strings.HasPrefix(q, "UPDATE") {
				args = []any{h, id}
			}
			if _, err := tx.Exec(ctx, q, args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("tamper: %v", err)
	}
}

func TestForgedCheckpointSignatureIsCaught(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	ctx := t.Context()
	s := newService(t, pool, 11)
	appendEvents(t, pool, 3)
	cp, _, err := s.Create(ctx, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Someone with INSERT rights stores a checkpoint over a rewritten log
	// under the registered key id without the private key.
	other, _ := testKey(t, 12)
	forged := cp
	forged.Root = strings.Repeat("00", 32)
	if err := sign(&forged, other); err != nil {
		t.Fatal(err)
	}
	c, _ := eventstore.ParseCursor(cp.Cursor)
	root, _ := hex.DecodeString(forged.Root)
	sig := mustB64(t, forged.Signature)
	if _, err := pool.Exec(ctx, `INSERT INTO ledger_checkpoints (cursor_tx, cursor_position, tree_size, root, key_id, signature, signed_at)
		VALUES ($1::xid8, $2, $3, $4, $5, $6, $7)`, c.TxID, c.Position+1, cp.TreeSize, root, cp.KeyID, sig, cp.SignedAt); err != nil {
		t.Fatal(err)
	}
	v, err := s.Verify(ctx, 0)
	if err != nil || !strings.Contains(v.Problem, "signature does not verify") {
		t.Errorf("Verify of a forged checkpoint = %+v, %v", v, err)
	}
	// The tables are append-only.
	if _, err := pool.Exec(ctx, "DELETE FROM ledger_checkpoints"); err == nil {
		t.Error("ledger_checkpoints accepted a DELETE")
	}
	if _, err := pool.Exec(ctx, "UPDATE ledger_signing_keys SET created_at = now()"); err == nil {
		t.Error("ledger_signing_keys accepted an UPDATE")
	}
}

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
