package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore/internal/db"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pg"
)

// RelayLeaseName is the lease the relay runs under, and the name of its row
// in relay_checkpoints.
const RelayLeaseName = "relay"

// Relay defaults.
const (
	DefaultRelayBatchSize    = 500
	DefaultRelayPollInterval = 50 * time.Millisecond
	DefaultRelayAckTimeout   = 5 * time.Second
	// RelayLagCap bounds the count behind mana_relay_lag_events and
	// RelayStatus.LagEvents: a backlog larger than this reads as this.
	RelayLagCap = 100_000
)

const (
	relayMinBackoff = 100 * time.Millisecond
	relayMaxBackoff = 2 * time.Second
	// relayLagEvery throttles the lag count while the relay has a backlog.
	relayLagEvery = time.Second
	// jsErrWrongLastMsgID is JetStream's answer to a message whose
	// Nats-Expected-Last-Msg-Id is not the stream's last message id.
	jsErrWrongLastMsgID jetstream.ErrorCode = 10070
)

// RelayOptions configures a Relay. The zero value works.
type RelayOptions struct {
	// Holder identifies this process in the relay lease; unique per process.
	// Default: "<hostname>:<pid>:<random>".
	Holder string
	// Logger receives the relay's logs; slog.Default() when nil.
	Logger *slog.Logger
	// Registerer receives the relay's metrics; none are registered when nil.
	// Relays sharing a Registerer share the metrics.
	Registerer prometheus.Registerer
	// BatchSize is how many events one feed read returns and one round of
	// publishes carries; DefaultRelayBatchSize when zero.
	BatchSize int
	// PollInterval is how long the relay sleeps when it has caught up,
	// unless Notify wakes it first; DefaultRelayPollInterval when zero. The
	// relay polls rather than LISTENs so it works through PgBouncer.
	PollInterval time.Duration
	// AckTimeout bounds the wait for JetStream's acks of one round;
	// DefaultRelayAckTimeout when zero.
	AckTimeout time.Duration
	// LeaseTTL is the relay lease's TTL: how long a crashed holder blocks a
	// takeover. DefaultLeaseTTL when zero.
	LeaseTTL time.Duration
	// Clock measures mana_relay_lag_seconds against occurred_at; the store's
	// clock when nil.
	Clock domain.Clock
}

// Relay publishes the event log to the JetStream stream MANA_EVENTS,
// strictly in feed order, the events table being its outbox. Each message
// goes to mana.events.<event_type> with the event's public JSON line as
// data and the headers Nats-Msg-Id (event id, so JetStream drops
// republished duplicates), Mana-Cursor and Mana-Prev-Cursor (the previous
// event in the feed, "0-0" before the first). Each message also carries
// Nats-Expected-Last-Msg-Id, the previous event's id, so JetStream refuses a
// message whose predecessor it does not hold: after a failed publish no
// later event can overtake the lost one, and the stream holds the events in
// feed order.
//
// The relay's checkpoint (relay_checkpoints 'relay') is the cursor of the
// last event JetStream acknowledged; it advances over the acknowledged
// prefix of each round only, and on any error the relay backs off and
// republishes from the first unacknowledged event. Appends never wait for
// the relay or for NATS.
//
// Only the holder of the "relay" lease publishes (Run). A Relay's methods
// are safe for concurrent use, except that Run must not run twice at once.
type Relay struct {
	store   *Store
	js      jetstream.JetStream
	nc      *nats.Conn
	holder  string
	log     *slog.Logger
	clock   domain.Clock
	batch   int
	poll    time.Duration
	ackWait time.Duration
	ttl     time.Duration
	wake    chan struct{}
	m       *relayMetrics

	mu      sync.Mutex
	active  bool
	lastErr string
	lagAt   time.Time
}

// NewRelay returns a relay that publishes through js's connection. It keeps
// its own JetStream context on that connection (same domain or API prefix),
// with a publish-ack timeout of AckTimeout, so its pending acks are its
// own. It does not start; call Run.
func (s *Store) NewRelay(js jetstream.JetStream, opts RelayOptions) *Relay {
	r := &Relay{
		store: s, nc: js.Conn(), holder: opts.Holder, log: opts.Logger, clock: opts.Clock,
		batch: opts.BatchSize, poll: opts.PollInterval, ackWait: opts.AckTimeout, ttl: opts.LeaseTTL,
		wake: make(chan struct{}, 1),
	}
	if r.holder == "" {
		host, _ := os.Hostname()
		r.holder = fmt.Sprintf("%s:%d:%s", host, os.Getpid(), uuid.NewString()[:8])
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.log = r.log.With("component", "relay")
	if r.clock == nil {
		r.clock = s.clock
	}
	if r.batch <= 0 {
		r.batch = DefaultRelayBatchSize
	}
	if r.poll <= 0 {
		r.poll = DefaultRelayPollInterval
	}
	if r.ackWait <= 0 {
		r.ackWait = DefaultRelayAckTimeout
	}
	r.js = privatePublisher(js, r.ackWait, max(4*r.batch, 4000))
	r.m = newRelayMetrics(opts.Registerer, r.log)
	return r
}

// privatePublisher returns a JetStream context on js's connection whose
// async publishes time out after ackWait, so an ack that never comes cannot
// pin a pending slot forever, and whose pending count no other publisher
// shares. It falls back to js itself if the options are refused.
func privatePublisher(js jetstream.JetStream, ackWait time.Duration, maxPending int) jetstream.JetStream {
	o := js.Options()
	opts := []jetstream.JetStreamOpt{
		jetstream.WithPublishAsyncTimeout(ackWait),
		jetstream.WithPublishAsyncMaxPending(maxPending),
	}
	if o.DefaultTimeout > 0 {
		opts = append(opts, jetstream.WithDefaultTimeout(o.DefaultTimeout))
	}
	var (
		p   jetstream.JetStream
		err error
	)
	switch {
	case o.Domain != "":
		p, err = jetstream.NewWithDomain(js.Conn(), o.Domain, opts...)
	case o.APIPrefix != "":
		p, err = jetstream.NewWithAPIPrefix(js.Conn(), o.APIPrefix, opts...)
	default:
		p, err = jetstream.New(js.Conn(), opts...)
	}
	if err != nil {
		return js
	}
	return p
}

// Holder returns the identity the relay holds its lease under.
func (r *Relay) Holder() string { return r.holder }

// Notify wakes the relay if it is idle, so an event appended on this node is
// published without waiting for the next poll. It never blocks; wake-ups
// coalesce.
func (r *Relay) Notify() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run publishes events while this process holds the relay lease, and waits
// for the lease otherwise (logging once, at info, who holds it). It returns
// nil when ctx ends, after saving the checkpoint of what JetStream has
// acknowledged and releasing the lease. Errors of PostgreSQL or NATS are
// logged and retried with a bounded, jittered backoff, never returned.
func (r *Relay) Run(ctx context.Context) error {
	lease := r.store.Lease(RelayLeaseName, r.holder, r.ttl)
	return lease.Run(ctx, func(ctx context.Context) error {
		r.lead(ctx, lease)
		return nil
	}, func(holder string) {
		if holder == "" {
			holder = "another process"
		}
		r.log.Info("relay lease held by "+holder, "holder", holder)
	})
}

// relayPos is where the relay stands: the checkpoint and the id of the event
// at it. chained says whether the next message may require that id as the
// stream's last; it is false at the start of the feed and when the stream's
// tail is unknown (a new or emptied stream).
type relayPos struct {
	cp      Cursor
	lastID  uuid.UUID
	chained bool
}

// lead publishes until ctx ends or the lease is lost.
func (r *Relay) lead(ctx context.Context, lease *Lease) {
	r.setActive(true)
	defer r.setActive(false)
	var bo relayBackoff

	var pos relayPos
	for {
		var err error
		if pos, err = r.loadPos(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		r.fail("checkpoint", "load relay checkpoint", err)
		if !sleepCtx(ctx, bo.next()) {
			return
		}
	}
	r.log.Info("relay publishing", "holder", r.holder, "checkpoint", pos.cp.String())
	r.m.checkpoint.Set(float64(pos.cp.Position))

	for ctx.Err() == nil {
		batch, err := r.store.ReadFeed(ctx, pos.cp, r.batch)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.fail("feed", "read feed", err)
			r.observeLag(ctx, pos.cp, false)
			sleepCtx(ctx, bo.next())
			continue
		}
		if len(batch) == 0 {
			r.caughtUp()
			r.idle(ctx)
			continue
		}
		r.m.lagSeconds.Set(max(0, r.clock.Now().Sub(batch[0].OccurredAt).Seconds()))

		acked, dups, pubErr := r.publish(ctx, pos, batch)
		r.m.published.Add(float64(acked))
		r.m.duplicates.Add(float64(dups))
		if acked > 0 {
			last := batch[acked-1]
			next := relayPos{cp: last.Cursor, lastID: last.EventID, chained: true}
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			held, err := r.saveCheckpoint(sctx, lease, next.cp)
			cancel()
			switch {
			case err != nil:
				// Republished from the old checkpoint next time;
				// JetStream drops the duplicates.
				r.fail("checkpoint", "save relay checkpoint", err)
				sleepCtx(ctx, bo.next())
				continue
			case !held:
				r.log.Warn("relay lease lost; stopping", "checkpoint", pos.cp.String())
				return
			}
			pos = next
			r.m.checkpoint.Set(float64(pos.cp.Position))
		}
		if ctx.Err() != nil {
			return
		}
		if pubErr != nil {
			if acked < len(batch) {
				r.m.lagSeconds.Set(max(0, r.clock.Now().Sub(batch[acked].OccurredAt).Seconds()))
			}
			r.observeLag(ctx, pos.cp, false)
			r.fail("publish", "publish events", pubErr)
			if tail, ok := wrongLastMsgID(pubErr); ok {
				pos = r.resync(ctx, lease, pos, tail)
			}
			sleepCtx(ctx, bo.next())
			continue
		}
		bo.reset()
		r.clearErr()
		if len(batch) < r.batch {
			r.caughtUp()
			r.idle(ctx)
			continue
		}
		r.observeLag(ctx, pos.cp, false)
	}
}

// publish sends batch asynchronously, in order, and waits for JetStream's
// acks. It returns how many messages from the start of batch JetStream
// acknowledged, how many of those it had already held (duplicates), and the
// first error. Messages after the first failure do not count even if
// acknowledged: they are republished and dropped as duplicates.
func (r *Relay) publish(ctx context.Context, pos relayPos, batch []Record) (acked, dups int, err error) {
	if !r.nc.IsConnected() {
		return 0, 0, fmt.Errorf("NATS connection %s", r.nc.Status())
	}
	futures := make([]jetstream.PubAckFuture, 0, len(batch))
	prev, prevID, chained := pos.cp, pos.lastID, pos.chained
	var sendErr error
	for _, rec := range batch {
		m, err := relayMsg(rec, prev, prevID, chained)
		if err != nil {
			sendErr = err
			break
		}
		f, err := r.js.PublishMsgAsync(m)
		if err != nil {
			sendErr = fmt.Errorf("publish %s: %w", rec.Cursor, err)
			break
		}
		futures = append(futures, f)
		prev, prevID, chained = rec.Cursor, rec.EventID, true
	}
	// The publisher times each ack out after ackWait; this bound only
	// guards against a future that never resolves.
	deadline := time.NewTimer(r.ackWait + time.Second)
	defer deadline.Stop()
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			acked++
			if ack.Duplicate {
				dups++
			}
		case err := <-f.Err():
			return acked, dups, fmt.Errorf("publish %s: %w", batch[i].Cursor, err)
		case <-deadline.C:
			return acked, dups, fmt.Errorf("publish %s: %w", batch[i].Cursor, jetstream.ErrAsyncPublishTimeout)
		case <-ctx.Done():
			return acked, dups, ctx.Err()
		}
	}
	return acked, dups, sendErr
}

// relayMsg builds rec's message. prev is the previous event in the feed;
// when chained, JetStream must hold prevID as its last message id.
func relayMsg(rec Record, prev Cursor, prevID uuid.UUID, chained bool) (*nats.Msg, error) {
	data, err := json.Marshal(rec.Line())
	if err != nil {
		return nil, fmt.Errorf("encode event %s: %w", rec.EventID, err)
	}
	m := nats.NewMsg(natsx.SubjectPrefix + rec.EventType)
	m.Data = data
	m.Header.Set(HeaderMsgID, rec.EventID.String())
	m.Header.Set(HeaderCursor, rec.Cursor.String())
	m.Header.Set(HeaderPrevCursor, prev.String())
	if chained {
		m.Header.Set(jetstream.ExpectedLastMsgIDHeader, prevID.String())
	}
	return m, nil
}

// wrongLastMsgID reports whether err is JetStream refusing a message because
// its last message id differs from the expected one, and returns the
// stream's actual last id ("" for an empty stream or none known).
func wrongLastMsgID(err error) (string, bool) {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != jsErrWrongLastMsgID {
		return "", false
	}
	_, id, _ := strings.Cut(apiErr.Description, ":")
	return strings.TrimSpace(id), true
}

// resync re-anchors the relay on the stream's tail after JetStream said its
// last message is tail, not the relay's checkpoint event. If tail is an
// event of the log, everything up to it is in the stream (each message
// required its predecessor), so the checkpoint moves there: forward when a
// previous holder's acks were lost, back when JetStream lost acknowledged
// messages (its acks are not fsynced). An unknown tail (a new, purged or
// foreign stream) restarts the chain at the checkpoint.
func (r *Relay) resync(ctx context.Context, lease *Lease, pos relayPos, tail string) relayPos {
	id, err := uuid.Parse(tail)
	var c Cursor
	if err == nil {
		c, err = r.eventCursor(ctx, id)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			// Unsure: try again on the next round.
			return pos
		}
	}
	if err != nil {
		r.log.Warn("JetStream stream's last message is not a known event; publishing from the checkpoint without a predecessor",
			"stream_last_msg_id", tail, "checkpoint", pos.cp.String())
		pos.chained = false
		return pos
	}
	if c == pos.cp {
		return pos
	}
	held, err := r.saveCheckpoint(ctx, lease, c)
	if err != nil || !held {
		// Try again on the next round.
		return pos
	}
	r.log.Warn("relay checkpoint moved to the JetStream stream's last event",
		"from", pos.cp.String(), "to", c.String())
	r.m.checkpoint.Set(float64(c.Position))
	return relayPos{cp: c, lastID: id, chained: true}
}

func (r *Relay) loadPos(ctx context.Context) (relayPos, error) {
	var pos relayPos
	err := pg.InTx(ctx, r.store.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		q := db.New(tx)
		row, err := q.RelayCheckpointGet(ctx, RelayLeaseName)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		pos.cp = Cursor{TxID: row.TxID, Position: row.Position}
		id, err := q.RelayEventIDAt(ctx, db.RelayEventIDAtParams{TxID: row.TxID, Position: row.Position})
		if errors.Is(err, pgx.ErrNoRows) {
			// A checkpoint on no event: publish unchained.
			return nil
		}
		if err != nil {
			return err
		}
		pos.lastID, pos.chained = id, true
		return nil
	})
	return pos, err
}

func (r *Relay) eventCursor(ctx context.Context, id uuid.UUID) (Cursor, error) {
	var c Cursor
	err := pg.InTx(ctx, r.store.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		row, err := db.New(tx).RelayEventCursor(ctx, id)
		c = Cursor{TxID: row.TxID, Position: row.Position}
		return err
	})
	return c, err
}

// saveCheckpoint writes the checkpoint in a short transaction that first
// checks the lease: a relay that lost it saves nothing and reports held
// false.
func (r *Relay) saveCheckpoint(ctx context.Context, lease *Lease, c Cursor) (held bool, err error) {
	err = pg.InTx(ctx, r.store.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		if held, err = lease.HeldIn(ctx, tx); err != nil || !held {
			return err
		}
		return db.New(tx).RelayCheckpointSave(ctx, db.RelayCheckpointSaveParams{Name: RelayLeaseName, TxID: c.TxID, Position: c.Position})
	})
	return held, err
}

// idle waits for a Notify, the poll interval or the end of ctx.
func (r *Relay) idle(ctx context.Context) {
	t := time.NewTimer(r.poll)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-r.wake:
	case <-t.C:
	}
}

func (r *Relay) caughtUp() {
	r.m.lagEvents.Set(0)
	r.m.lagSeconds.Set(0)
}

// observeLag counts the events after the checkpoint, at most once per
// relayLagEvery unless force is set.
func (r *Relay) observeLag(ctx context.Context, cp Cursor, force bool) {
	r.mu.Lock()
	due := force || time.Since(r.lagAt) >= relayLagEvery
	if due {
		r.lagAt = time.Now()
	}
	r.mu.Unlock()
	if !due {
		return
	}
	if n, err := r.store.relayLag(ctx, cp); err == nil {
		r.m.lagEvents.Set(float64(n))
	}
}

func (r *Relay) fail(stage, what string, err error) {
	r.m.errors.WithLabelValues(stage).Inc()
	r.log.Warn("relay: "+what+" failed; retrying", "error", err)
	r.mu.Lock()
	r.lastErr = what + ": " + err.Error()
	r.mu.Unlock()
}

func (r *Relay) clearErr() {
	r.mu.Lock()
	r.lastErr = ""
	r.mu.Unlock()
}

func (r *Relay) setActive(v bool) {
	r.mu.Lock()
	r.active = v
	r.mu.Unlock()
}

// RelayStatus is the relay's progress, for /health and `mana projections
// status`.
type RelayStatus struct {
	// Checkpoint is the cursor of the last event JetStream acknowledged;
	// zero before the first.
	Checkpoint Cursor
	// UpdatedAt is when the checkpoint was last written; zero when never.
	UpdatedAt time.Time
	// LagEvents counts the feed's events after the checkpoint, up to
	// RelayLagCap.
	LagEvents int64
	// Holder is the process holding the relay lease, empty when none does.
	Holder string
	// Active reports whether this Relay holds the lease and publishes; set
	// by Relay.Status only.
	Active bool
	// LastError is the last error this Relay met, cleared by the next
	// successful round; set by Relay.Status only.
	LastError string
}

// Status returns the relay's progress as stored, plus whether this relay
// is the active one and its last error.
func (r *Relay) Status(ctx context.Context) (RelayStatus, error) {
	st, err := r.store.RelayStatus(ctx)
	r.mu.Lock()
	st.Active, st.LastError = r.active, r.lastErr
	r.mu.Unlock()
	return st, err
}

// RelayCheckpoint returns the cursor of the last event the relay saw
// acknowledged by JetStream; the zero Cursor when it has published nothing.
func (s *Store) RelayCheckpoint(ctx context.Context) (Cursor, error) {
	st, err := s.relayCheckpoint(ctx)
	return st.Checkpoint, err
}

// RelayStatus returns the relay's checkpoint, its lag and the lease holder,
// as stored in PostgreSQL, wherever the relay runs.
func (s *Store) RelayStatus(ctx context.Context) (RelayStatus, error) {
	st, err := s.relayCheckpoint(ctx)
	if err != nil {
		return st, err
	}
	if st.LagEvents, err = s.relayLag(ctx, st.Checkpoint); err != nil {
		return st, err
	}
	err = pg.InTx(ctx, s.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		rows, err := db.New(tx).LeaseList(ctx)
		for _, l := range rows {
			if l.Name == RelayLeaseName && l.ExpiresAt.After(time.Now()) {
				st.Holder = l.Holder
			}
		}
		return err
	})
	if err != nil {
		return st, fmt.Errorf("relay lease: %w", err)
	}
	return st, nil
}

func (s *Store) relayCheckpoint(ctx context.Context) (RelayStatus, error) {
	var st RelayStatus
	err := pg.InTx(ctx, s.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		row, err := db.New(tx).RelayCheckpointGet(ctx, RelayLeaseName)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		st.Checkpoint = Cursor{TxID: row.TxID, Position: row.Position}
		st.UpdatedAt = row.UpdatedAt
		return err
	})
	if err != nil {
		return st, fmt.Errorf("relay checkpoint: %w", err)
	}
	return st, nil
}

func (s *Store) relayLag(ctx context.Context, after Cursor) (int64, error) {
	var n int64
	err := pg.InTx(ctx, s.pool, pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		var err error
		n, err = db.New(tx).RelayLag(ctx, db.RelayLagParams{AfterTx: after.TxID, AfterPosition: after.Position, MaxEvents: RelayLagCap})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("relay lag: %w", err)
	}
	return n, nil
}

// relayBackoff is a bounded, jittered exponential backoff: about 100 ms,
// doubling to 2 s.
type relayBackoff struct{ n int }

func (b *relayBackoff) next() time.Duration {
	d := min(relayMinBackoff<<min(b.n, 8), relayMaxBackoff)
	b.n++
	return d/2 + rand.N(d/2+1)
}

func (b *relayBackoff) reset() { b.n = 0 }

// sleepCtx sleeps for d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

type relayMetrics struct {
	published  prometheus.Counter
	duplicates prometheus.Counter
	errors     *prometheus.CounterVec
	lagEvents  prometheus.Gauge
	lagSeconds prometheus.Gauge
	checkpoint prometheus.Gauge
}

func newRelayMetrics(reg prometheus.Registerer, log *slog.Logger) *relayMetrics {
	m := &relayMetrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mana_relay_published_total",
			Help: "Events JetStream acknowledged to the relay, duplicates included.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mana_relay_duplicates_total",
			Help: "Republished events JetStream already held and dropped.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mana_relay_errors_total",
			Help: "Relay rounds that failed and were retried, by stage (feed, publish, checkpoint).",
		}, []string{"stage"}),
		lagEvents: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mana_relay_lag_events",
			Help: "Events in the feed after the relay checkpoint (counted up to " + strconv.Itoa(RelayLagCap) + ").",
		}),
		lagSeconds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mana_relay_lag_seconds",
			Help: "Age (now - occurred_at) of the oldest event not yet published; 0 when caught up.",
		}),
		checkpoint: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mana_relay_checkpoint_position",
			Help: "Position part of the relay checkpoint cursor.",
		}),
	}
	if reg == nil {
		return m
	}
	register := func(c prometheus.Collector) prometheus.Collector {
		err := reg.Register(c)
		var dup prometheus.AlreadyRegisteredError
		switch {
		case err == nil:
			return c
		case errors.As(err, &dup):
			return dup.ExistingCollector
		default:
			log.Warn("relay metric not registered", "error", err)
			return c
		}
	}
	m.published = register(m.published).(prometheus.Counter)
	m.duplicates = register(m.duplicates).(prometheus.Counter)
	m.errors = register(m.errors).(*prometheus.CounterVec)
	m.lagEvents = register(m.lagEvents).(prometheus.Gauge)
	m.lagSeconds = register(m.lagSeconds).(prometheus.Gauge)
	m.checkpoint = register(m.checkpoint).(prometheus.Gauge)
	return m
}
