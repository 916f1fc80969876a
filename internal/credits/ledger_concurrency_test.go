package credits_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/credits"
	"github.com/manacore/mana/projections"
)

// result is one concurrent call's outcome.
type result struct {
	i   int
	key string
	r   domain.Receipt
	err error
}

// race runs n calls at once (released together) and returns their
// outcomes, failing if they do not all return within the wait.
func race(t *testing.T, n int, call func(i int) (domain.Receipt, error)) []result {
	t.Helper()
	out := make([]result, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			r, err := call(i)
			out[i] = result{i: i, r: r, err: err}
		})
	}
	close(start)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatalf("%d concurrent calls did not finish within %v", n, wait)
	}
	return out
}

// holdID reads the id of a hold placement's body, without failing the
// test (it runs off the test goroutine).
func holdID(r domain.Receipt) (uuid.UUID, error) {
	var m struct {
		ID uuid.UUID `json:"id"`
	}
	if err := json.Unmarshal(r.Body, &m); err != nil || m.ID == uuid.Nil {
		return uuid.Nil, fmt.Errorf("hold body %s: %v", r.Body, err)
	}
	return m.ID, nil
}

// TestConcurrentSpends: 200 concurrent spends of 1 credit on a fresh
// account holding the 150 signup bonus, through one node and through two
// nodes on one database: exactly 150 succeed, 50 are INSUFFICIENT_CREDITS,
// none is BUSY or a 500; the account ends at 0 and equals its fold.
func TestConcurrentSpends(t *testing.T) {
	t.Parallel()
	for _, nodes := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d nodes", nodes), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			svcs := []*credits.Service{e.svc}
			if nodes == 2 {
				svcs = append(svcs, e.secondNode(t))
			}
			u := e.register(t)
			if _, ok := e.account(t, u); ok {
				t.Fatal("the account row exists before the first credit command")
			}
			res := race(t, 200, func(i int) (domain.Receipt, error) {
				return e.use(t, svcs[i%len(svcs)], u, 1, "")
			})
			ok, short := 0, 0
			txIDs := map[uuid.UUID]bool{}
			for _, r := range res {
				switch code(r.err) {
				case "":
					if r.r.Status != 201 || r.r.Replayed {
						t.Fatalf("call %d: status %d replayed %v", r.i, r.r.Status, r.r.Replayed)
					}
					txIDs[idOf(t, r.r, "transaction", "id")] = true
					ok++
				case domain.CodeInsufficientCredits:
					short++
				default:
					t.Errorf("call %d: %v", r.i, r.err)
				}
			}
			if ok != signupBonus || short != 200-signupBonus || len(txIDs) != signupBonus {
				t.Fatalf("%d succeeded (%d distinct transactions), %d insufficient; want %d and %d", ok, len(txIDs), short, signupBonus, 200-signupBonus)
			}
			a := e.wantBalance(t, u, 0, 0, 0)
			if a.TotalEarned != signupBonus || a.TotalSpent != signupBonus || a.Version != 1+signupBonus {
				t.Fatalf("account %s", showAccount(a))
			}
			if n := e.countType(t, u, "credit.spent"); n != signupBonus {
				t.Fatalf("%d credit.spent events, want %d", n, signupBonus)
			}
			e.checkLedger(t)
		})
	}
}

// TestConcurrentIdempotentSpends: 200 keys, each sent twice at once, 20 of
// them a third time, on an account of 150, through two nodes: each key has
// its effect at most once; every call for a key that took effect gets the
// same status and body (one original, the rest Replayed); keys that found
// the balance short stored nothing, and a later retry of one is a new
// attempt.
func TestConcurrentIdempotentSpends(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	svcs := []*credits.Service{e.svc, e.secondNode(t)}
	u := e.register(t)
	const keys = 200
	calls := 2*keys + 20
	keyOf := func(i int) string { return fmt.Sprintf("spend-%03d", i%keys) }
	res := race(t, calls, func(i int) (domain.Receipt, error) {
		return e.use(t, svcs[(i/keys+i)%2], u, 1, keyOf(i))
	})
	byKey := map[string][]result{}
	for _, r := range res {
		r.key = keyOf(r.i)
		byKey[r.key] = append(byKey[r.key], r)
	}
	effective := 0
	for k, rs := range byKey {
		originals, replays, short := 0, 0, 0
		var first domain.Receipt
		for _, r := range rs {
			switch code(r.err) {
			case "":
				if first.Body == nil {
					first = r.r
				}
				if r.r.Status != first.Status || !bytes.Equal(r.r.Body, first.Body) || r.r.Position != first.Position {
					t.Fatalf("key %s: receipts differ:\n%d %s %s\n%d %s %s", k, first.Status, first.Body, first.Position, r.r.Status, r.r.Body, r.r.Position)
				}
				if r.r.Replayed {
					replays++
				} else {
					originals++
				}
			case domain.CodeInsufficientCredits:
				short++
			default:
				t.Fatalf("key %s: %v", k, r.err)
			}
		}
		switch {
		case originals == 1 && replays == len(rs)-1:
			effective++
		case short == len(rs):
		default:
			t.Fatalf("key %s: %d originals, %d replays, %d insufficient of %d calls", k, originals, replays, short, len(rs))
		}
	}
	if effective != signupBonus {
		t.Fatalf("%d keys took effect, want %d", effective, signupBonus)
	}
	if n := e.countType(t, u, "credit.spent"); n != signupBonus {
		t.Fatalf("%d credit.spent events, want %d", n, signupBonus)
	}
	e.wantBalance(t, u, 0, 0, 0)

	// A late replay of an effective key: the stored receipt again.
	var done, failed string
	for k, rs := range byKey {
		if rs[0].err == nil && done == "" {
			done = k
		}
		if rs[0].err != nil && failed == "" {
			failed = k
		}
	}
	again := must(t)(e.use(t, e.svc, u, 1, done))
	if !again.Replayed || !bytes.Equal(again.Body, byKey[done][0].r.Body) {
		t.Fatalf("late replay of %s: replayed=%v body %s", done, again.Replayed, again.Body)
	}
	// The same key with another request is refused and changes nothing.
	_, err := e.use(t, e.svc, u, 2, done)
	wantCode(t, err, domain.CodeIdempotencyKeyReused)
	// A key that met a short balance stored nothing: after a grant, its
	// retry is a new attempt and takes effect.
	e.grant(t, u, 5, "free")
	r := must(t)(e.use(t, svcs[1], u, 1, failed))
	if r.Replayed || r.Status != 201 {
		t.Fatalf("retry of the short key %s: status %d replayed %v", failed, r.Status, r.Replayed)
	}
	r2 := must(t)(e.use(t, svcs[0], u, 1, failed))
	if !r2.Replayed || !bytes.Equal(r.Body, r2.Body) {
		t.Fatalf("replay of the retried key: replayed=%v", r2.Replayed)
	}
	e.wantBalance(t, u, 4, 0, 0)
}

// TestConcurrentMixed: spends, holds with capture or release, and replays
// at once on one account through two nodes; the account equals its fold,
// and the balances read model, run by a projection runner, ends equal to
// the write side.
func TestConcurrentMixed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	svcs := []*credits.Service{e.svc, e.secondNode(t)}
	u := e.register(t)
	e.grant(t, u, 1000, "paid")

	// The balances projection, on the PostgreSQL feed alone.
	runner, err := projections.NewRunner(projections.Config{
		Store: e.store, Projections: []projections.Projection{projections.Balances(), projections.Transactions(), projections.UsageStats()},
		Holder: "credits-test", LeaseTTL: time.Second, PollInterval: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- runner.Run(rctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-runDone:
		case <-time.After(wait):
			t.Errorf("runner did not stop")
		}
	})

	const workers = 60
	res := race(t, workers, func(i int) (domain.Receipt, error) {
		svc := svcs[i%2]
		c := userCaller(u)
		ctx := ctxT(t)
		var last domain.Receipt
		for j := range 5 {
			key := fmt.Sprintf("w%d-%d", i, j)
			switch (i + j) % 3 {
			case 0:
				r, err := svc.Use(ctx, c, u, domain.UseInput{Amount: 7, AppID: "app", IdempotencyKey: key})
				if err != nil && code(err) != domain.CodeInsufficientCredits {
					return r, err
				}
				if err == nil {
					last = r
					r2, err := svcs[(i+1)%2].Use(ctx, c, u, domain.UseInput{Amount: 7, AppID: "app", IdempotencyKey: key})
					if err != nil || !r2.Replayed || !bytes.Equal(r.Body, r2.Body) {
						return r2, fmt.Errorf("replay of %s: replayed=%v err=%v", key, r2.Replayed, err)
					}
				}
			case 1, 2:
				r, err := svc.PlaceHold(ctx, c, u, domain.HoldInput{Amount: 9, AppID: "app", TTLSeconds: 60, IdempotencyKey: key})
				if code(err) == domain.CodeInsufficientCredits {
					continue
				}
				if err != nil {
					return r, err
				}
				id, err := holdID(r)
				if err != nil {
					return r, err
				}
				if (i+j)%3 == 1 {
					r, err = svcs[(i+1)%2].CaptureHold(ctx, c, u, id, 4, key+"-c")
				} else {
					r, err = svc.ReleaseHold(ctx, c, u, id, key+"-r")
				}
				if err != nil {
					return r, err
				}
				last = r
			}
		}
		return last, nil
	})
	var maxPos eventstore.Cursor
	for _, r := range res {
		if r.err != nil {
			t.Fatalf("worker %d: %v", r.i, r.err)
		}
		if r.r.Position != "" {
			c, err := eventstore.ParseCursor(r.r.Position)
			if err != nil {
				t.Fatal(err)
			}
			if maxPos.Less(c) {
				maxPos = c
			}
		}
	}
	a := e.checkAccount(t, u)
	if a.Held != 0 {
		t.Fatalf("held %d after every hold was captured or released", a.Held)
	}
	// The read model catches up and agrees with the write side.
	head := eventstore.Cursor{}
	for _, ev := range e.stream(t, u) {
		if head.Less(ev.Cursor) {
			head = ev.Cursor
		}
	}
	ok, err := projections.WaitFor(ctxT(t), e.pool, "balances", head, wait)
	if err != nil || !ok {
		t.Fatalf("balances did not reach %s: %v", head, err)
	}
	rm, found, err := projections.UserBalance(ctxT(t), e.pool, u)
	if err != nil || !found {
		t.Fatalf("read model: found=%v err=%v", found, err)
	}
	if rm.Balance(dailyFree) != balanceOf(a) {
		t.Fatalf("read model %+v != write side %+v", rm.Balance(dailyFree), balanceOf(a))
	}
	// Through a node whose reads wait for the projection.
	svc, err := credits.New(credits.Config{Store: e.store, Freshness: projections.NewFreshness(e.pool, runner, 10*time.Second), Clock: e.clock, DailyFree: dailyFree})
	if err != nil {
		t.Fatal(err)
	}
	b, err := svc.Balance(ctxT(t), u, maxPos.String())
	if err != nil || b != balanceOf(a) {
		t.Fatalf("Balance = %+v (%v), want %+v", b, err, balanceOf(a))
	}
	t.Logf("final %s", showAccount(a))
}
