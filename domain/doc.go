// Package domain is the core of Mana Core: value types, aggregates with
// decide and apply methods, the events they record, the error type with its
// machine-readable codes, and the port interfaces the API consumes.
//
// It is the leaf of the dependency graph: it imports the standard library
// and github.com/google/uuid only. It knows no database, no HTTP and no NATS,
// and it never reads the wall clock: decisions receive the time they run at.
package domain
