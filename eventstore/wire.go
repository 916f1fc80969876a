package eventstore

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Message headers the relay sets on every JetStream message.
const (
	// HeaderMsgID is JetStream's deduplication header; the event id.
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderCursor is the event's feed cursor, <tx_id>-<position>.
	HeaderCursor = "Mana-Cursor"
	// HeaderPrevCursor is the cursor of the previous event in the feed
	// ("0-0" before the first), so a consumer can tell a gap.
	HeaderPrevCursor = "Mana-Prev-Cursor"
)

// EventLine is the public JSON form of an event: one line of `mana events
// export`, the body of each JetStream message and of GET /api/v1/events.
// Personal fields stay sealed as stored; hashes are hex.
type EventLine struct {
	Cursor        string          `json:"cursor"`
	EventID       uuid.UUID       `json:"event_id"`
	EventType     string          `json:"event_type"`
	SchemaVersion int             `json:"schema_version"`
	StreamType    string          `json:"stream_type"`
	StreamID      string          `json:"stream_id"`
	StreamVersion int64           `json:"stream_version"`
	OccurredAt    time.Time       `json:"occurred_at"`
	RecordedAt    time.Time       `json:"recorded_at"`
	Metadata      json.RawMessage `json:"metadata"`
	Payload       json.RawMessage `json:"payload"`
	PrevHash      string          `json:"prev_hash"`
	Hash          string          `json:"hash"`
}

// Line returns r's public form.
func (r Record) Line() EventLine {
	return EventLine{
		Cursor:        r.Cursor.String(),
		EventID:       r.EventID,
		EventType:     r.EventType,
		SchemaVersion: r.SchemaVersion,
		StreamType:    r.StreamType,
		StreamID:      r.StreamID,
		StreamVersion: r.StreamVersion,
		OccurredAt:    r.OccurredAt,
		RecordedAt:    r.RecordedAt,
		Metadata:      r.Metadata,
		Payload:       r.Payload,
		PrevHash:      hex.EncodeToString(r.PrevHash),
		Hash:          hex.EncodeToString(r.Hash),
	}
}

// Record returns the stored form of a line, as a consumer received it.
func (l EventLine) Record() (Record, error) {
	c, err := ParseCursor(l.Cursor)
	if err != nil {
		return Record{}, err
	}
	prev, err := hex.DecodeString(l.PrevHash)
	if err != nil {
		return Record{}, fmt.Errorf("prev_hash: %w", err)
	}
	h, err := hex.DecodeString(l.Hash)
	if err != nil {
		return Record{}, fmt.Errorf("hash: %w", err)
	}
	return Record{
		Cursor: c, EventID: l.EventID, EventType: l.EventType, SchemaVersion: l.SchemaVersion,
		StreamType: l.StreamType, StreamID: l.StreamID, StreamVersion: l.StreamVersion,
		OccurredAt: l.OccurredAt, RecordedAt: l.RecordedAt, Metadata: l.Metadata, Payload: l.Payload,
		PrevHash: prev, Hash: h,
	}, nil
}
