package projections_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/projections"
)

// registerTouching appends a registration that records the user's write
// cursor, as the service's register command does.
func (e *env) registerTouching(ctx context.Context, email string) (uuid.UUID, error) {
	id := uuid.New()
	_, err := e.store.Execute(ctx, systemCmd("auth.register"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		_, err := tx.Append(ctx, eventstore.StreamAppend{
			StreamType: domain.StreamUser, StreamID: id.String(), Users: []uuid.UUID{id},
			Events: []domain.Event{&domain.UserRegistered{UserID: id, Email: email, Role: "user", RegisteredAt: tx.Now()}},
		})
		return domain.Receipt{Status: http.StatusCreated}, err
	})
	return id, err
}

// userRowVisible reads the users read model as the user themself.
func (e *env) userRowVisible(ctx context.Context, id uuid.UUID) (bool, error) {
	var n int
	err := pg.InTx(ctx, e.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: id}, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, "SELECT count(*) FROM users WHERE id = $1", id).Scan(&n)
	})
	return n == 1, err
}

// TestReadYourWrites: a write followed at once by a read of the same user
// sees the write, 100 times in a row, through the whole pipeline (relay,
// JetStream, runner), from a node that does not run the projection (the
// polling path) and from one that does (the in-process wake-up).
func TestReadYourWrites(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	relay := e.store.NewRelay(e.js, eventstore.RelayOptions{Holder: "relay-ryw", Logger: testLogger(t)})
	e.store.OnAppend(relay.Notify)
	rctx, cancel := context.WithCancel(context.Background())
	relayDone := make(chan struct{})
	go func() { defer close(relayDone); relay.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-relayDone })

	runner, _ := e.newRunner(t, "runner-ryw", projections.All(), func(c *projections.Config) { c.PollInterval = time.Second })
	start(t, runner)

	for _, node := range []struct {
		name string
		f    *projections.Freshness
	}{
		{"other node", projections.NewFreshness(e.pool, nil, 2*time.Second)},
		{"projecting node", projections.NewFreshness(e.pool, runner, 2*time.Second)},
	} {
		var slowest time.Duration
		for i := 0; i < 100; i++ {
			ctx := ctxT(t)
			id, err := e.registerTouching(ctx, fmt.Sprintf("ryw-%d-%s@example.com", i, node.name[:1]))
			if err != nil {
				t.Fatal(err)
			}
			began := time.Now()
			if err := node.f.Await(ctx, "users", id, ""); err != nil {
				t.Fatalf("%s, write %d: await: %v", node.name, i, err)
			}
			slowest = max(slowest, time.Since(began))
			ok, err := e.userRowVisible(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				t.Fatalf("%s, write %d: the read did not see the write", node.name, i)
			}
		}
		t.Logf("%s: slowest wait %v", node.name, slowest)
	}
}

func TestReadYourWritesLagsClearly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id, err := e.registerTouching(ctxT(t), "lag@example.com")
	if err != nil {
		t.Fatal(err)
	}
	// No projector runs: the wait ends in READ_MODEL_LAGGING.
	f := projections.NewFreshness(e.pool, nil, 50*time.Millisecond)
	err = f.Await(ctxT(t), "users", id, "")
	var de *domain.Error
	if !errors.As(err, &de) || de.Code != domain.CodeReadModelLagging || de.RetryAfterSeconds != 1 {
		t.Fatalf("err = %v, want READ_MODEL_LAGGING with Retry-After 1", err)
	}
	// Another user, who wrote nothing, is not held up.
	if err := f.Await(ctxT(t), "users", uuid.New(), ""); err != nil {
		t.Fatalf("a user without writes waited: %v", err)
	}
	// minPosition is honoured, and must be well-formed.
	if err := f.Await(ctxT(t), "users", uuid.Nil, "999999999-1"); domain.ErrorCode(err) != domain.CodeReadModelLagging {
		t.Fatalf("a future minPosition: %v", err)
	}
	if err := f.Await(ctxT(t), "users", uuid.Nil, "yesterday"); domain.ErrorCode(err) != domain.CodeValidationFailed {
		t.Fatalf("a malformed minPosition: %v", err)
	}
}
