// Package eventstore is the write side of Mana Core on PostgreSQL: it
// appends events to streams with optimistic concurrency and a per-stream
// hash chain, runs commands in one transaction with idempotency, unique
// claims and read-your-writes cursors, encrypts personal data with
// per-subject keys (crypto-shredding), and reads the feed in commit-safe
// order.
//
// The events table is append-only, enforced by the database; this package
// only ever INSERTs into it.
package eventstore
