package main

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// sample is what one run of a scenario measured: latencies of the
// operations that completed, how many failed, and the wall time they took.
type sample struct {
	lat     []time.Duration
	errors  int
	elapsed time.Duration
}

func (s sample) count() int { return len(s.lat) }

func (s sample) rps() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(len(s.lat)) / s.elapsed.Seconds()
}

// pct returns the p-quantile (0..1) in milliseconds, nearest rank.
func (s sample) pct(p float64) float64 {
	if len(s.lat) == 0 {
		return 0
	}
	i := int(p*float64(len(s.lat))+0.5) - 1
	i = max(0, min(len(s.lat)-1, i))
	return float64(s.lat[i]) / float64(time.Millisecond)
}

// recorder collects latencies from many goroutines.
type recorder struct {
	mu     sync.Mutex
	lat    []time.Duration
	errors int
}

func (r *recorder) add(lat []time.Duration, errors int) {
	r.mu.Lock()
	r.lat = append(r.lat, lat...)
	r.errors += errors
	r.mu.Unlock()
}

func (r *recorder) sample(elapsed time.Duration) sample {
	slices.Sort(r.lat)
	return sample{lat: r.lat, errors: r.errors, elapsed: elapsed}
}

// op is one operation of a scenario, run by worker w; it reports success
// and may report its own latency (for scenarios that time only part of
// what they do, e.g. the read after a spend); zero means "the whole op".
type op func(w int) (ok bool, lat time.Duration)

// closedLoop runs op from clients goroutines back to back for d: each
// client sends its next request when the previous answer arrived, like
// pgbench's clients. Throughput at a fixed concurrency; latencies include
// queueing behind the other clients, as pgbench's do.
func closedLoop(clients int, d time.Duration, fn op) sample {
	var rec recorder
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := range clients {
		wg.Go(func() {
			var mine []time.Duration
			bad := 0
			for time.Now().Before(deadline) {
				t := time.Now()
				ok, own := fn(w)
				if !ok {
					bad++
					continue
				}
				if own == 0 {
					own = time.Since(t)
				}
				mine = append(mine, own)
			}
			rec.add(mine, bad)
		})
	}
	wg.Wait()
	return rec.sample(time.Since(start))
}

// openLoop offers op at a constant rate for d, whatever the answers do:
// request i is due at start + i/rate and its latency counts from then, so
// a stall shows up in the percentiles instead of silently slowing the
// sender (no coordinated omission). workers bounds the requests in flight;
// when all are busy, due requests wait and that wait is latency too.
func openLoop(rate float64, d time.Duration, workers int, fn op) sample {
	interval := time.Duration(float64(time.Second) / rate)
	n := int64(d.Seconds() * rate)
	var rec recorder
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now().Add(20 * time.Millisecond)
	for w := range workers {
		wg.Go(func() {
			var mine []time.Duration
			bad := 0
			for {
				i := next.Add(1) - 1
				if i >= n {
					break
				}
				due := start.Add(time.Duration(i) * interval)
				if wait := time.Until(due); wait > 0 {
					time.Sleep(wait)
				}
				began := time.Now()
				ok, own := fn(w)
				if !ok {
					bad++
					continue
				}
				// Latency counts from the due moment: the op's own time
				// (or the part it timed itself) plus any wait for a free
				// worker past that moment.
				lat := time.Since(due)
				if own != 0 {
					lat = own + max(0, began.Sub(due))
				}
				mine = append(mine, lat)
			}
			rec.add(mine, bad)
		})
	}
	wg.Wait()
	return rec.sample(time.Since(start))
}
