// Package ratelimit keeps request budgets (SPEC §7): how many requests a key
// (a client address, an account, a user, an app) may make under a policy.
//
// Budgets follow the generic cell rate algorithm (GCRA), a token bucket kept
// as a single timestamp per key: a budget holds at most Burst requests and
// refills at Limit per Period. A key that has been quiet long enough to be
// full again needs no state at all, which is what lets the in-memory limiter
// forget idle keys and the Redis limiter let them expire.
//
// Two implementations share the arithmetic: Memory, for a single process,
// and Redis, whose budgets are shared by every process using the same Redis
// (one atomic script per decision). Policies come from Defaults, overridden
// by the RATE_LIMITS variable through Parse.
package ratelimit

import (
	"context"
	"time"
)

// Limiter takes requests from budgets. Implementations are safe for
// concurrent use.
type Limiter interface {
	// Allow takes one request from the budget that policy p keeps for key,
	// and reports whether the request may proceed together with the state
	// of the budget afterwards. A denied request takes nothing. p must be
	// valid, as Defaults and Parse return them (Limit, Period and Burst
	// positive); budgets of different policy names never mix. The error
	// is non-nil only when the budget could not be consulted (the store is
	// unreachable, ctx ended); the Decision is then meaningless.
	Allow(ctx context.Context, p Policy, key string) (Decision, error)
}

// Decision is the outcome of one Allow.
type Decision struct {
	// Allowed reports whether the request may proceed.
	Allowed bool
	// Limit is the most requests the budget holds: the policy's Burst.
	Limit int64
	// Remaining is how many more requests the budget would allow right
	// now; 0 when the request was denied.
	Remaining int64
	// ResetAfter is how long until the budget is full again.
	ResetAfter time.Duration
	// RetryAfter is, for a denied request, how long until one request
	// would be allowed; zero for an allowed one.
	RetryAfter time.Duration
}

// decide is GCRA on nanosecond timestamps. tat, the theoretical arrival
// time, is when the budget would be full again; a key without state has
// tat <= now. It returns the decision and the tat to store (unchanged when
// the request is denied).
//
// Each request pushes tat one interval further; a request is allowed while
// that keeps tat within Burst intervals of now. The Redis script does the
// same arithmetic in microseconds.
func decide(p Policy, now, tat int64) (Decision, int64) {
	interval := int64(p.Interval())
	if tat < now {
		tat = now
	}
	next := tat + interval
	allowAt := next - interval*p.Burst
	if now < allowAt {
		return Decision{
			Limit:      p.Burst,
			ResetAfter: time.Duration(tat - now),
			RetryAfter: time.Duration(allowAt - now),
		}, tat
	}
	return Decision{
		Allowed:    true,
		Limit:      p.Burst,
		Remaining:  (now - allowAt) / interval,
		ResetAfter: time.Duration(next - now),
	}, next
}
