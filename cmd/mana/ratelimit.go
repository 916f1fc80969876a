package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/ratelimit"
)

// redisPingTimeout bounds the start-up check that REDIS_URL answers.
const redisPingTimeout = 5 * time.Second

// setupEdge wires what the HTTP edge needs to know about clients: whose
// X-Forwarded-For to believe (TRUSTED_PROXIES) and the rate limits of
// SPEC §7 (RATE_LIMITS), kept in Redis when REDIS_URL is set and in this
// process otherwise. The returned function releases the Redis client; call
// it after the HTTP server has shut down.
//
// An unreachable Redis stops start-up, so a misconfigured node is noticed
// at once; once running, a Redis outage lets requests through (see
// api.Server.SetRateLimits).
func setupEdge(ctx context.Context, e *env, srv *api.Server, store *eventstore.Store) (func(), error) {
	srv.Echo().IPExtractor = api.TrustedProxies(e.cfg.TrustedProxies)
	if len(e.cfg.TrustedProxies) > 0 {
		e.log.Info("X-Forwarded-For is believed from trusted proxies", "proxies", fmt.Sprint(e.cfg.TrustedProxies))
	}

	if e.cfg.RateLimits == ratelimit.Off {
		e.log.Warn("RATE LIMITS ARE OFF (RATE_LIMITS=off): logins, registrations, refreshes and credit writes " +
			"are not limited at all. This is for benchmarks only; never run it where clients can reach it.")
		return func() {}, nil
	}
	policies, err := ratelimit.Parse(e.cfg.RateLimits)
	if err != nil {
		// Config.Validate has parsed it already; this is a safety net.
		return nil, &configError{"RATE_LIMITS", err.Error()}
	}

	var limiter ratelimit.Limiter
	release := func() {}
	if e.cfg.RedisURL != "" {
		client, err := openRedis(ctx, e.log, e.cfg.RedisURL)
		if err != nil {
			return nil, err
		}
		limiter = ratelimit.NewRedis(client, ratelimit.RedisOptions{})
		release = func() { _ = client.Close() }
		e.log.Info("rate limits kept in Redis, shared by every node", "addr", client.Options().Addr, "policies", len(policies))
	} else {
		limiter = ratelimit.NewMemory(ratelimit.MemoryOptions{})
		e.log.Info("rate limits kept in memory, per process; set REDIS_URL to share them between nodes", "policies", len(policies))
	}
	for _, name := range slices.Sorted(maps.Keys(policies)) {
		e.log.Debug("rate limit", "policy", policies[name].String())
	}

	keys := store.Keyring()
	srv.SetRateLimits(api.RateLimits{
		Limiter:  limiter,
		Policies: policies,
		// The blind email index, never the address: keys reach Redis. Half
		// of the HMAC is plenty to tell accounts apart.
		AccountKey: func(email string) string { return hex.EncodeToString(keys.EmailIndex(email)[:16]) },
	})
	return release, nil
}

// redisLog receives go-redis's own messages (connection pool failures and
// the like), which it would otherwise print to standard error unstructured.
// go-redis has one process-wide logger, so it goes to the logger of the
// latest serve; a process runs one outside tests.
var redisLog struct {
	once   sync.Once
	logger atomic.Pointer[slog.Logger]
}

type redisLogger struct{}

func (redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if l := redisLog.logger.Load(); l != nil {
		l.Log(ctx, slog.LevelWarn, "redis client", "detail", fmt.Sprintf(format, v...))
	}
}

// openRedis connects to url and checks that it answers. Errors name
// REDIS_URL but never repeat the URL, which may hold a password.
func openRedis(ctx context.Context, log *slog.Logger, url string) (*redis.Client, error) {
	redisLog.logger.Store(log)
	redisLog.once.Do(func() { redis.SetLogger(redisLogger{}) })
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, &configError{"REDIS_URL", "want redis://[user:password@]host[:port][/db] or rediss://…"}
	}
	// Lets the limiter's per-decision timeout bound network waits too.
	opt.ContextTimeoutEnabled = true
	client := redis.NewClient(opt)
	pctx, cancel := context.WithTimeout(ctx, redisPingTimeout)
	defer cancel()
	if err := client.Ping(pctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("REDIS_URL: Redis at %s does not answer: %w", opt.Addr, err)
	}
	return client, nil
}
