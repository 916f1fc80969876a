package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore/internal/db"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/pg"
)

// DefaultMaxAttempts bounds how often a command is re-run after version
// conflicts before it fails with BUSY.
const DefaultMaxAttempts = 10

// ErrVersionConflict means another transaction appended to a stream after
// the command read it. Execute re-runs the command's decision on a fresh
// transaction; callers of Tx.Append outside Execute see it directly.
var ErrVersionConflict = errors.New("eventstore: stream version conflict")

// ErrNoKeyring is returned for personal-data work on a Store without a
// keyring.
var ErrNoKeyring = errors.New("eventstore: no keyring configured")

// Options configures a Store.
type Options struct {
	// Keyring seals and opens personal data and computes blind indexes.
	// Without one the store can append and verify events that carry no
	// personal data, and fails with ErrNoKeyring otherwise.
	Keyring *keyring.Keyring
	// Clock stamps occurred_at; domain.SystemClock when nil.
	Clock domain.Clock
	// MaxAttempts bounds re-runs on version conflicts; DefaultMaxAttempts
	// when zero.
	MaxAttempts int
	// Registerer receives the store's metrics; none are registered when nil.
	Registerer prometheus.Registerer
}

// Store appends and reads events in PostgreSQL. It is safe for concurrent
// use.
type Store struct {
	pool        *pgxpool.Pool
	keys        *keyring.Keyring
	clock       domain.Clock
	maxAttempts int
	metrics     *metrics
	onAppend    atomic.Pointer[func()]
	cache       keyCache
}

// OnAppend registers fn to run after every command that appended events has
// committed, e.g. a Relay's Notify. fn runs on the appending goroutine and
// must not block. A later call replaces fn; nil removes it.
func (s *Store) OnAppend(fn func()) {
	if fn == nil {
		s.onAppend.Store(nil)
		return
	}
	s.onAppend.Store(&fn)
}

// New returns a Store over pool.
func New(pool *pgxpool.Pool, opts Options) (*Store, error) {
	s := &Store{pool: pool, keys: opts.Keyring, clock: opts.Clock, maxAttempts: opts.MaxAttempts}
	if s.clock == nil {
		s.clock = domain.SystemClock
	}
	if s.maxAttempts <= 0 {
		s.maxAttempts = DefaultMaxAttempts
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	return s, nil
}

// Pool returns the store's connection pool.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Keyring returns the store's keyring.
func (s *Store) Keyring() *keyring.Keyring { return s.keys }

// Command describes one write: its operation name, who runs it, the
// metadata stamped on its events and, optionally, its idempotency key.
type Command struct {
	// Name is the operation, e.g. "credits.use"; it scopes idempotency keys
	// and labels metrics.
	Name     string
	Actor    pg.Actor
	Metadata domain.Metadata
	// Idempotency, when set, makes the command run at most once per key.
	Idempotency *Idempotency
}

// Idempotency identifies a command instance. The key is scoped by the
// account or subject it acts on, the caller principal (the user, or the app
// for service keys) and the command's name.
type Idempotency struct {
	Subject   string
	Principal string
	Key       string
	// Request is the validated command without the key; its canonical JSON
	// hash tells a retry from a reuse of the key for another request.
	Request any
	// TTL bounds how long the result is kept; zero keeps it forever, as for
	// every credit operation.
	TTL time.Duration
}

// Decision is a command's logic: it reads state and appends events through
// tx, and returns the receipt the caller answers with (Status and Body; the
// store fills in Position). A receipt with a status of 400 or more commits
// the transaction's work but is never stored for idempotent replay. It may run several times, each time on a fresh
// transaction, so it must not have effects outside tx. A *domain.Error it
// returns rolls everything back and is passed through.
type Decision func(ctx context.Context, tx *Tx) (domain.Receipt, error)

// Execute runs decide in one transaction under cmd.Actor, with idempotency
// when cmd.Idempotency is set, and commits. On a version conflict it rolls
// back and runs decide again, at most MaxAttempts times in all; then it
// fails with BUSY. A replayed idempotent command returns the stored receipt
// with Replayed set and does not run decide.
func (s *Store) Execute(ctx context.Context, cmd Command, decide Decision) (domain.Receipt, error) {
	var requestHash []byte
	if cmd.Idempotency != nil {
		h, err := CanonicalHash(cmd.Idempotency.Request)
		if err != nil {
			return domain.Receipt{}, fmt.Errorf("hash request: %w", err)
		}
		requestHash = h
	}
	start := time.Now()
	for attempt := 1; ; attempt++ {
		r, err := s.attempt(ctx, cmd, requestHash, decide)
		if !retryable(err) {
			s.metrics.observe(cmd.Name, start, err)
			return r, pg.MarkUnavailable(err)
		}
		s.metrics.conflicts.WithLabelValues(cmd.Name).Inc()
		if attempt >= s.maxAttempts {
			s.metrics.busy.WithLabelValues(cmd.Name).Inc()
			return domain.Receipt{}, &domain.Error{
				Code:              domain.CodeBusy,
				Message:           "The account is busy; retry shortly.",
				RetryAfterSeconds: 1,
			}
		}
		s.metrics.retries.WithLabelValues(cmd.Name).Inc()
		// Jittered backoff so the losers of a race do not collide again.
		backoff := time.Duration(rand.Int64N(int64(time.Millisecond) << min(attempt, 5)))
		select {
		case <-ctx.Done():
			return domain.Receipt{}, ctx.Err()
		case <-time.After(backoff):
		}
	}
}

// retryable reports whether err means "the world changed under the
// decision": a stream version conflict, a serialization failure or a
// deadlock. Re-running the decision on fresh state resolves each.
func retryable(err error) bool {
	if errors.Is(err, ErrVersionConflict) {
		return true
	}
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
}

func (s *Store) attempt(ctx context.Context, cmd Command, requestHash []byte, decide Decision) (domain.Receipt, error) {
	ptx, err := pg.Begin(ctx, s.pool, cmd.Actor, pgx.TxOptions{})
	if err != nil {
		return domain.Receipt{}, err
	}
	defer func() { _ = ptx.Rollback(ctx) }()
	tx := &Tx{Tx: ptx, q: db.New(ptx), store: s, cmd: cmd, now: s.clock.Now().UTC().Truncate(time.Microsecond)}

	if idem := cmd.Idempotency; idem != nil {
		replay, err := tx.reserveIdempotency(ctx, idem, requestHash)
		if err != nil || replay != nil {
			if replay != nil {
				return *replay, nil
			}
			return domain.Receipt{}, err
		}
	}

	r, err := decide(ctx, tx)
	if err != nil {
		return domain.Receipt{}, err
	}
	if tx.last != nil {
		r.Position = tx.last.String()
		tx.recordUserPositions()
	}
	if idem := cmd.Idempotency; idem != nil {
		tx.completeIdempotency(idem, r)
	}
	if err := tx.flush(ctx); err != nil {
		return domain.Receipt{}, err
	}
	if err := ptx.Commit(ctx); err != nil {
		return domain.Receipt{}, mapPgError(fmt.Errorf("commit: %w", err))
	}
	if fn := s.onAppend.Load(); fn != nil && tx.last != nil {
		(*fn)()
	}
	return r, nil
}

// Tx is a command's transaction. The embedded pgx.Tx lets the decision
// write credential tables in the same transaction as the events recording
// the fact; it must not commit or roll back.
type Tx struct {
	pgx.Tx
	q      *db.Queries
	store  *Store
	cmd    Command
	now    time.Time
	keys   map[uuid.UUID]keyring.DataKey
	users  map[uuid.UUID]bool
	last   *Cursor
	queued []queuedStatement
}

type queuedStatement struct {
	sql  string
	args []any
}

// Queue adds a write to send, with the store's own bookkeeping, in one
// pipelined round trip just before the commit. Its error (a constraint,
// say) fails the command like any other. For writes whose results the
// decision does not need.
func (tx *Tx) Queue(sql string, args ...any) {
	tx.queued = append(tx.queued, queuedStatement{sql: sql, args: args})
}

// flush sends the queued writes in one batch.
func (tx *Tx) flush(ctx context.Context) error {
	if len(tx.queued) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for _, q := range tx.queued {
		b.Queue(q.sql, q.args...)
	}
	tx.queued = nil
	br := tx.SendBatch(ctx, b)
	for range b.Len() {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return mapPgError(fmt.Errorf("queued write: %w", err))
		}
	}
	return br.Close()
}

// Now is the time of this attempt, fixed for all its events.
func (tx *Tx) Now() time.Time { return tx.now }

// AnyVersion appends without an expected version: for streams whose events
// do not depend on the stream's state.
const AnyVersion int64 = -1

// StreamAppend is a batch of events for one stream.
type StreamAppend struct {
	StreamType string
	StreamID   string
	// ExpectedVersion is the stream version the decision saw: 0 for a new
	// stream, AnyVersion to append whatever the version is.
	ExpectedVersion int64
	Events          []domain.Event
	// Users are the users this append touches; each gets the command's
	// cursor recorded for read-your-writes.
	Users []uuid.UUID
	// PrevHash, when the caller keeps the stream's head in state it has
	// locked (as credit accounts do), is the hash at ExpectedVersion and
	// saves the lookup. The version guard still applies; a wrong hash
	// would break the chain, which ledger verify reports.
	PrevHash []byte
}

// Append writes the batches atomically, chaining each stream's hashes. It
// fails with ErrVersionConflict when a stream is not at its expected
// version, now or at commit.
func (tx *Tx) Append(ctx context.Context, batches ...StreamAppend) ([]Record, error) {
	var recs []Record
	for _, b := range batches {
		if len(b.Events) == 0 {
			continue
		}
		version, prev, err := tx.streamHead(ctx, b)
		if err != nil {
			return nil, err
		}
		for _, ev := range b.Events {
			r, err := tx.newRecord(ctx, b, ev, version+1, prev)
			if err != nil {
				return nil, err
			}
			recs = append(recs, r)
			version, prev = r.StreamVersion, r.Hash
		}
		for _, u := range b.Users {
			tx.touch(u)
		}
	}
	if len(recs) == 0 {
		return nil, nil
	}
	p := db.EventsAppendParams{}
	for _, r := range recs {
		p.EventIds = append(p.EventIds, r.EventID)
		p.StreamTypes = append(p.StreamTypes, r.StreamType)
		p.StreamIds = append(p.StreamIds, r.StreamID)
		p.StreamVersions = append(p.StreamVersions, r.StreamVersion)
		p.EventTypes = append(p.EventTypes, r.EventType)
		p.SchemaVersions = append(p.SchemaVersions, int32(r.SchemaVersion))
		p.OccurredAts = append(p.OccurredAts, r.OccurredAt)
		p.Metadatas = append(p.Metadatas, r.Metadata)
		p.Payloads = append(p.Payloads, r.Payload)
		p.PrevHashes = append(p.PrevHashes, r.PrevHash)
		p.Hashes = append(p.Hashes, r.Hash)
	}
	rows, err := tx.q.EventsAppend(ctx, p)
	if err != nil {
		return nil, mapPgError(fmt.Errorf("append events: %w", err))
	}
	if len(rows) != len(recs) {
		return nil, fmt.Errorf("append events: %d rows back for %d events", len(rows), len(recs))
	}
	for i := range recs {
		recs[i].Cursor = Cursor{TxID: rows[i].TxID, Position: rows[i].Position}
		recs[i].RecordedAt = tx.now
	}
	// Positions come from one statement, so the last row is the command's
	// greatest cursor so far.
	last := recs[len(recs)-1].Cursor
	tx.last = &last
	tx.store.metrics.appended.Add(float64(len(recs)))
	return recs, nil
}

func (tx *Tx) streamHead(ctx context.Context, b StreamAppend) (int64, []byte, error) {
	switch {
	case b.ExpectedVersion > 0 && len(b.PrevHash) == len(GenesisHash):
		return b.ExpectedVersion, b.PrevHash, nil
	case b.ExpectedVersion == 0:
		return 0, GenesisHash, nil
	case b.ExpectedVersion == AnyVersion:
		row, err := tx.q.EventsStreamLast(ctx, db.EventsStreamLastParams{StreamType: b.StreamType, StreamID: b.StreamID})
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, GenesisHash, nil
		}
		if err != nil {
			return 0, nil, fmt.Errorf("stream head: %w", err)
		}
		return row.StreamVersion, row.Hash, nil
	case b.ExpectedVersion < 0:
		return 0, nil, fmt.Errorf("append: bad expected version %d", b.ExpectedVersion)
	}
	h, err := tx.q.EventsStreamHead(ctx, db.EventsStreamHeadParams{
		StreamType: b.StreamType, StreamID: b.StreamID, StreamVersion: b.ExpectedVersion,
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, ErrVersionConflict
	}
	if err != nil {
		return 0, nil, fmt.Errorf("stream head: %w", err)
	}
	return b.ExpectedVersion, h, nil
}

func (tx *Tx) newRecord(ctx context.Context, b StreamAppend, ev domain.Event, version int64, prev []byte) (Record, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return Record{}, err
	}
	var key *keyring.DataKey
	if pd, ok := ev.(domain.PersonalData); ok {
		k, err := tx.dataKey(ctx, pd.DataSubject(), true)
		if err != nil {
			return Record{}, err
		}
		key = &k
	}
	payload, err := encodePayload(ev, id, key)
	if err != nil {
		return Record{}, err
	}
	meta, err := json.Marshal(tx.cmd.Metadata)
	if err != nil {
		return Record{}, err
	}
	r := Record{
		EventID:       id,
		StreamType:    b.StreamType,
		StreamID:      b.StreamID,
		StreamVersion: version,
		EventType:     ev.EventType(),
		SchemaVersion: ev.SchemaVersion(),
		OccurredAt:    tx.now,
		Metadata:      meta,
		Payload:       payload,
		PrevHash:      prev,
	}
	if r.Hash, err = ComputeHash(&r); err != nil {
		return Record{}, err
	}
	return r, nil
}

func (tx *Tx) touch(u uuid.UUID) {
	if u == uuid.Nil {
		return
	}
	if tx.users == nil {
		tx.users = map[uuid.UUID]bool{}
	}
	tx.users[u] = true
}

// userPositionUpsert records the feed cursor of the latest append touching
// a user. A later transaction always has a greater tx_id, so the upsert
// only moves forward.
const userPositionUpsert = `INSERT INTO user_positions (user_id, tx_id, position) VALUES ($1, $2, $3)
ON CONFLICT (user_id) DO UPDATE SET tx_id = excluded.tx_id, position = excluded.position
WHERE (user_positions.tx_id, user_positions.position) < (excluded.tx_id, excluded.position)`

// recordUserPositions queues the command's cursor for every user it
// touched, for read-your-writes.
func (tx *Tx) recordUserPositions() {
	if tx.cmd.Actor.Scope == pg.ScopeUser || tx.cmd.Actor.Scope == "" {
		tx.touch(tx.cmd.Actor.UserID)
	}
	for u := range tx.users {
		tx.Queue(userPositionUpsert, u, tx.last.TxID, tx.last.Position)
	}
}

// mapPgError turns the PostgreSQL errors a command can meet into the
// store's errors: the stream-version guard becomes ErrVersionConflict.
// Everything else passes through wrapped.
func mapPgError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "events_stream_version_key" {
		return ErrVersionConflict
	}
	return err
}
