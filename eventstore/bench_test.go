package eventstore_test

// Benchmarks of the append path, end to end against PostgreSQL: Execute
// begins a transaction, switches role, hashes the event, inserts it and
// commits. They run only with -bench; bench/append.sh runs them next to a
// pgbench baseline and bench/README.md explains how to read the numbers.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
)

// benchPackageName pads the PackageCreated payload so that payload plus
// metadata come to about 300 bytes of JSON (benchJSONBytes reports the
// exact figure as the event-json-bytes metric).
const benchPackageName = "Benchmark package, padded to a three-hundred byte event"

// benchCmd is the command every benchmark append runs: system scope, so no
// read-your-writes cursor is recorded, and no idempotency key; metadata of
// a typical size.
var benchCmd = eventstore.Command{
	Name:  "bench.append",
	Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem},
	Metadata: domain.Metadata{
		Actor:         domain.SystemActor,
		RequestID:     "req-bench-00000000",
		CorrelationID: "0b0e6f4e-7a43-4c55-9d1e-2f5a8c3b9e10",
	},
}

func benchEvent() domain.PackageCreated {
	return domain.PackageCreated{
		PackageID: uuid.New(), Name: benchPackageName,
		Credits: 100, PriceCents: 100, Currency: "eur", SortOrder: 1, Active: true,
	}
}

// benchJSONBytes is the size of one benchmark event's payload and metadata
// JSON as the store marshals them.
func benchJSONBytes(b *testing.B) float64 {
	b.Helper()
	p, err := json.Marshal(benchEvent())
	if err != nil {
		b.Fatal(err)
	}
	m, err := json.Marshal(benchCmd.Metadata)
	if err != nil {
		b.Fatal(err)
	}
	return float64(len(p) + len(m))
}

// newBenchStore returns a store over a fresh migrated database with a pool
// of maxConns connections, all of them opened before it returns so no
// benchmark times a connection handshake. The pool is closed and the
// database dropped when b ends.
func newBenchStore(b *testing.B, maxConns int32) *eventstore.Store {
	b.Helper()
	ctx := context.Background()
	pool, err := pg.Open(ctx, pgtest.NewDB(b), maxConns)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	conns := make([]*pgxpool.Conn, 0, maxConns)
	for range maxConns {
		c, err := pool.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Release()
	}
	kek, idx := make([]byte, 32), make([]byte, 32)
	rand.Read(kek)
	rand.Read(idx)
	kr, err := keyring.New(kek, idx)
	if err != nil {
		b.Fatal(err)
	}
	s, err := eventstore.New(pool, eventstore.Options{Keyring: kr, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// appendBench runs one command appending evs to a stream at expected.
func appendBench(ctx context.Context, s *eventstore.Store, streamID string, expected int64, evs ...domain.Event) error {
	_, err := s.Execute(ctx, benchCmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		_, err := tx.Append(ctx, eventstore.StreamAppend{
			StreamType: domain.StreamPackage, StreamID: streamID, ExpectedVersion: expected, Events: evs,
		})
		return domain.Receipt{Status: http.StatusCreated}, err
	})
	return err
}

// BenchmarkAppendDistinctStreams measures append throughput without
// contention: each op is one command creating a new stream with one event.
// conc=N runs about N goroutines (N/GOMAXPROCS per P) over a pool of N
// connections to a database of its own.
func BenchmarkAppendDistinctStreams(b *testing.B) {
	size := benchJSONBytes(b)
	for _, conc := range []int{8, 32} {
		procs := runtime.GOMAXPROCS(0)
		par := max(1, (conc+procs-1)/procs)
		goroutines := par * procs
		s := newBenchStore(b, int32(goroutines))
		b.Run("conc="+strconv.Itoa(conc), func(b *testing.B) {
			ctx := b.Context()
			// Warm every connection's statement cache outside the timing.
			warm(b, s, goroutines)
			b.SetParallelism(par)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					ev := benchEvent()
					if err := appendBench(ctx, s, ev.PackageID.String(), 0, ev); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
			b.ReportMetric(float64(goroutines), "goroutines")
			b.ReportMetric(size, "event-json-bytes")
		})
	}
}

// warm runs n appends at once, so that each of the pool's connections has
// most likely prepared the append path's statements.
func warm(b *testing.B, s *eventstore.Store, n int) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			for range 3 {
				ev := benchEvent()
				if err := appendBench(b.Context(), s, ev.PackageID.String(), 0, ev); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// BenchmarkAppendOneStream measures sequential appends to one growing
// stream, each command expecting the version the previous one left: the
// path of an aggregate written by one writer at a time (stream-head probe
// included).
func BenchmarkAppendOneStream(b *testing.B) {
	s := newBenchStore(b, 2)
	ctx := b.Context()
	id := uuid.NewString()
	var version int64
	warm(b, s, 1)
	for b.Loop() {
		if err := appendBench(ctx, s, id, version, benchEvent()); err != nil {
			b.Fatal(err)
		}
		version++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}

// historyLen is the length of the long stream in BenchmarkAppendHistory.
const historyLen = 10_000

// BenchmarkAppendHistory compares single appends to a stream that already
// holds historyLen events with appends to a stream that starts empty, in
// the same database (same table and index sizes). Appending never reads
// the stream, only probes its head on the unique index, so ns/op should be
// the same for both.
func BenchmarkAppendHistory(b *testing.B) {
	s := newBenchStore(b, 2)
	ctx := context.Background()
	long := uuid.NewString()
	var longVersion int64
	const batch = 1_000
	for longVersion < historyLen {
		evs := make([]domain.Event, batch)
		for i := range evs {
			evs[i] = benchEvent()
		}
		if err := appendBench(ctx, s, long, longVersion, evs...); err != nil {
			b.Fatalf("pre-fill: %v", err)
		}
		longVersion += batch
	}
	warm(b, s, 1)

	run := func(b *testing.B, id string, version *int64) {
		ctx := b.Context()
		before := *version
		for b.Loop() {
			if err := appendBench(ctx, s, id, *version, benchEvent()); err != nil {
				b.Fatal(err)
			}
			*version++
		}
		b.ReportMetric(float64(before), "events-before")
	}
	b.Run("fresh", func(b *testing.B) {
		var v int64
		run(b, uuid.NewString(), &v)
	})
	b.Run("history="+strconv.Itoa(historyLen), func(b *testing.B) {
		run(b, long, &longVersion)
	})
}
