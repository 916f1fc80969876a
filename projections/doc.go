// Package projections builds the read models the API serves (balances,
// sessions, transactions, usage_stats, purchases, security_events, users)
// from the event feed. Each projection is a pure function of events: it
// applies them strictly in feed order, (tx_id, position), and advances its
// checkpoint in the same transaction as its writes, so it can be rebuilt
// from the log at any time and never applies an event twice.
//
// A projection reads only events, never another projection's tables.
package projections
