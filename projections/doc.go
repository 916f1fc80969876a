// Package projections builds the read models the API serves (balances,
// sessions, transactions, usage_stats, purchases, security_events, users)
// from the event feed. Each projection is a pure function of events: it
// applies them strictly in feed order, (tx_id, position), and advances its
// checkpoint in the same transaction as its writes, so it can be rebuilt
// from the log at any time and never applies an event twice.
//
// A projection reads only events, never another projection's tables.
//
// The package has one file per read model (packages.go, users.go: the
// projection's name, its tables, a map from event type to handler, and its
// queries) and the machinery that runs them:
//
//   - runner.go: Runner applies each projection under its own lease, woken
//     by its durable JetStream consumer and catching up from the
//     PostgreSQL feed, which stays the source of truth.
//   - apply.go, checkpoint.go: one transaction per batch (lease check,
//     events, checkpoint compare-and-set); poison events and Skip.
//   - rebuild.go: Rebuild, online, into shadow tables swapped in at once.
//   - status.go, wait.go: Statuses for operators; WaitFor for
//     read-your-writes.
package projections
