package projections

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/eventstore"
)

// Projection builds one read model from the event feed. It is a pure
// function of events: every id and time it writes comes from the event
// (OccurredAt, payload fields), never from now(), random values or
// sequences, so a rebuild from the log produces the same rows.
//
// Implementations must be safe for concurrent use: the runner and a rebuild
// may call Apply at the same time, each with its own Writer.
type Projection interface {
	// Name is the read model's name as operators use it (`mana projections
	// status|rebuild|skip NAME`); it also names the checkpoint row, the
	// lease ("projection:NAME") and the JetStream consumer ("proj_NAME").
	Name() string
	// Tables lists the tables the projection owns and writes. It writes
	// no others and reads no other projection's tables.
	Tables() []Table
	// EventTypes lists the event types Apply handles; the runner neither
	// decodes nor passes it any other event, but still moves the checkpoint
	// past them. Empty means every event.
	EventTypes() []string
	// Apply applies one event through w, in the runner's transaction. An
	// error (or a panic) rolls the batch back and makes the event a poison
	// event: the projection halts on it and retries with backoff. Errors
	// are stored and logged, so they must not carry personal data.
	Apply(ctx context.Context, w *Writer, ev eventstore.Decoded) error
}

// BatchApplier is implemented by projections that apply a batch of events
// in fewer statements than one event at a time (loading the rows a batch
// touches at once, writing each once). The runner and rebuild call
// ApplyBatch for batches of more than one event, under a savepoint; when it
// fails they roll back to the savepoint and apply the batch event by event
// with Apply, so a poison event is found and halts the projection as usual.
// ApplyBatch must leave the tables exactly as Apply over evs in order would.
type BatchApplier interface {
	ApplyBatch(ctx context.Context, w *Writer, evs []eventstore.Decoded) error
}

// Table is a read-model table a projection owns.
type Table struct {
	// Name is the logical name, which is also the live table's name.
	Name string
	// Access returns the SQL that attaches to the physical table named
	// table (an already quoted identifier) what the migrations attached
	// to the live one: grants, ENABLE/FORCE ROW LEVEL SECURITY and
	// policies. Rebuild runs it, as the table owner, on the shadow table;
	// CREATE TABLE … (LIKE … INCLUDING ALL) copies columns, defaults,
	// constraints, indexes and comments but none of these.
	Access func(table string) string
}

// Writer is what Apply writes through: the batch's transaction, running as
// mana_projector with system scope, and the mapping from a table's logical
// name to the physical table this run writes (the live table, or the
// shadow table during a rebuild). Apply must not commit or roll back the
// transaction.
type Writer struct {
	pgx.Tx
	tables map[string]string
}

// Table returns the quoted physical name of the projection's table logical,
// ready to be formatted into SQL. It panics when the projection does not
// own logical (declared it in Tables); the runner turns that panic into a
// poison event.
func (w *Writer) Table(logical string) string {
	t, ok := w.tables[logical]
	if !ok {
		panic(fmt.Sprintf("projections: table %q is not owned by this projection", logical))
	}
	return t
}

// Handler applies one event type.
type Handler func(ctx context.Context, w *Writer, ev eventstore.Decoded) error

// Handlers maps event types to their handlers: the usual body of a
// projection. Apply dispatches through it and ignores other types.
type Handlers map[string]Handler

// EventTypes returns the handled types, sorted.
func (h Handlers) EventTypes() []string { return slices.Sorted(maps.Keys(h)) }

// Apply runs the handler of ev's type, if any.
func (h Handlers) Apply(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	f, ok := h[ev.EventType]
	if !ok {
		return nil
	}
	return f(ctx, w, ev)
}

// All returns the projections of this build, the ones `mana serve` runs.
func All() []Projection {
	return []Projection{Packages(), Users(), Sessions(), SecurityEvents(), Balances(), Transactions(), UsageStats(), Purchases()}
}

// Find returns the projection of projs named name.
func Find(projs []Projection, name string) (Projection, bool) {
	for _, p := range projs {
		if p.Name() == name {
			return p, true
		}
	}
	return nil, false
}

// LeaseName is the name of the lease projection name runs under.
func LeaseName(name string) string { return "projection:" + name }

// ConsumerName is the durable JetStream consumer of projection name.
func ConsumerName(name string) string { return "proj_" + name }

// tableMap maps each of p's tables to its physical name: the live table,
// or the live name plus suffix.
func tableMap(p Projection, suffix string) map[string]string {
	m := map[string]string{}
	for _, t := range p.Tables() {
		m[t.Name] = pgx.Identifier{t.Name + suffix}.Sanitize()
	}
	return m
}
