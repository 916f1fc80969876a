package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisURL is the Redis the tests use: TEST_REDIS_URL, or the local one
// that .ci/services.sh makes sure answers.
func redisURL() string {
	if u := os.Getenv("TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// testRedis returns a new client of the test Redis, closed when the test
// ends, and a key prefix no other test uses. It fails the test when Redis
// does not answer: these tests never skip.
func testRedis(t *testing.T) (*redis.Client, string) {
	t.Helper()
	opt, err := redis.ParseURL(redisURL())
	if err != nil {
		t.Fatalf("TEST_REDIS_URL: %v", err)
	}
	opt.ContextTimeoutEnabled = true
	client := redis.NewClient(opt)
	t.Cleanup(func() { _ = client.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		t.Fatalf("Redis at %s does not answer (run .ci/services.sh, or set TEST_REDIS_URL): %v", opt.Addr, err)
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	prefix := "mana:test:" + t.Name() + ":" + hex.EncodeToString(b) + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		keys, _ := client.Keys(ctx, prefix+"*").Result()
		if len(keys) > 0 {
			_ = client.Del(ctx, keys...).Err()
		}
	})
	return client, prefix
}

func TestRedisBurstThenDenies(t *testing.T) {
	t.Parallel()
	client, prefix := testRedis(t)
	r := NewRedis(client, RedisOptions{Prefix: prefix})
	p := Policy{Name: "register_ip", Limit: 10, Period: time.Hour, Burst: 10}

	for i := range 10 {
		d := allow(t, r, p, "192.0.2.1")
		if !d.Allowed || d.Limit != 10 || d.Remaining != int64(9-i) {
			t.Fatalf("request %d: %+v, want allowed with %d remaining", i+1, d, 9-i)
		}
		// Each request costs one interval (6 min) of refill time; the
		// script's clock moves on between calls, so allow a second.
		if want := time.Duration(i+1) * 6 * time.Minute; d.ResetAfter > want || d.ResetAfter < want-time.Second {
			t.Errorf("request %d: reset after %v, want about %v", i+1, d.ResetAfter, want)
		}
	}
	d := allow(t, r, p, "192.0.2.1")
	if d.Allowed || d.Remaining != 0 {
		t.Fatalf("the 11th request was allowed: %+v", d)
	}
	if d.RetryAfter <= 5*time.Minute || d.RetryAfter > 6*time.Minute {
		t.Errorf("retry after %v, want about one interval (6m)", d.RetryAfter)
	}
	if d.ResetAfter <= 59*time.Minute || d.ResetAfter > time.Hour {
		t.Errorf("reset after %v, want about 1h", d.ResetAfter)
	}
	if d := allow(t, r, p, "192.0.2.2"); !d.Allowed || d.Remaining != 9 {
		t.Errorf("another key: %+v", d)
	}

	// The key expires when the budget is full again.
	ttl, err := client.PTTL(context.Background(), prefix+"register_ip:192.0.2.1").Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl <= 59*time.Minute || ttl > time.Hour {
		t.Errorf("budget key TTL = %v, want about 1h", ttl)
	}
}

func TestRedisRefills(t *testing.T) {
	t.Parallel()
	client, prefix := testRedis(t)
	r := NewRedis(client, RedisOptions{Prefix: prefix})
	p := Policy{Name: "refresh_ip", Limit: 10, Period: time.Second, Burst: 2}
	allow(t, r, p, "k")
	allow(t, r, p, "k")
	d := allow(t, r, p, "k")
	if d.Allowed {
		t.Fatal("the third request of a burst of 2 was allowed")
	}
	// Redis keeps the clock, so this waits in real time, about one
	// interval (100 ms), polling rather than guessing a sleep.
	start := time.Now()
	deadline := start.Add(10 * time.Second)
	for !allow(t, r, p, "k").Allowed {
		if time.Now().After(deadline) {
			t.Fatal("the budget did not refill within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if waited := time.Since(start); waited < d.RetryAfter-10*time.Millisecond {
		t.Errorf("allowed again after %v, before the promised %v", waited, d.RetryAfter)
	}
}

// TestRedisLimitsSharedByTwoInstances is the point of Redis: two limiters,
// as on two nodes, each with its own connections, draw on one budget.
func TestRedisLimitsSharedByTwoInstances(t *testing.T) {
	t.Parallel()
	c1, prefix := testRedis(t)
	c2, _ := testRedis(t)
	a := NewRedis(c1, RedisOptions{Prefix: prefix})
	b := NewRedis(c2, RedisOptions{Prefix: prefix})
	p := Policy{Name: "login_ip", Limit: 20, Period: time.Minute, Burst: 10}

	allowed := 0
	for i := range 20 {
		l := a
		if i%2 == 1 {
			l = b
		}
		if d := allow(t, l, p, "198.51.100.7"); d.Allowed {
			allowed++
			if d.Remaining != int64(10-allowed) {
				t.Errorf("request %d: remaining %d, want %d (the other instance's requests count too)", i+1, d.Remaining, 10-allowed)
			}
		}
	}
	if allowed != 10 {
		t.Errorf("two instances allowed %d requests together, want the shared burst of 10", allowed)
	}
	if d := allow(t, b, p, "198.51.100.7"); d.Allowed {
		t.Error("instance b allowed a request after a's and b's took the budget")
	}
}

// TestRedisIsAtomic fires many concurrent requests from several clients:
// the script must hand out exactly the burst.
func TestRedisIsAtomic(t *testing.T) {
	t.Parallel()
	client, prefix := testRedis(t)
	other, _ := testRedis(t)
	limiters := []*Redis{NewRedis(client, RedisOptions{Prefix: prefix}), NewRedis(other, RedisOptions{Prefix: prefix})}
	p := Policy{Name: "credits_app", Limit: 1, Period: time.Hour, Burst: 100}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for i := range 20 {
		l := limiters[i%2]
		wg.Go(func() {
			for range 20 {
				if allow(t, l, p, "app").Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := allowed.Load(); n != 100 {
		t.Errorf("allowed %d of 400 concurrent requests, want the burst of 100", n)
	}
}

// TestRedisSurvivesScriptFlush: after SCRIPT FLUSH (as after a restart)
// the limiter loads its script again instead of failing.
func TestRedisSurvivesScriptFlush(t *testing.T) {
	client, prefix := testRedis(t)
	r := NewRedis(client, RedisOptions{Prefix: prefix})
	p := Policy{Name: "register_ip", Limit: 10, Period: time.Minute, Burst: 10}
	allow(t, r, p, "k")
	if err := client.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	if d := allow(t, r, p, "k"); !d.Allowed || d.Remaining != 8 {
		t.Errorf("after SCRIPT FLUSH: %+v, want allowed with 8 remaining", d)
	}
}

// TestRedisUnreachableFails: an unreachable Redis is an error (the caller
// decides what to do), returned within the timeout.
func TestRedisUnreachableFails(t *testing.T) {
	t.Parallel()
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = client.Close() })
	r := NewRedis(client, RedisOptions{Timeout: 200 * time.Millisecond})
	start := time.Now()
	_, err := r.Allow(context.Background(), Policy{Name: "login_ip", Limit: 1, Period: time.Second, Burst: 1}, "k")
	if err == nil {
		t.Fatal("Allow against a closed port succeeded")
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Allow took %v to fail", elapsed)
	}
}
