package domain

import (
	"sort"

	"github.com/google/uuid"
)

// Event is a fact recorded in a stream. Its type string is
// "<aggregate>.<past_tense>" and never changes; SchemaVersion grows when the
// payload's shape changes, and older versions are upcast on read.
type Event interface {
	EventType() string
	SchemaVersion() int
}

// PersonalData is implemented by events whose payload carries personal
// data. The event store encrypts the named top-level JSON fields with the
// data subject's key, so erasing that key shreds them while the ledger still
// verifies.
type PersonalData interface {
	Event
	DataSubject() uuid.UUID
	PersonalFields() []string
}

// Metadata says who and what caused an event. It is stored beside the
// payload, hashed with it, and never holds secrets or personal data.
type Metadata struct {
	// Actor is "user:<id>", "app:<id>", "admin:<id>" or "system".
	Actor         string `json:"actor,omitempty"`
	RequestID     string `json:"requestId,omitempty"`
	CausationID   string `json:"causationId,omitempty"`
	CorrelationID string `json:"correlationId,omitempty"`
	AppID         string `json:"appId,omitempty"`
}

// SystemActor is the actor of events the service records on its own.
const SystemActor = "system"

// catalog maps every event type to a constructor of its current version.
var catalog = map[string]func() Event{}

// register adds an event type to the catalog; it panics on a duplicate so a
// mistake fails at start-up.
func register(newEvent func() Event) {
	t := newEvent().EventType()
	if _, dup := catalog[t]; dup {
		panic("domain: event type registered twice: " + t)
	}
	catalog[t] = newEvent
}

// NewEvent returns a zero value of the current version of eventType, or
// false when the type is unknown.
func NewEvent(eventType string) (Event, bool) {
	f, ok := catalog[eventType]
	if !ok {
		return nil, false
	}
	return f(), true
}

// EventTypes lists every known event type in lexical order.
func EventTypes() []string {
	types := make([]string, 0, len(catalog))
	for t := range catalog {
		types = append(types, t)
	}
	sort.Strings(types)
	return types
}
