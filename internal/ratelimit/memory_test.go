package ratelimit

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// allow calls l.Allow and fails the test on an error.
func allow(t *testing.T, l Limiter, p Policy, key string) Decision {
	t.Helper()
	d, err := l.Allow(context.Background(), p, key)
	if err != nil {
		t.Fatalf("Allow(%s, %q): %v", p.Name, key, err)
	}
	return d
}

func TestMemoryBurstThenDenies(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	m := NewMemory(MemoryOptions{Clock: clock.Now})
	p := Policy{Name: "login_ip", Limit: 20, Period: time.Minute, Burst: 10}

	for i := range 10 {
		d := allow(t, m, p, "192.0.2.1")
		if !d.Allowed {
			t.Fatalf("request %d of the burst was denied: %+v", i+1, d)
		}
		if d.Limit != 10 || d.Remaining != int64(9-i) {
			t.Errorf("request %d: limit %d remaining %d, want 10 and %d", i+1, d.Limit, d.Remaining, 9-i)
		}
		// Each request costs one interval (3 s) of refill time.
		if want := time.Duration(i+1) * 3 * time.Second; d.ResetAfter != want {
			t.Errorf("request %d: reset after %v, want %v", i+1, d.ResetAfter, want)
		}
	}
	d := allow(t, m, p, "192.0.2.1")
	if d.Allowed || d.Remaining != 0 {
		t.Fatalf("the 11th request at once was allowed: %+v", d)
	}
	if d.RetryAfter != 3*time.Second || d.ResetAfter != 30*time.Second {
		t.Errorf("denied: retry after %v, reset after %v; want 3s and 30s", d.RetryAfter, d.ResetAfter)
	}
	// A denial takes nothing: asking again at once says the same.
	if again := allow(t, m, p, "192.0.2.1"); again != d {
		t.Errorf("second denial %+v differs from the first %+v", again, d)
	}
	// Other keys and other policies have budgets of their own.
	if d := allow(t, m, p, "192.0.2.2"); !d.Allowed || d.Remaining != 9 {
		t.Errorf("another key: %+v", d)
	}
	other := p
	other.Name = "register_ip"
	if d := allow(t, m, other, "192.0.2.1"); !d.Allowed || d.Remaining != 9 {
		t.Errorf("another policy: %+v", d)
	}
}

func TestMemoryRefillsWithTime(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	m := NewMemory(MemoryOptions{Clock: clock.Now})
	p := Policy{Name: "register_ip", Limit: 10, Period: time.Minute, Burst: 10}
	for range 10 {
		allow(t, m, p, "k")
	}
	if d := allow(t, m, p, "k"); d.Allowed {
		t.Fatal("the 11th request in a minute was allowed")
	}

	clock.Advance(6*time.Second - time.Nanosecond)
	if d := allow(t, m, p, "k"); d.Allowed || d.RetryAfter != time.Nanosecond {
		t.Fatalf("just before one interval: %+v, want denied with 1ns to wait", d)
	}
	clock.Advance(time.Nanosecond)
	if d := allow(t, m, p, "k"); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("after one interval (6s): %+v, want one request allowed", d)
	}
	if d := allow(t, m, p, "k"); d.Allowed {
		t.Fatal("a second request after one interval was allowed")
	}

	// Long idle: the budget is full again, and no more than full.
	clock.Advance(time.Hour)
	for i := range 10 {
		if d := allow(t, m, p, "k"); !d.Allowed {
			t.Fatalf("after an hour, request %d was denied", i+1)
		}
	}
	if d := allow(t, m, p, "k"); d.Allowed {
		t.Fatal("after an hour, the budget held more than its burst")
	}
}

// TestMemorySustainedRate checks the long-run rate: with a request every
// interval, a budget never runs dry; faster, it does.
func TestMemorySustainedRate(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	m := NewMemory(MemoryOptions{Clock: clock.Now})
	p := Policy{Name: "credits_user", Limit: 50, Period: time.Second, Burst: 500}
	allowed := 0
	// Ten seconds of 100 requests a second: the burst plus 50 a second.
	for range 1000 {
		if allow(t, m, p, "user").Allowed {
			allowed++
		}
		clock.Advance(10 * time.Millisecond)
	}
	if allowed < 995 || allowed > 1000 {
		// 500 + 10 s × 50/s = 1000 at most; the last refill may land
		// after the last request.
		t.Errorf("allowed %d of 1000 requests over 10s, want about 1000", allowed)
	}
	allowed = 0
	for range 1000 {
		if allow(t, m, p, "user").Allowed {
			allowed++
		}
		clock.Advance(5 * time.Millisecond)
	}
	// The budget is empty now: 5 s at 50/s.
	if allowed < 245 || allowed > 255 {
		t.Errorf("allowed %d of 1000 requests over 5s from an empty budget, want about 250", allowed)
	}
}

func TestMemoryForgetsIdleKeys(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	m := NewMemory(MemoryOptions{Clock: clock.Now})
	p := Policy{Name: "register_ip", Limit: 10, Period: time.Minute, Burst: 10}
	for i := range 1000 {
		allow(t, m, p, strconv.Itoa(i))
	}
	if n := m.Len(); n != 1000 {
		t.Fatalf("kept %d budgets, want 1000", n)
	}
	// One request refills in 6 s; after the sweep interval every budget is
	// full again and indistinguishable from no state at all.
	// A shard sweeps when it is next used: 1000 fresh keys touch every
	// one of the 32 (the chance that one is missed is about 1e-12).
	clock.Advance(sweepEvery)
	for i := range 1000 {
		allow(t, m, p, "fresh-"+strconv.Itoa(i))
	}
	if n := m.Len(); n != 1000 {
		t.Errorf("kept %d budgets after a sweep, want only the 1000 fresh ones", n)
	}
}

func TestMemoryIsBounded(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	const maxKeys = 256
	m := NewMemory(MemoryOptions{Clock: clock.Now, MaxKeys: maxKeys})
	p := Policy{Name: "login_ip", Limit: 1, Period: time.Hour, Burst: 1}
	for i := range 10 * maxKeys {
		if d := allow(t, m, p, strconv.Itoa(i)); !d.Allowed {
			t.Fatalf("a new key was denied: %+v", d)
		}
	}
	if n := m.Len(); n > maxKeys {
		t.Errorf("kept %d budgets, bound is %d", n, maxKeys)
	}
}

func TestMemoryConcurrentTakesExactlyTheBurst(t *testing.T) {
	t.Parallel()
	m := NewMemory(MemoryOptions{Clock: newFakeClock().Now})
	p := Policy{Name: "credits_app", Limit: 1, Period: time.Hour, Burst: 100}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			for range 50 {
				if allow(t, m, p, "app").Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := allowed.Load(); n != 100 {
		t.Errorf("allowed %d of 1000 concurrent requests, want the burst of 100", n)
	}
}
