package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultRedisPrefix starts every key a Redis limiter writes when
// RedisOptions.Prefix is empty.
const DefaultRedisPrefix = "mana:rl:"

// DefaultRedisTimeout bounds one decision when RedisOptions.Timeout is zero.
// A rate limit check sits on the path of every limited request, so a slow
// Redis must not hold requests for long.
const DefaultRedisTimeout = 500 * time.Millisecond

// gcraScript is the whole decision, atomic in Redis: read the key's
// theoretical arrival time (TAT), decide as decide does, and store the new
// TAT with an expiry at the moment the budget is full again, so idle keys
// disappear by themselves. Times are microseconds from Redis's own clock,
// which every node shares, so clock skew between nodes does not matter.
//
// KEYS[1] the budget; ARGV[1] the interval in µs; ARGV[2] the burst.
// Returns {allowed (0/1), remaining, retry after µs, reset after µs}.
//
// Numbers are Lua doubles: microsecond timestamps (about 2^51) are exact,
// and the TAT is written with %.0f because tostring would round it to 14
// digits.
const gcraScript = `
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local next_tat = tat + interval
local allow_at = next_tat - interval * burst
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0, next_tat - now}
`

var gcra = redis.NewScript(gcraScript)

// RedisOptions configure NewRedis. The zero value is usable.
type RedisOptions struct {
	// Prefix starts every key; empty means DefaultRedisPrefix. Nodes that
	// share budgets must use the same prefix.
	Prefix string
	// Timeout bounds one decision; zero means DefaultRedisTimeout. The
	// client must have ContextTimeoutEnabled for it to bound network waits.
	Timeout time.Duration
}

// Redis is a Limiter whose budgets live in Redis, shared by every process
// that uses the same Redis and prefix. Each decision is one round trip
// running one atomic script (EVALSHA, falling back to EVAL, which
// caches the script again, when Redis has lost it). A budget is a single key that expires
// once it has refilled. It is safe for concurrent use; closing the client is
// the caller's business.
type Redis struct {
	client  redis.Scripter
	prefix  string
	timeout time.Duration
}

var _ Limiter = (*Redis)(nil)

// NewRedis returns a Redis limiter over client (a *redis.Client, a
// *redis.ClusterClient or a *redis.Ring: each budget is one key).
func NewRedis(client redis.Scripter, opts RedisOptions) *Redis {
	if opts.Prefix == "" {
		opts.Prefix = DefaultRedisPrefix
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultRedisTimeout
	}
	return &Redis{client: client, prefix: opts.Prefix, timeout: opts.Timeout}
}

// Allow implements Limiter. It fails when Redis does not answer within the
// timeout or answers an error.
func (r *Redis) Allow(ctx context.Context, p Policy, key string) (Decision, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	interval := max(p.Interval().Microseconds(), 1)
	res, err := gcra.Run(ctx, r.client, []string{r.prefix + p.Name + ":" + key},
		strconv.FormatInt(interval, 10), strconv.FormatInt(p.Burst, 10)).Int64Slice()
	if err != nil {
		return Decision{}, fmt.Errorf("rate limit %s: %w", p.Name, err)
	}
	if len(res) != 4 {
		return Decision{}, fmt.Errorf("rate limit %s: script answered %d values, want 4", p.Name, len(res))
	}
	return Decision{
		Allowed:    res[0] == 1,
		Limit:      p.Burst,
		Remaining:  res[1],
		RetryAfter: time.Duration(res[2]) * time.Microsecond,
		ResetAfter: time.Duration(res[3]) * time.Microsecond,
	}, nil
}
