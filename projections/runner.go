package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pg"
)

// Runner defaults.
const (
	// DefaultPollInterval is how often a projection catches up from the
	// PostgreSQL feed on its own, whatever JetStream delivers.
	DefaultPollInterval = time.Second
	// DefaultBatchSize bounds the events applied in one transaction.
	DefaultBatchSize = 500
	// DefaultAckWait is how long JetStream waits for an ack before it
	// redelivers a message to the consumer.
	DefaultAckWait = 30 * time.Second
)

// Poison events are retried with exponential backoff between these bounds.
const (
	minRetryDelay = 100 * time.Millisecond
	maxRetryDelay = 30 * time.Second
	// maxInfraDelay caps the pause after a database error.
	maxInfraDelay = 5 * time.Second
)

// Config configures a Runner.
type Config struct {
	// Store reads the feed and decodes events; its pool is where the read
	// models, checkpoints and leases live.
	Store *eventstore.Store
	// JetStream delivers the relay's messages, which wake a projection as
	// soon as an event is published. Nil runs on the PostgreSQL feed alone
	// (every PollInterval).
	JetStream jetstream.JetStream
	// Projections to run, each independently. Names must be unique.
	Projections []Projection
	// Holder identifies this process in the leases table; it must be
	// unique per process (e.g. hostname:pid:random).
	Holder string
	// Logger receives one line per state change; it never gets personal
	// data. Nil discards.
	Logger *slog.Logger
	// Registerer receives the mana_projection_* metrics; nil registers
	// none. Runners may share one registry.
	Registerer prometheus.Registerer
	// LeaseTTL is how long a projection's lease outlives its last renewal;
	// eventstore.DefaultLeaseTTL (10s) when zero.
	LeaseTTL time.Duration
	// PollInterval is how often each projection catches up from the feed
	// regardless of messages; DefaultPollInterval when zero.
	PollInterval time.Duration
	// BatchSize bounds the events of one transaction; DefaultBatchSize
	// when zero.
	BatchSize int
	// AckWait is the consumers' ack wait; DefaultAckWait when zero.
	AckWait time.Duration
}

// Runner runs projections: each in its own goroutine, under its own lease
// ("projection:NAME"), fed by its own durable JetStream consumer
// ("proj_NAME", filter mana.events.>, explicit acks, deliver all) and by
// the PostgreSQL feed.
//
// A message is only a wake-up call. Its Mana-Cursor C is compared with the
// checkpoint: at or below it the message is acked and ignored; above it
// the projection reads (checkpoint, C] from the feed (normally just the
// message's own event, when Mana-Prev-Cursor is the checkpoint; more after
// a lost or filtered message) and applies the events in feed order, in
// batches of one transaction each that also advances the checkpoint with a
// compare-and-set. Messages are acked after the commit. Every PollInterval
// the projection also catches up to the head of the feed, so it converges
// when a message is lost or NATS is down; it does not stop at the relay's
// checkpoint, since the feed, not the stream, is the source of truth and is
// already safe to read to its head.
//
// A poison event (one that fails to decode or apply) halts its projection,
// which retries it with backoff from 100ms to 30s, upserting a
// projection_failures row and counting mana_projection_failures_total
// each time, until it applies (the row is marked applied) or an operator
// skips it (see Skip). The other projections continue.
type Runner struct {
	store      *eventstore.Store
	js         jetstream.JetStream
	log        *slog.Logger
	metrics    *metrics
	poll       time.Duration
	batch      int
	ackWait    time.Duration
	projectors []*projector
	byName     map[string]*projector

	// afterCommit, when set, runs after each batch commits and before its
	// messages are acked (tests simulate a crash there).
	afterCommit func(name string, c eventstore.Cursor)
}

// NewRunner returns a Runner for cfg. It fails when Store, Holder or the
// projections are missing, or two projections share a name.
func NewRunner(cfg Config) (*Runner, error) {
	if cfg.Store == nil {
		return nil, errors.New("projections: runner needs a store")
	}
	if cfg.Holder == "" {
		return nil, errors.New("projections: runner needs a holder id")
	}
	if len(cfg.Projections) == 0 {
		return nil, errors.New("projections: runner needs projections")
	}
	r := &Runner{
		store:   cfg.Store,
		js:      cfg.JetStream,
		log:     cfg.Logger,
		metrics: newMetrics(cfg.Registerer),
		poll:    cfg.PollInterval,
		batch:   cfg.BatchSize,
		ackWait: cfg.AckWait,
		byName:  map[string]*projector{},
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.poll <= 0 {
		r.poll = DefaultPollInterval
	}
	if r.batch <= 0 {
		r.batch = DefaultBatchSize
	}
	if r.ackWait <= 0 {
		r.ackWait = DefaultAckWait
	}
	for _, p := range cfg.Projections {
		name := p.Name()
		if name == "" || strings.ContainsAny(name, " \t\r\n.*>") {
			return nil, fmt.Errorf("projections: bad projection name %q", name)
		}
		if r.byName[name] != nil {
			return nil, fmt.Errorf("projections: projection %q given twice", name)
		}
		lease := cfg.Store.Lease(LeaseName(name), cfg.Holder, cfg.LeaseTTL)
		pr := &projector{r: r, name: name, lease: lease, apply: newApplier(cfg.Store, p, lease, ""),
			log: r.log.With("projection", name), watch: newWatch()}
		r.projectors = append(r.projectors, pr)
		r.byName[name] = pr
		// The counters exist at zero from the start, so that an alert on
		// increase() fires on a projection's first failure too.
		r.metrics.failures.WithLabelValues(name)
		r.metrics.applied.WithLabelValues(name)
	}
	return r, nil
}

// Run runs every projection until ctx ends, then releases their leases and
// returns nil. A projection whose lease another process holds waits for it,
// logging once who holds it. Run returns early only on an error no retry can
// fix. Call it once at a time.
func (r *Runner) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(r.projectors))
	for i, pr := range r.projectors {
		wg.Go(func() {
			errs[i] = pr.lease.Run(ctx, pr.work, func(holder string) {
				pr.log.Info("projection idle: lease held by another process", "holder", holder)
			})
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// projector runs one projection.
type projector struct {
	r     *Runner
	name  string
	lease *eventstore.Lease
	apply *applier
	log   *slog.Logger
	watch *watch

	// cp is how far the projection got; stored is the checkpoint in the
	// database. cp runs ahead of stored by events the projection does not
	// handle, passed without a transaction and saved by savePassed shortly
	// after: on a crash they are passed again, which changes nothing.
	cp         checkpoint // owned by work
	stored     eventstore.Cursor
	retryDelay time.Duration // next poison retry delay; zero when healthy
}

// passedSaveDelay is how soon after passing events the projection does not
// handle their checkpoint reaches the database; until then only this
// process's waits see it (other nodes' read-your-writes waits poll the
// database). One write per projection per interval instead of one per
// event.
const passedSaveDelay = 100 * time.Millisecond

// work runs the projection while this process holds its lease. It returns
// nil when ctx ends or the lease is lost; every other error is logged and
// retried, so a database or NATS outage never stops the projection for
// good.
func (p *projector) work(ctx context.Context) error {
	defer p.r.metrics.forget(p.name)
	for {
		cp, err := loadCheckpoint(ctx, p.r.store.Pool(), p.name)
		if err == nil {
			p.cp, p.stored = cp, cp.cursor
			break
		}
		p.log.Warn("projection cannot load its checkpoint", "err", err)
		if !sleep(ctx, p.r.poll) {
			return nil
		}
	}
	p.watch.advance(p.cp.cursor)
	p.log.Info("projection running", "checkpoint", p.cp.cursor.String())

	sub := &subscription{}
	defer sub.stop()
	tick := time.NewTicker(p.r.poll)
	defer tick.Stop()
	var save <-chan time.Time // armed while passed events wait to be saved
	infraDelay := time.Duration(0)
	// The first round catches up from the feed before consuming, so
	// messages meet a projection that is already at the head.
	now := true
	for {
		var (
			msgs   []jetstream.Msg
			target *eventstore.Cursor // nil: the head of the feed
		)
		if !now {
			select {
			case <-ctx.Done():
				return nil
			case m := <-sub.msgs:
				msgs, target = p.collect(m, sub.msgs)
				if target == nil {
					continue
				}
			case <-save:
				save = nil
				if err := p.savePassed(ctx); errors.Is(err, errLeaseLost) {
					p.log.Info("projection paused: lease lost")
					return nil
				} else if err != nil && ctx.Err() == nil {
					p.log.Warn("projection cannot save its checkpoint; retrying", "err", err)
				}
				continue
			case <-tick.C:
			}
		}
		now = false
		err := p.catchUp(ctx, target, msgs)
		if save == nil && p.stored != p.cp.cursor {
			save = time.After(passedSaveDelay)
		}
		switch {
		case errors.Is(err, errLeaseLost):
			p.log.Info("projection paused: lease lost")
			return nil
		case ctx.Err() != nil:
			// Leave the messages unacked: they come back to whoever
			// holds the lease next and are ignored by cursor.
			return nil
		case err != nil:
			infraDelay = min(max(2*infraDelay, minRetryDelay), maxInfraDelay)
			p.log.Warn("projection catch-up failed; retrying", "err", err, "retry_in", infraDelay)
			if !sleep(ctx, infraDelay) {
				return nil
			}
			now = true
			continue
		}
		infraDelay = 0
		// After a successful catch-up every message is at or below the
		// checkpoint, or names an event the feed does not show (yet); the
		// periodic catch-up applies that one, so the message is not
		// needed either.
		for _, m := range msgs {
			_ = m.Ack()
		}
		if target == nil {
			p.reportLag(ctx)
		}
		if sub.broken.Load() {
			p.log.Warn("projection consumer gone; declaring it again")
			sub.stop()
		}
		if sub.msgs == nil && p.r.js != nil {
			p.subscribe(ctx, sub)
		}
	}
}

// collect drains the messages already delivered (up to a batch) after m,
// acks and drops those at or below the checkpoint, and returns the rest
// with the greatest cursor among them (nil when none is left).
func (p *projector) collect(m jetstream.Msg, more <-chan jetstream.Msg) ([]jetstream.Msg, *eventstore.Cursor) {
	var (
		keep   []jetstream.Msg
		target *eventstore.Cursor
	)
	for n := 0; ; n++ {
		c, err := eventstore.ParseCursor(m.Headers().Get(eventstore.HeaderCursor))
		switch {
		case err != nil || c.IsZero():
			p.log.Warn("projection dropping a message without a valid cursor", "subject", m.Subject())
			_ = m.Term()
		case !p.cp.cursor.Less(c):
			_ = m.Ack()
		default:
			keep = append(keep, m)
			if target == nil || target.Less(c) {
				target = &c
			}
		}
		if n+1 >= p.r.batch {
			return keep, target
		}
		select {
		case m = <-more:
		default:
			return keep, target
		}
	}
}

// catchUp applies the feed after the checkpoint up to target (the head of
// the feed when nil), batch by batch. msgs, the messages that woke it, are
// its first batch when they carry the events right after the checkpoint
// without a gap; otherwise it reads the feed. It blocks on a poison event,
// retrying it, until it applies or is skipped. It returns errLeaseLost,
// ctx's error, or an infrastructure error.
func (p *projector) catchUp(ctx context.Context, target *eventstore.Cursor, msgs []jetstream.Msg) error {
	for {
		recs := p.chain(msgs)
		msgs = nil
		if recs == nil {
			var err error
			if recs, err = p.r.store.ReadFeed(ctx, p.cp.cursor, p.r.batch); err != nil {
				return err
			}
		}
		if target != nil {
			n := 0
			for n < len(recs) && !target.Less(recs[n].Cursor) {
				n++
			}
			recs = recs[:n]
		}
		if len(recs) == 0 {
			return nil
		}
		for len(recs) > 0 {
			err := p.applyBatch(ctx, recs)
			var poison *poisonError
			switch {
			case err == nil:
				p.retryDelay = 0
				recs = nil
				if target != nil && !p.cp.cursor.Less(*target) {
					// Reached what the messages named: no feed read
					// to find that nothing follows.
					return nil
				}
			case errors.As(err, &poison) && poison.index > 0:
				// Commit what comes before the poison event first; the
				// event's own retry comes right after.
				p.recordFailure(ctx, poison)
				recs = recs[:poison.index]
			case errors.As(err, &poison):
				p.recordFailure(ctx, poison)
				if !sleep(ctx, p.retryDelay) {
					return ctx.Err()
				}
				recs = nil // re-read: an operator may have skipped it
			case errors.Is(err, errCheckpointMoved):
				if err := p.reloadCheckpoint(ctx); err != nil {
					return err
				}
				recs = nil
			default:
				return err
			}
		}
	}
}

// applyBatch applies recs and advances the checkpoint to the last of them
// in one transaction. A batch without an event the projection handles
// needs no transaction: the checkpoint moves in memory, and savePassed
// stores it.
func (p *projector) applyBatch(ctx context.Context, recs []eventstore.Record) error {
	old, last := p.stored, recs[len(recs)-1]
	if !p.apply.handlesAny(recs) {
		p.cp = checkpoint{cursor: last.Cursor, appliedAt: last.OccurredAt}
		p.r.metrics.checkpoint.WithLabelValues(p.name).Set(float64(last.Position))
		p.watch.advance(last.Cursor)
		return nil
	}
	n, err := p.apply.apply(ctx, p.cp.cursor, recs, func(ctx context.Context, tx pgx.Tx) error {
		return advanceCheckpoint(ctx, tx, p.name, old, last)
	})
	if err != nil {
		return err
	}
	p.cp, p.stored = checkpoint{cursor: last.Cursor, appliedAt: last.OccurredAt}, last.Cursor
	p.r.metrics.applied.WithLabelValues(p.name).Add(float64(n))
	p.r.metrics.checkpoint.WithLabelValues(p.name).Set(float64(last.Position))
	p.watch.advance(last.Cursor)
	if p.r.afterCommit != nil {
		p.r.afterCommit(p.name, last.Cursor)
	}
	return nil
}

// savePassed stores the checkpoint of events passed in memory, under the
// lease, with the same compare-and-set as a batch.
func (p *projector) savePassed(ctx context.Context) error {
	if p.stored == p.cp.cursor {
		return nil
	}
	next := eventstore.Record{Cursor: p.cp.cursor, OccurredAt: p.cp.appliedAt}
	err := pg.InTx(ctx, p.r.store.Pool(), asProjector, func(tx pgx.Tx) error {
		held, err := p.lease.HeldIn(ctx, tx)
		if err != nil {
			return fmt.Errorf("check lease: %w", err)
		}
		if !held {
			return errLeaseLost
		}
		return advanceCheckpoint(ctx, tx, p.name, p.stored, next)
	})
	if errors.Is(err, errCheckpointMoved) {
		return p.reloadCheckpoint(ctx)
	}
	if err != nil {
		return err
	}
	p.stored = next.Cursor
	return nil
}

// reloadCheckpoint takes the stored checkpoint after another writer (a
// holder before this one, a rebuild's swap) moved it.
func (p *projector) reloadCheckpoint(ctx context.Context) error {
	cp, err := loadCheckpoint(ctx, p.r.store.Pool(), p.name)
	if err != nil {
		return err
	}
	p.log.Info("projection checkpoint moved by another writer", "from", p.cp.cursor.String(), "to", cp.cursor.String())
	p.cp, p.stored = cp, cp.cursor
	p.watch.advance(cp.cursor)
	return nil
}

// chain returns the events msgs carry when they follow the checkpoint
// without a gap, each message's Mana-Prev-Cursor naming the one before (the
// relay publishes the feed in order, so they are the feed's next events);
// nil otherwise, and the caller reads the feed.
func (p *projector) chain(msgs []jetstream.Msg) []eventstore.Record {
	if len(msgs) == 0 {
		return nil
	}
	recs := make([]eventstore.Record, 0, len(msgs))
	at := p.cp.cursor
	for _, m := range msgs {
		prev, err := eventstore.ParseCursor(m.Headers().Get(eventstore.HeaderPrevCursor))
		if err != nil || prev != at {
			return nil
		}
		var line eventstore.EventLine
		if err := json.Unmarshal(m.Data(), &line); err != nil {
			return nil
		}
		rec, err := line.Record()
		if err != nil || !at.Less(rec.Cursor) {
			return nil
		}
		recs = append(recs, rec)
		at = rec.Cursor
	}
	return recs
}

// recordFailure records a failed attempt at a poison event and grows the
// backoff before the next one.
func (p *projector) recordFailure(ctx context.Context, poison *poisonError) {
	p.retryDelay = min(max(2*p.retryDelay, minRetryDelay), maxRetryDelay)
	p.r.metrics.failures.WithLabelValues(p.name).Inc()
	attempts, err := recordFailure(ctx, p.r.store.Pool(), p.name, poison.rec, poison.err)
	if err != nil && ctx.Err() == nil {
		p.log.Warn("projection cannot record a failure", "err", err)
	}
	p.log.Error("projection halted on a poison event; retrying",
		"cursor", poison.rec.Cursor.String(), "event_id", poison.rec.EventID, "event_type", poison.rec.EventType,
		"attempts", attempts, "retry_in", p.retryDelay, "err", poison.err)
}

// reportLag refreshes the lag gauges.
func (p *projector) reportLag(ctx context.Context) {
	events, seconds, err := lag(ctx, p.r.store.Pool(), p.cp)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("projection cannot measure its lag", "err", err)
		}
		return
	}
	p.r.metrics.lagEvents.WithLabelValues(p.name).Set(float64(events))
	p.r.metrics.lagSeconds.WithLabelValues(p.name).Set(seconds)
	p.r.metrics.checkpoint.WithLabelValues(p.name).Set(float64(p.cp.cursor.Position))
}

// subscription forwards a consumer's messages to msgs.
type subscription struct {
	msgs   chan jetstream.Msg
	cc     jetstream.ConsumeContext
	done   chan struct{}
	warned bool
	// broken is set when the server deleted the consumer: Consume does
	// not recover from that, so work declares it again.
	broken atomic.Bool
}

func (s *subscription) stop() {
	if s.cc != nil {
		s.cc.Stop()
		close(s.done)
		s.cc, s.msgs = nil, nil
	}
	s.broken.Store(false)
}

// subscribe declares the projection's durable consumer and starts
// consuming it into sub. When NATS is unreachable it logs once and leaves
// sub empty; the caller tries again on its next round and meanwhile the
// projection runs on the feed alone.
func (p *projector) subscribe(ctx context.Context, sub *subscription) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cons, err := p.r.js.CreateOrUpdateConsumer(cctx, natsx.StreamName, jetstream.ConsumerConfig{
		Durable:       ConsumerName(p.name),
		FilterSubject: natsx.SubjectPrefix + ">",
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       p.r.ackWait,
		MaxAckPending: 4 * p.r.batch,
	})
	if err == nil {
		msgs, done := make(chan jetstream.Msg, p.r.batch), make(chan struct{})
		var cc jetstream.ConsumeContext
		cc, err = cons.Consume(func(m jetstream.Msg) {
			select {
			case msgs <- m:
			case <-done:
			}
		}, jetstream.PullMaxMessages(p.r.batch), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				sub.broken.Store(true)
			}
			p.log.Debug("projection consumer error", "err", err)
		}))
		if err == nil {
			sub.msgs, sub.cc, sub.done = msgs, cc, done
			if sub.warned {
				p.log.Info("projection consuming JetStream again")
			}
			sub.warned = false
			return
		}
	}
	if !sub.warned && ctx.Err() == nil {
		p.log.Warn("projection cannot consume JetStream; following the PostgreSQL feed only", "err", err)
		sub.warned = true
	}
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
