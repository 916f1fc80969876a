package eventstore

import (
	"encoding/json"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/eventstore/internal/db"
)

// Record is an event as stored: its envelope and its payload as JSON, with
// personal-data fields still encrypted.
type Record struct {
	Cursor
	EventID       uuid.UUID
	StreamType    string
	StreamID      string
	StreamVersion int64
	EventType     string
	SchemaVersion int
	OccurredAt    time.Time
	RecordedAt    time.Time
	Metadata      json.RawMessage
	Payload       json.RawMessage
	PrevHash      []byte
	Hash          []byte
}

func recordFromRow(e db.Event) Record {
	return Record{
		Cursor:        Cursor{TxID: e.TxID, Position: e.Position},
		EventID:       e.EventID,
		StreamType:    e.StreamType,
		StreamID:      e.StreamID,
		StreamVersion: e.StreamVersion,
		EventType:     e.EventType,
		SchemaVersion: int(e.SchemaVersion),
		OccurredAt:    e.OccurredAt.UTC(),
		RecordedAt:    e.RecordedAt.UTC(),
		Metadata:      e.Metadata,
		Payload:       e.Payload,
		PrevHash:      e.PrevHash,
		Hash:          e.Hash,
	}
}
