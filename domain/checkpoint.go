package domain

import (
	"context"
	"time"

	"github.com/google/uuid"
)

// LedgerKey is an Ed25519 public key that signs, or once signed, ledger
// checkpoints. Every key ever used stays published, so old checkpoints keep
// verifying after LEDGER_SIGNING_KEY changes.
type LedgerKey struct {
	// KeyID is the first 16 characters of base64url(SHA-256(public key)).
	KeyID string `json:"keyId"`
	// Algorithm is always "Ed25519".
	Algorithm string `json:"alg"`
	// PublicKey is the 32-byte key, base64url without padding.
	PublicKey string    `json:"publicKey"`
	CreatedAt time.Time `json:"createdAt"`
}

// Checkpoint is a signed Merkle tree head over the event hashes in feed
// order, from the first event up to and including Cursor (docs/ledger.md,
// "Signed checkpoints").
type Checkpoint struct {
	ID int64 `json:"id"`
	// Cursor is the last event covered, "<tx_id>-<position>".
	Cursor string `json:"cursor"`
	// TreeSize is the number of events covered.
	TreeSize int64 `json:"treeSize"`
	// Root is the Merkle tree head, hex.
	Root  string `json:"root"`
	KeyID string `json:"keyId"`
	// Signature is the Ed25519 signature of the checkpoint's signed
	// message, base64url without padding.
	Signature string    `json:"signature"`
	SignedAt  time.Time `json:"signedAt"`
}

// InclusionProof proves that an event's hash is the leaf at LeafIndex of
// the Merkle tree a checkpoint signed.
type InclusionProof struct {
	EventID uuid.UUID `json:"eventId"`
	// Cursor is the event's feed cursor.
	Cursor string `json:"cursor"`
	// EventHash is the event's hash column, hex.
	EventHash string `json:"eventHash"`
	LeafIndex int64  `json:"leafIndex"`
	TreeSize  int64  `json:"treeSize"`
	// AuditPath lists the sibling node hashes from the leaf up, hex.
	AuditPath  []string   `json:"auditPath"`
	Checkpoint Checkpoint `json:"checkpoint"`
}

// Checkpoints is the read side of signed checkpoints the API serves.
type Checkpoints interface {
	// SigningKeys lists every checkpoint key ever used, oldest first.
	SigningKeys(ctx context.Context) ([]LedgerKey, error)
	// LatestCheckpoint returns the newest checkpoint; NOT_FOUND when none
	// was signed yet.
	LatestCheckpoint(ctx context.Context) (Checkpoint, error)
	// Proof returns the inclusion proof of an event in checkpoint
	// checkpointID, or in the latest checkpoint when checkpointID is 0.
	// NOT_FOUND for an unknown event or checkpoint; CONFLICT when the
	// checkpoint does not cover the event (it came later).
	Proof(ctx context.Context, eventID uuid.UUID, checkpointID int64) (InclusionProof, error)
}
