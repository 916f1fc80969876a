package mail

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/textproto"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// LeaseName is the lease the mail worker runs under: one sender across all
// nodes.
const LeaseName = "worker:mail"

// Worker defaults.
const (
	DefaultInterval     = 500 * time.Millisecond
	DefaultMaxAttempts  = 10
	DefaultNoticeMaxAge = time.Hour
	// claimFor is how long a mail being sent stays invisible to other
	// senders (a lease overlap after a crash): longer than one delivery.
	claimFor = 2 * time.Minute
	// followBatch bounds the events one Follow step reads.
	followBatch = 200
	// sendBatch bounds the mails one SendDue step sends.
	sendBatch = 50
)

// WorkerConfig configures a Worker.
type WorkerConfig struct {
	Store    *eventstore.Store
	Mailer   Mailer
	Renderer *Renderer
	// Lease, when set, is checked in every transaction that claims a mail
	// or advances the feed cursor, so a worker that lost it stops writing.
	Lease  *eventstore.Lease
	Clock  domain.Clock
	Logger *slog.Logger
	// Registerer receives the worker's metrics; none when nil.
	Registerer prometheus.Registerer
	// Interval between polls; DefaultInterval when zero.
	Interval time.Duration
	// MaxAttempts failed deliveries give a mail up; DefaultMaxAttempts
	// when zero.
	MaxAttempts int
	// Backoff is the wait after the n-th failed attempt (n ≥ 1); by
	// default 10 s doubling per attempt up to 30 min, with jitter.
	Backoff func(attempt int) time.Duration
	// NoticeMaxAge: a login or refresh-token reuse older than this when
	// the worker reaches it (after an outage) is not mailed about any more;
	// DefaultNoticeMaxAge when zero.
	NoticeMaxAge time.Duration
}

// Worker queues the notices the event feed calls for and sends every queued
// mail. Run it under LeaseName.
type Worker struct {
	cfg     WorkerConfig
	metrics *workerMetrics
}

// NewWorker returns a Worker.
func NewWorker(cfg WorkerConfig) (*Worker, error) {
	if cfg.Store == nil || cfg.Mailer == nil || cfg.Renderer == nil {
		return nil, errors.New("mail: store, mailer and renderer are required")
	}
	if cfg.Store.Keyring() == nil {
		return nil, errors.New("mail: the store has no keyring")
	}
	if cfg.Clock == nil {
		cfg.Clock = domain.SystemClock
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.Backoff == nil {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.NoticeMaxAge <= 0 {
		cfg.NoticeMaxAge = DefaultNoticeMaxAge
	}
	m, err := newWorkerMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Worker{cfg: cfg, metrics: m}, nil
}

// DefaultBackoff waits 10 s after the first failure, doubling per attempt up
// to 30 minutes, plus up to 10 % jitter.
func DefaultBackoff(attempt int) time.Duration {
	d := 10 * time.Second << min(max(attempt-1, 0), 8)
	d = min(d, 30*time.Minute)
	return d + time.Duration(rand.Int64N(int64(d/10)+1))
}

func (w *Worker) now() time.Time { return w.cfg.Clock.Now().UTC() }

// errLeaseLost stops a step whose transaction found the lease gone.
var errLeaseLost = errors.New("mail: lease lost")

// Run follows the feed and sends due mails every Interval until ctx ends
// or the lease is lost (then it returns nil, and the lease's Run takes it
// up again when it can).
func (w *Worker) Run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		for {
			n, err := w.Follow(ctx)
			if errors.Is(err, errLeaseLost) || ctx.Err() != nil {
				return nil
			}
			if err != nil {
				w.cfg.Logger.Warn("mail worker: reading the event feed failed; retrying", "error", err)
			}
			if err != nil || n < followBatch {
				break
			}
		}
		for {
			n, err := w.SendDue(ctx)
			if errors.Is(err, errLeaseLost) || ctx.Err() != nil {
				return nil
			}
			if err != nil {
				w.cfg.Logger.Warn("mail worker: sending failed; retrying", "error", err)
			}
			if err != nil || n < sendBatch {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// system is the actor of the worker's transactions: the mail tables allow
// system scope only (and the user themself).
var system = pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}

// claimed is one outbox row taken for a delivery attempt.
type claimed struct {
	id       uuid.UUID
	user     uuid.UUID
	kind     string
	sealed   []byte
	attempts int
	erased   bool
}

// SendDue sends up to sendBatch due mails, one at a time, and returns how
// many rows it handled (sent, rescheduled or given up). Each mail is claimed
// in a short transaction (attempts + 1, hidden from other senders for
// claimFor), sent outside any transaction, then deleted — or rescheduled
// with backoff, or given up after MaxAttempts or a permanent failure. A
// crash between the send and the delete sends the mail again later: mails
// are delivered at least once.
func (w *Worker) SendDue(ctx context.Context) (int, error) {
	n := 0
	for n < sendBatch {
		c, ok, err := w.claim(ctx)
		if err != nil || !ok {
			return n, err
		}
		n++
		if c.erased {
			// The user is erased: nobody to write to, and the sealed
			// data must go.
			if err := w.finish(ctx, c.id); err != nil {
				return n, err
			}
			w.metrics.dropped.WithLabelValues(c.kind, "erased").Inc()
			continue
		}
		err = w.deliver(ctx, c)
		switch {
		case err == nil:
			w.metrics.sent.WithLabelValues(c.kind).Inc()
			if err := w.finish(ctx, c.id); err != nil {
				return n, err
			}
		case ctx.Err() != nil:
			// Shutting down mid-send: the claim expires and the mail is
			// retried; the attempt is not held against it.
			return n, nil
		case errors.Is(err, ErrPermanent) || c.attempts >= w.cfg.MaxAttempts:
			w.metrics.failed.WithLabelValues(c.kind).Inc()
			reason := "attempts"
			if errors.Is(err, ErrPermanent) {
				reason = "permanent"
			}
			w.metrics.dropped.WithLabelValues(c.kind, reason).Inc()
			w.cfg.Logger.Error("mail given up", "kind", c.kind, "mail_id", c.id.String(), "attempts", c.attempts, "error", describe(err))
			if err := w.finish(ctx, c.id); err != nil {
				return n, err
			}
		default:
			w.metrics.failed.WithLabelValues(c.kind).Inc()
			wait := w.cfg.Backoff(c.attempts)
			w.cfg.Logger.Warn("mail delivery failed; will retry", "kind", c.kind, "mail_id", c.id.String(),
				"attempts", c.attempts, "retry_in", wait.String(), "error", describe(err))
			if err := w.reschedule(ctx, c.id, w.now().Add(wait), describe(err)); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func (w *Worker) claim(ctx context.Context) (claimed, bool, error) {
	var c claimed
	found := false
	now := w.now()
	err := pg.InTx(ctx, w.cfg.Store.Pool(), system, func(tx pgx.Tx) error {
		if err := w.checkLease(ctx, tx); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, `
UPDATE mail_outbox o SET attempts = o.attempts + 1, next_attempt_at = $2
WHERE o.id = (SELECT id FROM mail_outbox WHERE next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING o.id, o.user_id, o.kind, o.sealed, o.attempts, NOT EXISTS (SELECT 1 FROM data_keys d WHERE d.subject_id = o.user_id)`,
			now, now.Add(claimFor)).Scan(&c.id, &c.user, &c.kind, &c.sealed, &c.attempts, &c.erased)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		found = err == nil
		return err
	})
	if err != nil {
		return claimed{}, false, err
	}
	return c, found, nil
}

func (w *Worker) checkLease(ctx context.Context, tx pgx.Tx) error {
	if w.cfg.Lease == nil {
		return nil
	}
	held, err := w.cfg.Lease.HeldIn(ctx, tx)
	if err != nil {
		return err
	}
	if !held {
		return errLeaseLost
	}
	return nil
}

// deliver opens, renders and sends one claimed mail.
func (w *Worker) deliver(ctx context.Context, c claimed) error {
	p, err := openPayload(w.cfg.Store.Keyring(), c.id, c.sealed)
	if err != nil {
		return fmt.Errorf("%w: the sealed mail does not open", ErrPermanent)
	}
	m, err := w.cfg.Renderer.Render(c.id, c.kind, p, w.now())
	if err != nil {
		return fmt.Errorf("%w: %v", ErrPermanent, err)
	}
	return w.cfg.Mailer.Send(ctx, m)
}

func (w *Worker) finish(ctx context.Context, id uuid.UUID) error {
	return pg.InTx(ctx, w.cfg.Store.Pool(), system, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM mail_outbox WHERE id = $1`, id)
		return err
	})
}

func (w *Worker) reschedule(ctx context.Context, id uuid.UUID, at time.Time, reason string) error {
	return pg.InTx(ctx, w.cfg.Store.Pool(), system, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE mail_outbox SET next_attempt_at = $2, last_error = $3 WHERE id = $1`, id, at, reason)
		return err
	})
}

// describe says why a delivery failed without quoting the server: SMTP
// replies often repeat the recipient's address, which logs must not carry.
func describe(err error) string {
	var te *textproto.Error
	var ne net.Error
	var oe *net.OpError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &te):
		return fmt.Sprintf("smtp reply %d", te.Code)
	case errors.Is(err, ErrPermanent):
		return "permanent failure"
	case errors.As(err, &oe):
		return "network: " + oe.Op + " " + oe.Net
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "delivery error"
}

// cursorName is the mail worker's row in mail_cursor.
const cursorName = "mail"

// followTypes are the events the worker reacts to.
var followTypes = []string{"session.started", "session.revoked", "user.erased"}

// Follow reads the next events of the feed the worker reacts to, queues
// the notices they call for, and advances its cursor, all in one
// transaction that also checks the lease and that no other worker moved the
// cursor meanwhile. It returns how many events it read.
//
//   - session.started from a device (its device id, or its user agent when
//     it has none) the user has not logged in from before, while the user
//     has logged in from another device: a new-device notice. The user's
//     first device is recorded without a mail.
//   - session.revoked for a reused refresh token: a reuse notice.
//   - user.erased: the user's queued mails, email tokens and known devices
//     are deleted.
//
// Notices about events older than NoticeMaxAge are not sent (the device is
// still recorded).
func (w *Worker) Follow(ctx context.Context) (int, error) {
	store := w.cfg.Store
	var from eventstore.Cursor
	err := pg.QueryRow(ctx, store.Pool(), system, `SELECT tx_id, position FROM mail_cursor WHERE name = $1`,
		[]any{cursorName}, &from.TxID, &from.Position)
	if err != nil {
		return 0, fmt.Errorf("mail cursor: %w", err)
	}
	head, err := store.FeedHead(ctx)
	if err != nil {
		return 0, err
	}
	if !from.Less(head) {
		return 0, nil
	}
	recs, err := store.ReadFeedRange(ctx, from, head, followTypes, followBatch)
	if err != nil {
		return 0, err
	}
	next := head
	if len(recs) == followBatch {
		next = recs[len(recs)-1].Cursor
	}
	evs, err := store.Decode(ctx, recs)
	if err != nil {
		return 0, err
	}
	_, err = store.Execute(ctx, eventstore.Command{Name: "mail.follow", Actor: system, Metadata: domain.Metadata{Actor: domain.SystemActor}},
		func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			if err := w.checkLease(ctx, tx.Tx); err != nil {
				return domain.Receipt{}, err
			}
			var at eventstore.Cursor
			if err := tx.QueryRow(ctx, `SELECT tx_id, position FROM mail_cursor WHERE name = $1 FOR UPDATE`, cursorName).
				Scan(&at.TxID, &at.Position); err != nil {
				return domain.Receipt{}, err
			}
			if at != from {
				return domain.Receipt{}, errCursorMoved
			}
			for _, ev := range evs {
				if err := w.react(ctx, tx, ev); err != nil {
					return domain.Receipt{}, fmt.Errorf("%s %s: %w", ev.EventType, ev.EventID, err)
				}
			}
			_, err := tx.Exec(ctx, `UPDATE mail_cursor SET tx_id = $2, position = $3 WHERE name = $1`, cursorName, next.TxID, next.Position)
			return domain.Receipt{}, err
		})
	if errors.Is(err, errCursorMoved) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return len(recs), nil
}

// errCursorMoved: another worker advanced the cursor first (a lease
// overlap); this step's work is theirs.
var errCursorMoved = errors.New("mail: cursor moved")

func (w *Worker) react(ctx context.Context, tx *eventstore.Tx, ev eventstore.Decoded) error {
	fresh := w.now().Sub(ev.OccurredAt) <= w.cfg.NoticeMaxAge
	switch e := ev.Event.(type) {
	case *domain.SessionStarted:
		return w.onSessionStarted(ctx, tx, e, ev.OccurredAt, fresh)
	case *domain.SessionRevoked:
		if e.Reason != domain.RevokedRefreshReused || !fresh {
			return nil
		}
		to, err := recipient(ctx, tx, e.UserID)
		if err != nil || to == "" {
			return err
		}
		p := Payload{To: to, At: ev.OccurredAt}
		if started, ok, err := tx.LoadEvent(ctx, domain.StreamSession, e.SessionID.String(), 1); err != nil {
			return err
		} else if s, isStart := started.Event.(*domain.SessionStarted); ok && isStart {
			p.DeviceName = s.DeviceName
		}
		return Enqueue(tx, w.cfg.Store.Keyring(), e.UserID, KindRefreshReuse, p, w.now())
	case *domain.UserErased:
		for _, table := range []string{"mail_outbox", "email_tokens", "mail_known_devices"} {
			if _, err := tx.Exec(ctx, `DELETE FROM `+table+` WHERE user_id = $1`, e.UserID); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *Worker) onSessionStarted(ctx context.Context, tx *eventstore.Tx, e *domain.SessionStarted, at time.Time, fresh bool) error {
	device := "id:" + e.DeviceID
	if e.DeviceID == "" {
		device = "ua:" + e.UserAgent
	}
	msg := append(append([]byte{}, e.UserID[:]...), device...)
	hash := w.cfg.Store.Keyring().MAC("mail-known-device", msg)
	var known bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM mail_known_devices WHERE user_id = $1)`, e.UserID).Scan(&known); err != nil {
		return err
	}
	var added bool
	err := tx.QueryRow(ctx, `INSERT INTO mail_known_devices (user_id, device_hash, first_seen) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING RETURNING true`, e.UserID, hash, at).Scan(&added)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if !added || !known || !fresh {
		return nil
	}
	to, err := recipient(ctx, tx, e.UserID)
	if err != nil || to == "" {
		return err
	}
	return Enqueue(tx, w.cfg.Store.Keyring(), e.UserID, KindNewDevice, Payload{To: to, At: at,
		DeviceName: e.DeviceName, IPAddress: e.IPAddress, UserAgent: e.UserAgent}, w.now())
}

// recipient is the user's address from user.registered; empty once the
// user is erased (the sealed field no longer opens).
func recipient(ctx context.Context, tx *eventstore.Tx, user uuid.UUID) (string, error) {
	ev, found, err := tx.LoadEvent(ctx, domain.StreamUser, user.String(), 1)
	if err != nil || !found {
		return "", err
	}
	if u, ok := ev.Event.(*domain.UserRegistered); ok {
		return u.Email, nil
	}
	return "", nil
}

type workerMetrics struct {
	sent, failed *prometheus.CounterVec
	dropped      *prometheus.CounterVec
}

func newWorkerMetrics(reg prometheus.Registerer) (*workerMetrics, error) {
	m := &workerMetrics{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mana_mail_sent_total",
			Help: "Mails handed to the mailer successfully, by kind."}, []string{"kind"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mana_mail_failures_total",
			Help: "Failed delivery attempts, by kind."}, []string{"kind"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mana_mail_dropped_total",
			Help: "Queued mails given up, by kind and reason (attempts, permanent, erased)."}, []string{"kind", "reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.sent, m.failed, m.dropped} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("mail metrics: %w", err)
			}
		}
	}
	return m, nil
}
