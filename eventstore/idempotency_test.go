package eventstore_test

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

type spendRequest struct {
	Amount int64  `json:"amount"`
	AppID  string `json:"appId"`
}

// idemCmd runs a user-scoped idempotent command that appends one event and
// answers with a body naming the event, counting how often its decision
// commits work.
func idemCmd(t *testing.T, e *testEnv, user uuid.UUID, key string, req spendRequest, ran *atomic.Int64, fail error) (domain.Receipt, error) {
	t.Helper()
	cmd := eventstore.Command{
		Name:     "credits.use",
		Actor:    pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user},
		Metadata: domain.Metadata{Actor: "user:" + user.String()},
		Idempotency: &eventstore.Idempotency{
			Subject: "user:" + user.String(), Principal: "user:" + user.String(), Key: key, Request: req,
		},
	}
	return e.store.Execute(ctxT(t), cmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		if fail != nil {
			return domain.Receipt{}, fail
		}
		recs, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: "package", StreamID: user.String(), ExpectedVersion: eventstore.AnyVersion, Events: []domain.Event{pkg("x")}})
		if err != nil {
			return domain.Receipt{}, err
		}
		ran.Add(1)
		body, _ := json.Marshal(map[string]any{"success": true, "id": recs[0].EventID, "amount": req.Amount})
		return domain.Receipt{Status: http.StatusCreated, Body: body}, nil
	})
}

func TestIdempotentReplayAndReuse(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	user := uuid.New()
	var ran atomic.Int64
	req := spendRequest{Amount: 5, AppID: "chat"}

	first, err := idemCmd(t, e, user, "key-1", req, &ran, nil)
	if err != nil || first.Replayed || first.Status != 201 || first.Position == "" {
		t.Fatalf("first = %+v, %v", first, err)
	}
	again, err := idemCmd(t, e, user, "key-1", req, &ran, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Replayed || again.Status != 201 || again.Position != first.Position {
		t.Fatalf("replay = %+v", again)
	}
	var a, b map[string]any
	json.Unmarshal(first.Body, &a)
	json.Unmarshal(again.Body, &b)
	if a["id"] != b["id"] || a["id"] == nil {
		t.Fatalf("replayed body %s differs from %s", again.Body, first.Body)
	}
	if ran.Load() != 1 {
		t.Fatalf("decision committed %d times", ran.Load())
	}

	_, err = idemCmd(t, e, user, "key-1", spendRequest{Amount: 6, AppID: "chat"}, &ran, nil)
	if domain.ErrorCode(err) != domain.CodeIdempotencyKeyReused {
		t.Fatalf("other body with the same key: err = %v, want IDEMPOTENCY_KEY_REUSED", err)
	}

	// The scope includes the principal: another user's identical key is
	// another command.
	if r, err := idemCmd(t, e, uuid.New(), "key-1", req, &ran, nil); err != nil || r.Replayed {
		t.Fatalf("another user's key replayed: %+v %v", r, err)
	}

	// Invalid keys are a validation error.
	if _, err := idemCmd(t, e, user, "bad key!", req, &ran, nil); domain.ErrorCode(err) != domain.CodeValidationFailed {
		t.Fatalf("bad key: %v", err)
	}
}

func TestIdempotencyStoresOnlySuccesses(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	user := uuid.New()
	var ran atomic.Int64
	req := spendRequest{Amount: 5, AppID: "chat"}
	_, err := idemCmd(t, e, user, "k", req, &ran, domain.Errorf(domain.CodeInsufficientCredits, "not enough"))
	if domain.ErrorCode(err) != domain.CodeInsufficientCredits {
		t.Fatalf("err = %v", err)
	}
	if n := e.count(t, "SELECT count(*) FROM idempotency_keys"); n != 0 {
		t.Fatalf("a 402 stored %d idempotency rows", n)
	}
	// The retry is a new attempt, and it may succeed.
	r, err := idemCmd(t, e, user, "k", req, &ran, nil)
	if err != nil || r.Replayed || ran.Load() != 1 {
		t.Fatalf("retry after a failure: %+v %v (ran %d)", r, err, ran.Load())
	}
}

func TestConcurrentDuplicatesWaitAndReplay(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	user := uuid.New()
	var ran atomic.Int64
	req := spendRequest{Amount: 7, AppID: "chat"}
	const n = 20
	results := make([]domain.Receipt, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			results[i], errs[i] = idemCmd(t, e, user, "dup-key", req, &ran, nil)
		}(i)
	}
	close(start)
	wg.Wait()
	replays := 0
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("duplicate %d: %v", i, errs[i])
		}
		if results[i].Status != 201 || string(results[i].Body) != string(results[0].Body) {
			t.Fatalf("duplicate %d got %d %s, want %s", i, results[i].Status, results[i].Body, results[0].Body)
		}
		if results[i].Replayed {
			replays++
		}
	}
	if ran.Load() != 1 || replays != n-1 {
		t.Fatalf("decision committed %d times, %d replays; want 1 and %d", ran.Load(), replays, n-1)
	}
	if c := e.count(t, "SELECT count(*) FROM events WHERE stream_id = $1", user.String()); c != 1 {
		t.Fatalf("%d events appended for one idempotent command", c)
	}
}

// TestErrorReceiptsCommitWorkButAreNotReplayed: a command that records a
// fact (say, a hold's expiry) and still answers an error commits the fact,
// but its key is free for a new attempt.
func TestErrorReceiptsCommitWorkButAreNotReplayed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	user := uuid.New()
	cmd := eventstore.Command{
		Name:  "credits.capture",
		Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user},
		Idempotency: &eventstore.Idempotency{Subject: "account:" + user.String(), Principal: "user:" + user.String(),
			Key: "k", Request: map[string]int{"amount": 1}},
	}
	runs := 0
	for i := 0; i < 2; i++ {
		r, err := e.store.Execute(ctxT(t), cmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			runs++
			_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: "package", StreamID: user.String(),
				ExpectedVersion: eventstore.AnyVersion, Events: []domain.Event{pkg("expired")}})
			return domain.Receipt{Status: http.StatusConflict}, err
		})
		if err != nil || r.Replayed {
			t.Fatalf("attempt %d: %+v %v", i, r, err)
		}
	}
	if runs != 2 {
		t.Fatalf("decision ran %d times, want 2 (no replay of an error)", runs)
	}
	if n := e.count(t, "SELECT count(*) FROM events WHERE stream_id = $1", user.String()); n != 2 {
		t.Fatalf("%d events committed, want 2", n)
	}
	if n := e.count(t, "SELECT count(*) FROM idempotency_keys"); n != 0 {
		t.Fatalf("%d idempotency rows stored for an error", n)
	}
}
