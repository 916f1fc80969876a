package eventstore_test

import (
	"context"
	"crypto/rand"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
)

// testEnv is one test's store over its own database clone.
type testEnv struct {
	pool  *pgxpool.Pool
	store *eventstore.Store
	reg   *prometheus.Registry
}

func newEnv(t *testing.T, opts ...func(*eventstore.Options)) *testEnv {
	t.Helper()
	pool := pgtest.NewPool(t)
	return newEnvOn(t, pool, opts...)
}

func newEnvOn(t *testing.T, pool *pgxpool.Pool, opts ...func(*eventstore.Options)) *testEnv {
	t.Helper()
	kek, idx := make([]byte, 32), make([]byte, 32)
	rand.Read(kek)
	rand.Read(idx)
	kr, err := keyring.New(kek, idx)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	o := eventstore.Options{Keyring: kr, Registerer: reg}
	for _, f := range opts {
		f(&o)
	}
	s, err := eventstore.New(pool, o)
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{pool: pool, store: s, reg: reg}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func systemCmd(name string) eventstore.Command {
	return eventstore.Command{
		Name:     name,
		Actor:    pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem},
		Metadata: domain.Metadata{Actor: domain.SystemActor, RequestID: "req-test"},
	}
}

func pkg(name string) domain.PackageCreated {
	return domain.PackageCreated{PackageID: uuid.New(), Name: name, Credits: 100, PriceCents: 100, Currency: "eur", SortOrder: 1, Active: true}
}

// appendOne appends events to a stream at the expected version in its own
// command.
func (e *testEnv) appendOne(t *testing.T, streamType, streamID string, expected int64, evs ...domain.Event) ([]eventstore.Record, error) {
	t.Helper()
	var recs []eventstore.Record
	_, err := e.store.Execute(ctxT(t), systemCmd("test.append"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		var err error
		recs, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: streamType, StreamID: streamID, ExpectedVersion: expected, Events: evs})
		return domain.Receipt{Status: http.StatusCreated}, err
	})
	return recs, err
}

func (e *testEnv) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := e.pool.QueryRow(ctxT(t), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// metricSum adds up every series of a counter in the env's registry.
func metricSum(t *testing.T, e *testEnv, name string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
