package eventstore_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pgtest"
)

// holdOpen runs a command in the background whose transaction stays open
// until release is closed. before runs first inside the transaction; the
// append happens once appendNow is closed (nil: at once). It signals on
// appended after its events are inserted, and sends its records and error
// on done.
type heldTx struct {
	appended chan struct{}
	release  chan struct{}
	done     chan heldResult
	once     sync.Once
}

// finish lets the held transaction commit; safe to call twice.
func (h *heldTx) finish() { h.once.Do(func() { close(h.release) }) }

type heldResult struct {
	recs []eventstore.Record
	err  error
}

func holdOpen(t *testing.T, e *testEnv, stream string, before func(ctx context.Context, tx *eventstore.Tx) error, appendNow <-chan struct{}) *heldTx {
	h := &heldTx{appended: make(chan struct{}), release: make(chan struct{}), done: make(chan heldResult, 1)}
	// A failing test must not leave the transaction (and the cluster's
	// horizon) hanging.
	t.Cleanup(h.finish)
	go func() {
		var recs []eventstore.Record
		_, err := e.store.Execute(context.Background(), systemCmd("test.held"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			if before != nil {
				if err := before(ctx, tx); err != nil {
					return domain.Receipt{}, err
				}
			}
			if appendNow != nil {
				<-appendNow
			}
			var err error
			recs, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: "package", StreamID: stream, Events: []domain.Event{pkg("held")}})
			if err != nil {
				return domain.Receipt{}, err
			}
			close(h.appended)
			<-h.release
			return domain.Receipt{Status: http.StatusCreated}, nil
		})
		h.done <- heldResult{recs, err}
	}()
	return h
}

func feedAfter(t *testing.T, e *testEnv, c eventstore.Cursor) []eventstore.Record {
	t.Helper()
	recs, err := e.store.ReadFeed(ctxT(t), c, 100)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestFeedOrderUnderOpenTransactions runs on its own PostgreSQL cluster:
// the transactions it holds open would stall every other test's feed.
func TestFeedOrderUnderOpenTransactions(t *testing.T) {
	t.Parallel()
	cluster := pgtest.NewCluster(t)

	t.Run("a slow writer is delivered before later commits", func(t *testing.T) {
		e := newEnvOn(t, cluster.NewPool(t, "feed_slow"))
		base := lastCursor(t, e)

		slow := holdOpen(t, e, "slow-"+uuid.NewString(), nil, nil)
		<-slow.appended
		fast, err := e.appendOne(t, "package", "fast-"+uuid.NewString(), 0, pkg("fast"))
		if err != nil {
			t.Fatal(err)
		}
		// The fast event is committed, but the slow transaction's smaller
		// tx_id is still in flight: nothing may be delivered yet.
		if got := feedAfter(t, e, base); len(got) != 0 {
			t.Fatalf("feed delivered %d events past an open transaction", len(got))
		}
		slow.finish()
		res := <-slow.done
		if res.err != nil {
			t.Fatal(res.err)
		}
		got := feedAfter(t, e, base)
		if len(got) != 2 || got[0].EventID != res.recs[0].EventID || got[1].EventID != fast[0].EventID {
			t.Fatalf("feed = %v, want slow then fast", ids(got))
		}
	})

	t.Run("an early xid with a late insert is not skipped", func(t *testing.T) {
		e := newEnvOn(t, cluster.NewPool(t, "feed_xid"))
		base := lastCursor(t, e)

		appendNow := make(chan struct{})
		took := make(chan struct{})
		early := holdOpen(t, e, "early-"+uuid.NewString(), func(ctx context.Context, tx *eventstore.Tx) error {
			// Take an xid now by writing another table.
			_, err := tx.Exec(ctx, "INSERT INTO user_positions (user_id, tx_id, position) VALUES ($1, pg_current_xact_id(), 0)", uuid.New())
			close(took)
			return err
		}, appendNow)
		<-took
		late, err := e.appendOne(t, "package", "late-"+uuid.NewString(), 0, pkg("late"))
		if err != nil {
			t.Fatal(err)
		}
		close(appendNow)
		<-early.appended
		if got := feedAfter(t, e, base); len(got) != 0 {
			t.Fatalf("feed delivered %v while an older transaction was open", ids(got))
		}
		early.finish()
		res := <-early.done
		if res.err != nil {
			t.Fatal(res.err)
		}
		if res.recs[0].Position <= late[0].Position {
			t.Fatalf("setup: early insert position %d not after late %d", res.recs[0].Position, late[0].Position)
		}
		got := feedAfter(t, e, base)
		if len(got) != 2 || got[0].EventID != res.recs[0].EventID || got[1].EventID != late[0].EventID {
			t.Fatalf("feed = %v, want early (smaller tx_id) then late", ids(got))
		}
		// Paging from the late event's cursor finds nothing left: a reader
		// ordered by bare positions would have delivered late first and
		// skipped early for good.
		if rest := feedAfter(t, e, got[1].Cursor); len(rest) != 0 {
			t.Fatalf("feed after the last cursor = %v", ids(rest))
		}
	})
}

func lastCursor(t *testing.T, e *testEnv) eventstore.Cursor {
	t.Helper()
	var c eventstore.Cursor
	for {
		recs := feedAfter(t, e, c)
		if len(recs) == 0 {
			return c
		}
		c = recs[len(recs)-1].Cursor
	}
}

func ids(recs []eventstore.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.StreamID + "@" + r.Cursor.String()
	}
	return out
}

func TestFeedPagesInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var want []uuid.UUID
	for i := 0; i < 5; i++ {
		recs, err := e.appendOne(t, "package", uuid.NewString(), 0, pkg("a"), pkg("b"))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			want = append(want, r.EventID)
		}
	}
	var got []uuid.UUID
	var c eventstore.Cursor
	// Other tests share this server and may hold transactions briefly;
	// poll, bounded in time, until everything is below the horizon.
	deadline := time.Now().Add(30 * time.Second)
	for len(got) < len(want) && time.Now().Before(deadline) {
		recs, err := e.store.ReadFeed(ctxT(t), c, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		for _, r := range recs {
			if !c.Less(r.Cursor) {
				t.Fatalf("cursor went backwards: %s after %s", r.Cursor, c)
			}
			c = r.Cursor
			got = append(got, r.EventID)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("feed delivered %d of %d events", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("event %d: got %s want %s", i, got[i], want[i])
		}
	}
	parsed, err := eventstore.ParseCursor(c.String())
	if err != nil || parsed != c {
		t.Fatalf("cursor round trip: %v %v", parsed, err)
	}
}
