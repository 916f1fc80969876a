package ratelimit

import (
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// DefaultMaxKeys bounds the budgets a Memory keeps when
// MemoryOptions.MaxKeys is zero: about 13 MB at 100 bytes a key.
const DefaultMaxKeys = 1 << 17

// memoryShards spreads keys over independently locked maps, so that
// concurrent requests for different keys rarely wait for each other.
const memoryShards = 32

// sweepEvery is how often a shard drops the budgets that have refilled.
const sweepEvery = time.Minute

// evictSample is how many budgets a full shard looks at to choose the one
// to forget.
const evictSample = 8

// MemoryOptions configure NewMemory. The zero value is usable.
type MemoryOptions struct {
	// Clock tells the time; nil means time.Now. Tests pass a fake.
	Clock func() time.Time
	// MaxKeys bounds how many budgets are kept; zero means DefaultMaxKeys.
	MaxKeys int
}

// Memory is a Limiter that keeps budgets in this process, for a single
// node. Its memory is bounded: budgets that have refilled are dropped once
// a minute (they are indistinguishable from fresh ones), and when MaxKeys
// budgets are still in use, a new key replaces the fullest of a few sampled
// ones, which forgets as little spending as a cheap choice can. It is safe
// for concurrent use and needs no closing.
type Memory struct {
	now      func() time.Time
	perShard int
	seed     maphash.Seed
	shards   [memoryShards]memoryShard
}

type memoryShard struct {
	mu        sync.Mutex
	tat       map[string]int64 // budget key → theoretical arrival time, Unix ns
	nextSweep int64
}

var _ Limiter = (*Memory)(nil)

// NewMemory returns an empty Memory.
func NewMemory(opts MemoryOptions) *Memory {
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.MaxKeys <= 0 {
		opts.MaxKeys = DefaultMaxKeys
	}
	m := &Memory{now: opts.Clock, perShard: max(1, opts.MaxKeys/memoryShards), seed: maphash.MakeSeed()}
	for i := range m.shards {
		m.shards[i].tat = make(map[string]int64)
	}
	return m
}

// Allow implements Limiter. It never fails.
func (m *Memory) Allow(_ context.Context, p Policy, key string) (Decision, error) {
	k := p.Name + "\x00" + key
	sh := &m.shards[maphash.String(m.seed, k)%memoryShards]
	now := m.now().UnixNano()

	sh.mu.Lock()
	defer sh.mu.Unlock()
	if now >= sh.nextSweep {
		sh.sweep(now)
	}
	tat, known := sh.tat[k]
	d, next := decide(p, now, tat)
	if d.Allowed {
		if !known && len(sh.tat) >= m.perShard {
			sh.evict()
		}
		sh.tat[k] = next
	}
	return d, nil
}

// Len reports how many budgets m keeps, for tests and metrics.
func (m *Memory) Len() int {
	n := 0
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		n += len(sh.tat)
		sh.mu.Unlock()
	}
	return n
}

// sweep drops every budget that is full again at now.
func (sh *memoryShard) sweep(now int64) {
	for k, tat := range sh.tat {
		if tat <= now {
			delete(sh.tat, k)
		}
	}
	sh.nextSweep = now + int64(sweepEvery)
}

// evict drops the fullest (earliest tat) of a few budgets: map iteration
// starts at a random place, so this samples.
func (sh *memoryShard) evict() {
	var victim string
	var oldest int64
	n := 0
	for k, tat := range sh.tat {
		if n == 0 || tat < oldest {
			victim, oldest = k, tat
		}
		if n++; n == evictSample {
			break
		}
	}
	delete(sh.tat, victim)
}
