package mail_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/mail"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
)

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// scripted is a Mailer that fails with the next scripted error, then
// succeeds, recording every attempt.
type scripted struct {
	mu       sync.Mutex
	failures []error
	sent     []mail.Message
	attempts int
}

func (s *scripted) Send(_ context.Context, m mail.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts++
	if len(s.failures) > 0 {
		err := s.failures[0]
		s.failures = s.failures[1:]
		return err
	}
	s.sent = append(s.sent, m)
	return nil
}

// execQueuer runs Enqueue's insert at once, in system scope.
type execQueuer struct {
	t    *testing.T
	pool *pgxpool.Pool
}

func (q execQueuer) Queue(sql string, args ...any) {
	err := pg.InTx(q.t.Context(), q.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		_, err := tx.Exec(q.t.Context(), sql, args...)
		return err
	})
	if err != nil {
		q.t.Fatal(err)
	}
}

type workerEnv struct {
	pool  *pgxpool.Pool
	kr    *keyring.Keyring
	store *eventstore.Store
	clock *clock
}

func newWorkerEnv(t *testing.T) *workerEnv {
	t.Helper()
	pool := pgtest.NewPool(t)
	kek, idx := make([]byte, keyring.KeySize), make([]byte, keyring.KeySize)
	_, _ = rand.Read(kek)
	_, _ = rand.Read(idx)
	kr, err := keyring.New(kek, idx)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{now: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	store, err := eventstore.New(pool, eventstore.Options{Keyring: kr, Clock: c})
	if err != nil {
		t.Fatal(err)
	}
	return &workerEnv{pool: pool, kr: kr, store: store, clock: c}
}

// user makes a user with a data key (an erased user has none).
func (e *workerEnv) user(t *testing.T) uuid.UUID {
	t.Helper()
	id := uuid.New()
	if _, err := e.pool.Exec(t.Context(), `INSERT INTO data_keys (subject_id, wrapped_key) VALUES ($1, '\x00')`, id); err != nil {
		t.Fatal(err)
	}
	return id
}

func (e *workerEnv) worker(t *testing.T, m mail.Mailer, maxAttempts int) *mail.Worker {
	t.Helper()
	r, err := mail.NewRenderer("", "")
	if err != nil {
		t.Fatal(err)
	}
	w, err := mail.NewWorker(mail.WorkerConfig{Store: e.store, Mailer: m, Renderer: r, Clock: e.clock, MaxAttempts: maxAttempts,
		Backoff: func(n int) time.Duration { return time.Duration(n) * time.Minute }})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

type outboxRow struct {
	attempts  int
	next      time.Time
	lastError *string
}

func (e *workerEnv) outbox(t *testing.T, user uuid.UUID) []outboxRow {
	t.Helper()
	rows, err := e.pool.Query(t.Context(), `SELECT attempts, next_attempt_at, last_error FROM mail_outbox WHERE user_id = $1`, user)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (outboxRow, error) {
		var o outboxRow
		return o, r.Scan(&o.attempts, &o.next, &o.lastError)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sendDue(t *testing.T, w *mail.Worker) int {
	t.Helper()
	n, err := w.SendDue(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestWorkerRetriesWithBackoff: a failed delivery is retried after the
// backoff, not before; a success deletes the mail, sealed token and all.
func TestWorkerRetriesWithBackoff(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t)
	u := e.user(t)
	if err := mail.Enqueue(execQueuer{t, e.pool}, e.kr, u, mail.KindResetPassword,
		mail.Payload{To: "retry@example.com", Token: token, At: e.clock.Now(), ExpiresAt: e.clock.Now().Add(time.Hour)}, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	m := &scripted{failures: []error{errors.New("451 try later <retry@example.com>"), errors.New("connection reset")}}
	w := e.worker(t, m, 5)

	if n := sendDue(t, w); n != 1 || m.attempts != 1 {
		t.Fatalf("first pass handled %d, attempts %d", n, m.attempts)
	}
	rows := e.outbox(t, u)
	if len(rows) != 1 || rows[0].attempts != 1 || !rows[0].next.Equal(e.clock.Now().Add(time.Minute)) {
		t.Fatalf("after one failure: %+v", rows)
	}
	if rows[0].lastError == nil || *rows[0].lastError != "delivery error" {
		t.Errorf("last_error = %v; it must name no address", rows[0].lastError)
	}
	// Not due yet: nothing happens.
	e.clock.Advance(59 * time.Second)
	if n := sendDue(t, w); n != 0 || m.attempts != 1 {
		t.Fatalf("retried before the backoff: %d, %d", n, m.attempts)
	}
	e.clock.Advance(time.Second)
	sendDue(t, w)
	if rows := e.outbox(t, u); len(rows) != 1 || rows[0].attempts != 2 || !rows[0].next.Equal(e.clock.Now().Add(2*time.Minute)) {
		t.Fatalf("after the second failure: %+v", rows)
	}
	e.clock.Advance(2 * time.Minute)
	sendDue(t, w)
	if len(m.sent) != 1 || m.sent[0].To != "retry@example.com" || m.sent[0].Kind != mail.KindResetPassword {
		t.Fatalf("sent %+v", m.sent)
	}
	if rows := e.outbox(t, u); len(rows) != 0 {
		t.Fatalf("the sent mail is still queued: %+v", rows)
	}
}

// TestWorkerGivesUp: after MaxAttempts failures, or at once on a permanent
// failure, the mail is deleted.
func TestWorkerGivesUp(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t)
	u1, u2 := e.user(t), e.user(t)
	q := execQueuer{t, e.pool}
	for _, u := range []uuid.UUID{u1, u2} {
		if err := mail.Enqueue(q, e.kr, u, mail.KindNewDevice, mail.Payload{To: u.String() + "@example.com", At: e.clock.Now()}, e.clock.Now()); err != nil {
			t.Fatal(err)
		}
	}
	always := &failing{err: errors.New("down")}
	w := e.worker(t, always, 3)
	for i := 0; i < 3; i++ {
		sendDue(t, w)
		e.clock.Advance(time.Hour)
	}
	if rows := e.outbox(t, u1); len(rows) != 0 {
		t.Fatalf("still queued after 3 attempts: %+v", rows)
	}
	if always.count() != 6 {
		t.Errorf("%d attempts for two mails, want 6", always.count())
	}

	if err := mail.Enqueue(q, e.kr, u1, mail.KindNewDevice, mail.Payload{To: "x@example.com", At: e.clock.Now()}, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	perm := &failing{err: fmt.Errorf("%w: recipient refused (smtp 550)", mail.ErrPermanent)}
	sendDue(t, e.worker(t, perm, 10))
	if rows := e.outbox(t, u1); len(rows) != 0 || perm.count() != 1 {
		t.Fatalf("a permanent failure was retried: %+v, %d attempts", rows, perm.count())
	}
}

// TestWorkerDropsMailOfErasedUsers: without the user's data key (erased),
// the queued mail is deleted unsent.
func TestWorkerDropsMailOfErasedUsers(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t)
	u := e.user(t)
	if err := mail.Enqueue(execQueuer{t, e.pool}, e.kr, u, mail.KindVerifyEmail,
		mail.Payload{To: "gone@example.com", Token: token, At: e.clock.Now(), ExpiresAt: e.clock.Now().Add(time.Hour)}, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(t.Context(), `DELETE FROM data_keys WHERE subject_id = $1`, u); err != nil {
		t.Fatal(err)
	}
	m := &scripted{}
	sendDue(t, e.worker(t, m, 5))
	if m.attempts != 0 || len(e.outbox(t, u)) != 0 {
		t.Fatalf("attempts %d, queued %d", m.attempts, len(e.outbox(t, u)))
	}
}

type failing struct {
	mu  sync.Mutex
	err error
	n   int
}

func (f *failing) Send(context.Context, mail.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	return f.err
}

func (f *failing) count() int { f.mu.Lock(); defer f.mu.Unlock(); return f.n }
