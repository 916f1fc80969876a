package ledger

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
)

func testKey(t *testing.T, seed byte) (ed25519.PrivateKey, domain.LedgerKey) {
	t.Helper()
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = seed
	}
	priv := ed25519.NewKeyFromSeed(s)
	pub := priv.Public().(ed25519.PublicKey)
	return priv, domain.LedgerKey{KeyID: KeyID(pub), Algorithm: Algorithm, PublicKey: base64.RawURLEncoding.EncodeToString(pub)}
}

func TestSignedMessageIsCanonical(t *testing.T) {
	t.Parallel()
	cp := domain.Checkpoint{
		ID: 7, Cursor: "812-4410", TreeSize: 4410, Root: strings.Repeat("ab", 32), KeyID: "ignored",
		SignedAt: time.Date(2026, 3, 1, 13, 0, 0, 1500, time.FixedZone("CET", 3600)),
	}
	msg, err := SignedMessage(cp)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"cursor":"812-4410","root":"` + strings.Repeat("ab", 32) + `","signed_at":"2026-03-01T12:00:00.000001Z","tree_size":4410}`
	if string(msg) != want {
		t.Errorf("signed message\n got %s\nwant %s", msg, want)
	}
}

func TestKeyIDShape(t *testing.T) {
	t.Parallel()
	_, k := testKey(t, 1)
	pub, _ := base64.RawURLEncoding.DecodeString(k.PublicKey)
	sum := sha256.Sum256(pub)
	if want := base64.RawURLEncoding.EncodeToString(sum[:])[:16]; k.KeyID != want || len(k.KeyID) != 16 {
		t.Errorf("KeyID = %q, want %q", k.KeyID, want)
	}
}

func TestSignatureCoversEveryField(t *testing.T) {
	t.Parallel()
	priv, k := testKey(t, 2)
	pub := priv.Public().(ed25519.PublicKey)
	cp := domain.Checkpoint{ID: 1, Cursor: "10-3", TreeSize: 3, Root: strings.Repeat("01", 32), SignedAt: time.Now()}
	if err := sign(&cp, priv); err != nil {
		t.Fatal(err)
	}
	if cp.KeyID != k.KeyID {
		t.Fatalf("signed with key id %s, want %s", cp.KeyID, k.KeyID)
	}
	if err := VerifySignature(cp, pub); err != nil {
		t.Fatalf("fresh signature: %v", err)
	}
	for name, change := range map[string]func(c *domain.Checkpoint){
		"cursor":    func(c *domain.Checkpoint) { c.Cursor = "10-4" },
		"tree size": func(c *domain.Checkpoint) { c.TreeSize++ },
		"root":      func(c *domain.Checkpoint) { c.Root = strings.Repeat("02", 32) },
		"signed at": func(c *domain.Checkpoint) { c.SignedAt = c.SignedAt.Add(time.Microsecond) },
	} {
		c := cp
		change(&c)
		if err := VerifySignature(c, pub); !errors.Is(err, ErrBadSignature) {
			t.Errorf("changed %s: err = %v, want ErrBadSignature", name, err)
		}
	}
	other, _ := testKey(t, 3)
	if err := VerifySignature(cp, other.Public().(ed25519.PublicKey)); err == nil {
		t.Error("another key verified the signature")
	}
}

// proofOver builds a signed proof for leaf m of d the way the service does.
func proofOver(t *testing.T, priv ed25519.PrivateKey, d [][]byte, m int) domain.InclusionProof {
	t.Helper()
	pb, err := NewPathBuilder(uint64(m), uint64(len(d)))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range d {
		if err := pb.AddEventHash(e); err != nil {
			t.Fatal(err)
		}
	}
	root, path, err := pb.Result()
	if err != nil {
		t.Fatal(err)
	}
	cp := domain.Checkpoint{ID: 4, Cursor: "900-50", TreeSize: int64(len(d)), Root: hex.EncodeToString(root[:]), SignedAt: time.Now()}
	if err := sign(&cp, priv); err != nil {
		t.Fatal(err)
	}
	p := domain.InclusionProof{EventID: uuid.New(), Cursor: "800-7", EventHash: hex.EncodeToString(d[m]),
		LeafIndex: int64(m), TreeSize: int64(len(d)), Checkpoint: cp}
	for _, h := range path {
		p.AuditPath = append(p.AuditPath, hex.EncodeToString(h[:]))
	}
	return p
}

func TestCheckProof(t *testing.T) {
	t.Parallel()
	priv, k := testKey(t, 4)
	_, other := testKey(t, 5)
	d := events(11)
	p := proofOver(t, priv, d, 6)
	keys := []domain.LedgerKey{other, k}
	if err := CheckProof(p, keys); err != nil {
		t.Fatalf("a valid proof: %v", err)
	}
	for name, tc := range map[string]struct {
		change func(p *domain.InclusionProof, keys []domain.LedgerKey) []domain.LedgerKey
		want   string
	}{
		"unknown key": {func(p *domain.InclusionProof, keys []domain.LedgerKey) []domain.LedgerKey { return keys[:1] }, "does not list"},
		"key with a wrong id": {func(p *domain.InclusionProof, keys []domain.LedgerKey) []domain.LedgerKey {
			return []domain.LedgerKey{{KeyID: k.KeyID, Algorithm: Algorithm, PublicKey: other.PublicKey}}
		}, "does not match"},
		"event hash": {func(p *domain.InclusionProof, keys []domain.LedgerKey) []domain.LedgerKey {
			p.EventHash = hex.EncodeToString(d[7])
			return keys
		}, "does not lead"},
		"leaf index": {func(p *domain.InclusionProof, keys []domain.LedgerKey) []domain.LedgerKey {
			p.LeafIndex = 7
			return keys
		}, "does not lead"},
		"audit path": {func(p *domain.InclusionProof, keys []domain.LedgerKey) []domain.LedgerKey {
			p.AuditPath = append([]string(nil), p.AuditPath...)
			p.AuditPath[1] = strings.Repeat("00", 32)
			return keys
		}, "does not lead"},
		"checkpoint root": {func(p *domain.InclusionProof, keys []domain.LedgerKey) []domain.LedgerKey {
			p.Checkpoint.Root = strings.Repeat("00", 32)
			return keys
		}, "signature does not verify"},
		"tree size": {func(p *domain.InclusionProof, keys []domain.LedgerKey) []domain.LedgerKey {
			p.TreeSize = 12
			return keys
		}, "tree size"},
		"event after the checkpoint": {func(p *domain.InclusionProof, keys []domain.LedgerKey) []domain.LedgerKey {
			p.Cursor = "901-1"
			return keys
		}, "after the checkpoint"},
	} {
		q := p
		ks := tc.change(&q, append([]domain.LedgerKey(nil), keys...))
		err := CheckProof(q, ks)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one containing %q", name, err, tc.want)
		}
	}
}
