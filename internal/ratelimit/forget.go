package ratelimit

import (
	"context"
	"fmt"
	"hash/maphash"

	"github.com/redis/go-redis/v9"
)

// Forgetter is implemented by limiters that can drop a budget before it
// has refilled: an erased account's budgets (SPEC §3) are deleted rather
// than left to expire. Memory and Redis implement it.
type Forgetter interface {
	// Forget deletes the budget that policy p keeps for key; the next
	// request of key starts with a full budget. Forgetting a budget that
	// does not exist is not an error.
	Forget(ctx context.Context, p Policy, key string) error
}

var (
	_ Forgetter = (*Memory)(nil)
	_ Forgetter = (*Redis)(nil)
)

// Forget implements Forgetter. It never fails.
func (m *Memory) Forget(_ context.Context, p Policy, key string) error {
	k := p.Name + "\x00" + key
	sh := &m.shards[maphash.String(m.seed, k)%memoryShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	delete(sh.tat, k)
	return nil
}

// forgetScript deletes one budget. A script rather than DEL, because the
// limiter holds its client as a redis.Scripter.
var forgetScript = redis.NewScript(`return redis.call('DEL', KEYS[1])`)

// Forget implements Forgetter: one DEL of the budget's key, bounded by the
// limiter's timeout.
func (r *Redis) Forget(ctx context.Context, p Policy, key string) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := forgetScript.Run(ctx, r.client, []string{r.prefix + p.Name + ":" + key}).Err(); err != nil {
		return fmt.Errorf("forget rate limit %s: %w", p.Name, err)
	}
	return nil
}
