package eventstore

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"time"

	"github.com/gowebpki/jcs"
)

// GenesisHash is the prev_hash of every stream's first event.
var GenesisHash = make([]byte, sha256.Size)

// occurredAtLayout is the one textual form of occurred_at inside the hash:
// UTC with exactly microseconds, the precision PostgreSQL stores.
const occurredAtLayout = "2006-01-02T15:04:05.000000Z"

// hashedFields is what the chain covers. tx_id, position and recorded_at are
// assigned by the database and deliberately left out, so an import into
// another database keeps every hash.
type hashedFields struct {
	EventID       string          `json:"event_id"`
	StreamType    string          `json:"stream_type"`
	StreamID      string          `json:"stream_id"`
	StreamVersion int64           `json:"stream_version"`
	EventType     string          `json:"event_type"`
	SchemaVersion int             `json:"schema_version"`
	OccurredAt    string          `json:"occurred_at"`
	Metadata      json.RawMessage `json:"metadata"`
	Payload       json.RawMessage `json:"payload"`
}

// ComputeHash returns SHA-256(prev_hash ‖ RFC 8785 canonical JSON of the
// record's hashed fields). The JSON is canonicalized, so the payload may be
// given as written or as read back from jsonb.
func ComputeHash(r *Record) ([]byte, error) {
	raw, err := json.Marshal(hashedFields{
		EventID:       r.EventID.String(),
		StreamType:    r.StreamType,
		StreamID:      r.StreamID,
		StreamVersion: r.StreamVersion,
		EventType:     r.EventType,
		SchemaVersion: r.SchemaVersion,
		OccurredAt:    r.OccurredAt.UTC().Truncate(time.Microsecond).Format(occurredAtLayout),
		Metadata:      r.Metadata,
		Payload:       r.Payload,
	})
	if err != nil {
		return nil, fmt.Errorf("hash %s: %w", r.EventID, err)
	}
	canonical, err := jcs.Transform(raw)
	if err != nil {
		return nil, fmt.Errorf("canonicalize %s: %w", r.EventID, err)
	}
	h := sha256.New()
	h.Write(r.PrevHash)
	h.Write(canonical)
	return h.Sum(nil), nil
}

// CanonicalHash returns SHA-256 of the RFC 8785 canonical JSON of v: the
// request hash of idempotent commands.
func CanonicalHash(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	canonical, err := jcs.Transform(raw)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(canonical)
	return sum[:], nil
}
