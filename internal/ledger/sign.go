package ledger

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/gowebpki/jcs"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
)

// Algorithm names the signature scheme of checkpoint keys.
const Algorithm = "Ed25519"

// signedAtLayout is the one textual form of signed_at in the signed
// message: UTC with exactly microseconds, the precision PostgreSQL stores.
const signedAtLayout = "2006-01-02T15:04:05.000000Z"

// KeyID returns the id of a checkpoint public key: the first 16 characters
// of base64url(SHA-256(key)).
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(sum[:])[:16]
}

// signedMessage is what a checkpoint signature covers.
type signedMessage struct {
	Cursor   string `json:"cursor"`
	TreeSize int64  `json:"tree_size"`
	Root     string `json:"root"`
	SignedAt string `json:"signed_at"`
}

// SignedMessage returns the bytes a checkpoint's signature covers: the RFC
// 8785 canonical JSON of
//
//	{"cursor":"<tx_id>-<position>","root":"<hex>","signed_at":"<UTC, µs>","tree_size":<n>}
//
// e.g. {"cursor":"812-4410","root":"9f86…","signed_at":"2026-03-01T12:00:00.000000Z","tree_size":4410}.
func SignedMessage(cp domain.Checkpoint) ([]byte, error) {
	raw, err := json.Marshal(signedMessage{
		Cursor:   cp.Cursor,
		TreeSize: cp.TreeSize,
		Root:     cp.Root,
		SignedAt: cp.SignedAt.UTC().Truncate(time.Microsecond).Format(signedAtLayout),
	})
	if err != nil {
		return nil, err
	}
	return jcs.Transform(raw)
}

// sign fills cp's KeyID and Signature.
func sign(cp *domain.Checkpoint, key ed25519.PrivateKey) error {
	msg, err := SignedMessage(*cp)
	if err != nil {
		return err
	}
	cp.KeyID = KeyID(key.Public().(ed25519.PublicKey))
	cp.Signature = base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, msg))
	return nil
}

// ErrBadSignature is returned when a checkpoint's signature does not verify.
var ErrBadSignature = errors.New("checkpoint signature does not verify")

// VerifySignature checks cp's signature with pub, and that pub is the key
// cp names.
func VerifySignature(cp domain.Checkpoint, pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("public key %s: want %d bytes", cp.KeyID, ed25519.PublicKeySize)
	}
	if KeyID(pub) != cp.KeyID {
		return fmt.Errorf("public key id %s does not match the checkpoint's key %s", KeyID(pub), cp.KeyID)
	}
	sig, err := base64.RawURLEncoding.DecodeString(cp.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: malformed signature", ErrBadSignature)
	}
	msg, err := SignedMessage(cp)
	if err != nil {
		return err
	}
	if !ed25519.Verify(pub, msg, sig) {
		return ErrBadSignature
	}
	return nil
}

// PublicKeyOf decodes a published key, checking that its id matches.
func PublicKeyOf(k domain.LedgerKey) (ed25519.PublicKey, error) {
	if k.Algorithm != "" && k.Algorithm != Algorithm {
		return nil, fmt.Errorf("key %s: algorithm %q, want %s", k.KeyID, k.Algorithm, Algorithm)
	}
	b, err := base64.RawURLEncoding.DecodeString(k.PublicKey)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("key %s: publicKey is not %d bytes of base64url", k.KeyID, ed25519.PublicKeySize)
	}
	if KeyID(b) != k.KeyID {
		return nil, fmt.Errorf("key %s: keyId does not match the public key (its id is %s)", k.KeyID, KeyID(b))
	}
	return b, nil
}

// parseHash decodes a hex SHA-256 value.
func parseHash(what, s string) (Hash, error) {
	var h Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != HashSize {
		return h, fmt.Errorf("%s %q: want %d bytes of hex", what, s, HashSize)
	}
	copy(h[:], b)
	return h, nil
}

// CheckProof verifies an inclusion proof offline: the checkpoint's
// signature with its key from keys, and that the audit path leads from the
// event hash to the signed root. It returns nil only when both hold.
func CheckProof(p domain.InclusionProof, keys []domain.LedgerKey) error {
	cp := p.Checkpoint
	var pub ed25519.PublicKey
	for _, k := range keys {
		if k.KeyID == cp.KeyID {
			var err error
			if pub, err = PublicKeyOf(k); err != nil {
				return err
			}
			break
		}
	}
	if pub == nil {
		return fmt.Errorf("checkpoint %d is signed by key %s, which the keys file does not list", cp.ID, cp.KeyID)
	}
	if err := VerifySignature(cp, pub); err != nil {
		return fmt.Errorf("checkpoint %d: %w", cp.ID, err)
	}
	if p.TreeSize != cp.TreeSize {
		return fmt.Errorf("%w: proof tree size %d differs from the checkpoint's %d", ErrProofInvalid, p.TreeSize, cp.TreeSize)
	}
	if p.LeafIndex < 0 || cp.TreeSize <= 0 {
		return fmt.Errorf("%w: leaf index %d, tree size %d", ErrProofInvalid, p.LeafIndex, cp.TreeSize)
	}
	if ev, err := eventstore.ParseCursor(p.Cursor); err == nil {
		if cc, err := eventstore.ParseCursor(cp.Cursor); err == nil && cc.Less(ev) {
			return fmt.Errorf("%w: event cursor %s is after the checkpoint's %s", ErrProofInvalid, p.Cursor, cp.Cursor)
		}
	}
	root, err := parseHash("checkpoint root", cp.Root)
	if err != nil {
		return err
	}
	eventHash, err := parseHash("event hash", p.EventHash)
	if err != nil {
		return err
	}
	path := make([]Hash, len(p.AuditPath))
	for i, s := range p.AuditPath {
		if path[i], err = parseHash(fmt.Sprintf("audit path[%d]", i), s); err != nil {
			return err
		}
	}
	return VerifyInclusion(uint64(p.LeafIndex), uint64(cp.TreeSize), eventHash[:], path, root)
}
