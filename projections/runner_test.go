package projections_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/projections"
)

// noPoll leaves a runner with JetStream as its only trigger after start-up.
func noPoll(c *projections.Config) { c.PollInterval = time.Hour }

// TestExactlyOnceInFeedOrder: events published by the relay are applied
// once each, in feed order, and a late duplicate of every message (older
// than JetStream's duplicate window, so it is delivered again) changes
// nothing.
func TestExactlyOnceInFeedOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := newCounter(t, e, "exact")
	r, reg := e.newRunner(t, "node-a", []projections.Projection{c, projections.Packages()}, noPoll)
	start(t, r)
	e.consumerInfo(t, "exact")

	const n = 40
	e.appendPackages(t, n, 4)
	feed := e.feed(t, n)
	if len(feed) != n {
		t.Fatalf("feed has %d events, want %d", len(feed), n)
	}
	e.publish(t, feed, nil, "")
	last := feed[n-1].Cursor
	e.waitApplied(t, "exact", last)
	e.waitApplied(t, "packages", last)
	e.checkApplied(t, "exact", feed)
	if got := e.count(t, `SELECT count(*) FROM packages`); got != n {
		t.Errorf("packages has %d rows, want %d", got, n)
	}

	// The duplicates: new message ids, same cursors.
	e.publish(t, feed, nil, "-dup")
	eventually(t, "every duplicate delivered and acked", func() bool {
		info := e.consumerInfo(t, "exact")
		return info.Delivered.Consumer >= 2*n && info.NumAckPending == 0 && info.NumPending == 0
	})
	e.checkApplied(t, "exact", feed)
	if got := e.checkpoint(t, "exact"); got != last {
		t.Errorf("checkpoint %s after duplicates, want %s", got, last)
	}
	if got := metric(t, reg, "mana_projection_applied_total", "exact"); got != n {
		t.Errorf("applied_total = %v, want %d", got, n)
	}
}

// TestCrashBetweenCommitAndAck: a runner that dies after committing a batch
// but before acking its messages leaves them to be redelivered; the next
// runner ignores them by cursor.
func TestCrashBetweenCommitAndAck(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := newCounter(t, e, "crash")
	r1, _ := e.newRunner(t, "node-a", []projections.Projection{c}, noPoll)
	ctx, cancel := context.WithCancel(context.Background())
	crashed := make(chan eventstore.Cursor, 1)
	projections.SetAfterCommit(r1, func(name string, cur eventstore.Cursor) {
		select {
		case crashed <- cur:
			cancel() // the "kill": nothing after the commit runs
		default:
		}
	})
	done := make(chan error, 1)
	go func() { done <- r1.Run(ctx) }()
	t.Cleanup(cancel)
	e.consumerInfo(t, "crash")

	const n = 20
	e.appendPackages(t, n, 1)
	feed := e.feed(t, n)
	e.publish(t, feed, nil, "")
	var committed eventstore.Cursor
	select {
	case committed = <-crashed:
	case <-time.After(wait):
		t.Fatal("first runner committed nothing")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("first runner did not stop")
	}
	if got := e.checkpoint(t, "crash"); got != committed {
		t.Fatalf("checkpoint %s, want the crashed commit's %s", got, committed)
	}
	// Acks come only after a commit, and the crash came right after the
	// first one: every message delivered so far is still unacked.
	if info := e.consumerInfo(t, "crash"); info.NumAckPending == 0 || uint64(info.NumAckPending) != info.Delivered.Consumer {
		t.Fatalf("after the crash %d of %d delivered messages are unacked, want all", info.NumAckPending, info.Delivered.Consumer)
	}

	r2, _ := e.newRunner(t, "node-a", []projections.Projection{c}, noPoll)
	start(t, r2)
	e.waitApplied(t, "crash", feed[n-1].Cursor)
	eventually(t, "unacked messages redelivered and acked", func() bool {
		info := e.consumerInfo(t, "crash")
		// Redeliveries take consumer sequence numbers past n.
		return info.Delivered.Consumer > n && info.NumAckPending == 0 && info.NumPending == 0
	})
	e.checkApplied(t, "crash", feed)
}

// TestGapFill: with only every other message published (and no polling),
// each message makes the projection read the events it missed from the
// feed, so all are applied, in order.
func TestGapFill(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := newCounter(t, e, "gaps")
	r, _ := e.newRunner(t, "node-a", []projections.Projection{c}, noPoll)
	start(t, r)
	e.consumerInfo(t, "gaps")

	const n = 30
	e.appendPackages(t, n, 3)
	feed := e.feed(t, n)
	if sent := e.publish(t, feed, func(i int) bool { return i%2 == 1 }, ""); sent != n/2 {
		t.Fatalf("published %d", sent)
	}
	e.waitApplied(t, "gaps", feed[n-1].Cursor)
	e.checkApplied(t, "gaps", feed)
}

// TestFeedAloneConverges: without JetStream (NATS down, or messages lost)
// the periodic catch-up from the feed applies everything.
func TestFeedAloneConverges(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := newCounter(t, e, "feedonly")
	r, _ := e.newRunner(t, "node-a", []projections.Projection{c}, func(c *projections.Config) { c.JetStream = nil })
	start(t, r)
	e.appendPackages(t, 25, 5)
	feed := e.feed(t, 25)
	e.waitApplied(t, "feedonly", feed[len(feed)-1].Cursor)
	e.checkApplied(t, "feedonly", feed)
}

// TestTwoRunnersOneWriter: two runners (two nodes) on one database and one
// stream apply each event once in all; when the holder stops, the other
// takes over within a bounded time.
func TestTwoRunnersOneWriter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := newCounter(t, e, "pair")
	ra, _ := e.newRunner(t, "node-a", []projections.Projection{c}, nil)
	rb, _ := e.newRunner(t, "node-b", []projections.Projection{c}, nil)
	stops := map[string]func(){"node-a": start(t, ra), "node-b": start(t, rb)}

	e.appendPackages(t, 30, 3)
	feed := e.feed(t, 30)
	e.publish(t, feed, nil, "")
	e.waitApplied(t, "pair", feed[len(feed)-1].Cursor)
	e.checkApplied(t, "pair", feed)

	st, err := projections.Statuses(ctxT(t), e.pool, []projections.Projection{c})
	if err != nil {
		t.Fatal(err)
	}
	holder := st[0].Holder
	if stops[holder] == nil {
		t.Fatalf("holder %q is neither runner", holder)
	}
	stops[holder]()
	other := map[string]string{"node-a": "node-b", "node-b": "node-a"}[holder]

	e.appendPackages(t, 30, 3)
	feed2 := e.feed(t, 60)
	e.publish(t, feed2[len(feed):], nil, "")
	e.waitApplied(t, "pair", feed2[len(feed2)-1].Cursor)
	e.checkApplied(t, "pair", feed2)
	st, err = projections.Statuses(ctxT(t), e.pool, []projections.Projection{c})
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Holder != other {
		t.Errorf("holder after stopping %s is %q, want %s", holder, st[0].Holder, other)
	}
}

// TestPoisonEventHaltsOnlyItsProjection: a projection that cannot apply an
// event stops at it and retries, recording the failure, while another
// projection carries on; an operator's skip lets it past, and the skip is
// recorded.
func TestPoisonEventHaltsOnlyItsProjection(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, bad = 12, 5
	pkgs := e.appendPackages(t, n, 1)
	poisonID := pkgs[bad].PackageID
	c := newCounter(t, e, "poison")
	c.fail = func(ev eventstore.Decoded, _ int) error {
		if ev.StreamID == poisonID.String() {
			return fmt.Errorf("event %s: %w", ev.EventID, errRefused)
		}
		return nil
	}
	r, reg := e.newRunner(t, "node-a", []projections.Projection{projections.Packages(), c}, nil)
	start(t, r)

	feed := e.feed(t, n)
	badAt := -1
	for i, rec := range feed {
		if rec.StreamID == poisonID.String() {
			badAt = i
		}
	}
	last := feed[len(feed)-1].Cursor
	e.waitApplied(t, "packages", last)
	eventually(t, "the poison event retried", func() bool {
		return e.count(t, `SELECT coalesce(max(attempts), 0) FROM projection_failures WHERE name = 'poison'`) >= 2
	})
	if got := e.checkpoint(t, "poison"); got != feed[badAt-1].Cursor {
		t.Fatalf("poison checkpoint %s, want the event before the poison one, %s", got, feed[badAt-1].Cursor)
	}
	var (
		failCursor eventstore.Cursor
		errText    string
	)
	err := e.pool.QueryRow(ctxT(t), `SELECT tx_id, position, error FROM projection_failures
WHERE name = 'poison' AND resolution IS NULL AND event_id = $1`, feed[badAt].EventID).Scan(&failCursor.TxID, &failCursor.Position, &errText)
	if err != nil {
		t.Fatalf("failure row: %v", err)
	}
	if failCursor != feed[badAt].Cursor {
		t.Errorf("failure row at %s, want %s", failCursor, feed[badAt].Cursor)
	}
	if errText == "" {
		t.Error("failure row has no error text")
	}
	st, err := projections.Statuses(ctxT(t), e.pool, []projections.Projection{projections.Packages(), c})
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Failures != 0 || st[1].Failures != 1 || st[1].LagEvents != int64(len(feed)-badAt) || st[0].LagEvents != 0 {
		t.Errorf("statuses %+v", st)
	}
	if got := metric(t, reg, "mana_projection_failures_total", "poison"); got < 2 {
		t.Errorf("failures_total = %v, want ≥ 2", got)
	}
	if err := projections.Skip(ctxT(t), e.pool, "poison", feed[0].Cursor, "ops"); !errors.Is(err, projections.ErrAlreadyApplied) {
		t.Errorf("skip of an applied event: %v, want ErrAlreadyApplied", err)
	}
	if err := projections.Skip(ctxT(t), e.pool, "poison", eventstore.Cursor{TxID: 1, Position: 1 << 40}, "ops"); !errors.Is(err, projections.ErrNoEvent) {
		t.Errorf("skip of no event: %v, want ErrNoEvent", err)
	}

	if err := projections.Skip(ctxT(t), e.pool, "poison", feed[badAt].Cursor, "ops@example"); err != nil {
		t.Fatal(err)
	}
	e.waitApplied(t, "poison", last)
	want := append(append([]eventstore.Record{}, feed[:badAt]...), feed[badAt+1:]...)
	e.checkApplied(t, "poison", want)
	var resolution, by string
	if err := e.pool.QueryRow(ctxT(t), `SELECT resolution, skipped_by FROM projection_failures WHERE name = 'poison' AND event_id = $1`,
		feed[badAt].EventID).Scan(&resolution, &by); err != nil {
		t.Fatal(err)
	}
	if resolution != "skipped" || by != "ops@example" {
		t.Errorf("failure row resolution %q by %q", resolution, by)
	}
	st, err = projections.Statuses(ctxT(t), e.pool, []projections.Projection{c})
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Failures != 0 {
		t.Errorf("failures after skip: %+v", st[0])
	}
}

// TestRetrySucceeds: an event that fails twice and then applies is
// applied once, and its failure row says so.
func TestRetrySucceeds(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pkgs := e.appendPackages(t, 6, 1)
	flaky := pkgs[3].PackageID.String()
	c := newCounter(t, e, "flaky")
	c.fail = func(ev eventstore.Decoded, attempt int) error {
		if ev.StreamID == flaky && attempt <= 2 {
			return errRefused
		}
		return nil
	}
	r, _ := e.newRunner(t, "node-a", []projections.Projection{c}, nil)
	start(t, r)
	feed := e.feed(t, 6)
	e.waitApplied(t, "flaky", feed[len(feed)-1].Cursor)
	e.checkApplied(t, "flaky", feed)
	var (
		attempts   int
		resolution string
	)
	if err := e.pool.QueryRow(ctxT(t), `SELECT attempts, resolution FROM projection_failures WHERE name = 'flaky'`).Scan(&attempts, &resolution); err != nil {
		t.Fatal(err)
	}
	if attempts != 2 || resolution != "applied" {
		t.Errorf("failure row: %d attempts, resolution %q; want 2, applied", attempts, resolution)
	}
}

// TestStatusAndWaitFor: status reports lag before the projection runs and
// none after; WaitFor times out cleanly and then succeeds, on any node and
// through the runner's in-process wake-up.
func TestStatusAndWaitFor(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.appendPackages(t, 8, 2)
	feed := e.feed(t, 8)
	last := feed[len(feed)-1].Cursor
	pk := []projections.Projection{projections.Packages()}

	st, err := projections.Statuses(ctxT(t), e.pool, pk)
	if err != nil {
		t.Fatal(err)
	}
	if st[0].LagEvents != 8 || !st[0].Checkpoint.IsZero() || st[0].Holder != "" || st[0].LagSeconds < 0 {
		t.Errorf("status before running: %+v", st[0])
	}
	ok, err := projections.WaitFor(ctxT(t), e.pool, "packages", last, 20*time.Millisecond)
	if ok || err != nil {
		t.Errorf("WaitFor on a stopped projection = %v, %v; want false, nil", ok, err)
	}

	r, reg := e.newRunner(t, "node-a", pk, nil)
	start(t, r)
	ok, err = r.WaitFor(ctxT(t), "packages", last, wait)
	if !ok || err != nil {
		t.Fatalf("Runner.WaitFor = %v, %v", ok, err)
	}
	ok, err = projections.WaitFor(ctxT(t), e.pool, "packages", last, time.Millisecond)
	if !ok || err != nil {
		t.Errorf("WaitFor after apply = %v, %v", ok, err)
	}
	st, err = projections.Statuses(ctxT(t), e.pool, pk)
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Checkpoint != last || st[0].LagEvents != 0 || st[0].LagSeconds != 0 || st[0].Holder != "node-a" || st[0].Failures != 0 {
		t.Errorf("status after running: %+v", st[0])
	}
	if st[0].AppliedAt != feed[len(feed)-1].OccurredAt {
		t.Errorf("applied_at %v, want the last event's occurred_at %v", st[0].AppliedAt, feed[len(feed)-1].OccurredAt)
	}
	eventually(t, "checkpoint metric", func() bool {
		return metric(t, reg, "mana_projection_checkpoint_position", "packages") == float64(last.Position)
	})

	// The runner broadcasts each checkpoint it commits.
	known, advanced := r.Advanced("packages")
	if known != last {
		t.Errorf("runner knows checkpoint %s, want %s", known, last)
	}
	e.appendPackages(t, 1, 1)
	select {
	case <-advanced:
	case <-time.After(wait):
		t.Fatal("no broadcast after a new event")
	}
	f := e.feed(t, 9)
	if ok, err := r.WaitFor(ctxT(t), "packages", f[len(f)-1].Cursor, wait); !ok || err != nil {
		t.Errorf("Runner.WaitFor for a new event = %v, %v", ok, err)
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	cancel()
	if _, err := projections.WaitFor(ctx, e.pool, "packages", eventstore.Cursor{TxID: 1 << 60}, wait); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitFor on a cancelled context: %v", err)
	}
}

// TestCheckpointCompareAndSet: a batch commits only from the checkpoint it
// started at, and only while its runner holds the lease; a stale writer
// applies nothing.
func TestCheckpointCompareAndSet(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := newCounter(t, e, "cas")
	e.appendPackages(t, 5, 1)
	feed := e.feed(t, 5)
	r, _ := e.newRunner(t, "node-a", []projections.Projection{c}, nil)
	lease := e.store.Lease(projections.LeaseName("cas"), "node-a", time.Minute)
	if held, _, err := lease.TryAcquire(ctxT(t)); !held || err != nil {
		t.Fatalf("lease: %v %v", held, err)
	}

	if _, _, err := projections.ApplyBatch(r, "cas", eventstore.Cursor{}, feed[:3]); err != nil {
		t.Fatal(err)
	}
	// A writer that still believes the projection is at the start.
	moved, _, err := projections.ApplyBatch(r, "cas", eventstore.Cursor{}, feed)
	if !moved {
		t.Fatalf("stale batch: %v, want the checkpoint to have moved", err)
	}
	e.checkApplied(t, "cas", feed[:3])

	if err := lease.Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if _, lost, err := projections.ApplyBatch(r, "cas", feed[2].Cursor, feed[3:]); !lost {
		t.Fatalf("batch without the lease: %v, want lease lost", err)
	}
	e.checkApplied(t, "cas", feed[:3])

	if held, _, err := lease.TryAcquire(ctxT(t)); !held || err != nil {
		t.Fatalf("lease: %v %v", held, err)
	}
	if _, _, err := projections.ApplyBatch(r, "cas", feed[2].Cursor, feed[3:]); err != nil {
		t.Fatal(err)
	}
	e.checkApplied(t, "cas", feed)
	if got := e.checkpoint(t, "cas"); got != feed[4].Cursor {
		t.Errorf("checkpoint %s, want %s", got, feed[4].Cursor)
	}
}

// batchCounter is the counter applying batches through ApplyBatch, the
// way a BatchApplier does: the same rows, in fewer calls.
type batchCounter struct {
	*counter
	batches atomic.Int64
}

func (b *batchCounter) ApplyBatch(ctx context.Context, w *projections.Writer, evs []eventstore.Decoded) error {
	b.batches.Add(1)
	for _, ev := range evs {
		if err := b.counter.Apply(ctx, w, ev); err != nil {
			return err
		}
	}
	return nil
}

// TestBatchApplierFallsBackToFindThePoison: a batch ApplyBatch fails is
// rolled back to its savepoint and applied event by event, which applies
// the events before the poison one once each and halts on the poison one;
// after a skip the rest applies, each event once.
func TestBatchApplierFallsBackToFindThePoison(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, bad = 20, 12
	pkgs := e.appendPackages(t, n, 1)
	poisonID := pkgs[bad].PackageID
	c := &batchCounter{counter: newCounter(t, e, "batch_poison")}
	c.fail = func(ev eventstore.Decoded, _ int) error {
		if ev.StreamID == poisonID.String() {
			return fmt.Errorf("event %s: %w", ev.EventID, errRefused)
		}
		return nil
	}
	r, _ := e.newRunner(t, "node-a", []projections.Projection{c}, nil)
	start(t, r)

	feed := e.feed(t, n)
	badAt := slices.IndexFunc(feed, func(rec eventstore.Record) bool { return rec.StreamID == poisonID.String() })
	eventually(t, "the poison event retried", func() bool {
		return e.count(t, `SELECT coalesce(max(attempts), 0) FROM projection_failures WHERE name = 'batch_poison' AND event_id = $1`, feed[badAt].EventID) >= 2
	})
	if got := e.checkpoint(t, "batch_poison"); got != feed[badAt-1].Cursor {
		t.Fatalf("checkpoint %s, want the event before the poison one, %s", got, feed[badAt-1].Cursor)
	}
	e.checkApplied(t, "batch_poison", feed[:badAt])
	if c.batches.Load() == 0 {
		t.Fatal("ApplyBatch was never called")
	}
	if err := projections.Skip(ctxT(t), e.pool, "batch_poison", feed[badAt].Cursor, "ops"); err != nil {
		t.Fatal(err)
	}
	e.waitApplied(t, "batch_poison", feed[len(feed)-1].Cursor)
	e.checkApplied(t, "batch_poison", append(append([]eventstore.Record{}, feed[:badAt]...), feed[badAt+1:]...))
}
