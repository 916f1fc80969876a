package eventstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore/internal/db"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/pg"
)

// dataKey returns subject's data key, creating it (in this transaction) when
// create is set and none exists. A concurrent creator makes the INSERT wait;
// the re-read then sees whichever key won.
func (tx *Tx) dataKey(ctx context.Context, subject uuid.UUID, create bool) (keyring.DataKey, error) {
	if k, ok := tx.keys[subject]; ok {
		return k, nil
	}
	if tx.store.keys == nil {
		return keyring.DataKey{}, ErrNoKeyring
	}
	if k, ok := tx.store.cache.get(subject); ok {
		return k, nil
	}
	wrapped, err := tx.q.DataKeyGet(ctx, subject)
	committed := err == nil
	if errors.Is(err, pgx.ErrNoRows) && create {
		_, w, genErr := tx.store.keys.NewDataKey(subject)
		if genErr != nil {
			return keyring.DataKey{}, genErr
		}
		if err := tx.q.DataKeyInsert(ctx, db.DataKeyInsertParams{SubjectID: subject, WrappedKey: w}); err != nil {
			return keyring.DataKey{}, fmt.Errorf("store data key: %w", err)
		}
		wrapped, err = tx.q.DataKeyGet(ctx, subject)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return keyring.DataKey{}, ErrErased
	}
	if err != nil {
		return keyring.DataKey{}, fmt.Errorf("load data key: %w", err)
	}
	k, err := tx.store.keys.UnwrapDataKey(subject, wrapped)
	if err != nil {
		return keyring.DataKey{}, fmt.Errorf("unwrap data key of %s: %w", subject, err)
	}
	if tx.keys == nil {
		tx.keys = map[uuid.UUID]keyring.DataKey{}
	}
	tx.keys[subject] = k
	if committed {
		// Only a key other transactions can already see is cached: one
		// created here may still roll back.
		tx.store.cache.put(subject, k)
	}
	return k, nil
}

// dataKeyTTL bounds how long an unwrapped data key is reused from memory
// when sealing new events. Reads never use the cache, so erasure takes
// effect for every reader at once; a field sealed by another node with a
// cached copy of an erased key is unreadable like the rest.
const dataKeyTTL = time.Minute

// keyCache keeps recently used unwrapped data keys, so commands on an
// account with personal data in its events (spend descriptions) do not
// read and unwrap the key every time.
type keyCache struct {
	mu sync.Mutex
	m  map[uuid.UUID]cachedKey
}

type cachedKey struct {
	key   keyring.DataKey
	until time.Time
}

const keyCacheMax = 100_000

func (c *keyCache) get(subject uuid.UUID) (keyring.DataKey, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[subject]
	if !ok || time.Now().After(e.until) {
		return keyring.DataKey{}, false
	}
	return e.key, true
}

func (c *keyCache) put(subject uuid.UUID, k keyring.DataKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= keyCacheMax {
		c.m = map[uuid.UUID]cachedKey{}
	}
	c.m[subject] = cachedKey{key: k, until: time.Now().Add(dataKeyTTL)}
}

func (c *keyCache) drop(subject uuid.UUID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, subject)
}

// ErrErased means a subject's data key is gone: its personal data can no
// longer be written or read.
var ErrErased = errors.New("eventstore: data subject erased")

// ClaimEmail claims email for userID under its blind index, in this
// transaction. A concurrent claim of the same address waits for the first
// transaction; if that commits, this one fails with
// EMAIL_ALREADY_REGISTERED.
func (tx *Tx) ClaimEmail(ctx context.Context, email string, userID uuid.UUID) error {
	if tx.store.keys == nil {
		return ErrNoKeyring
	}
	_, err := tx.q.EmailClaimInsert(ctx, db.EmailClaimInsertParams{
		EmailHmac: tx.store.keys.EmailIndex(email), UserID: userID,
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.Errorf(domain.CodeEmailAlreadyRegistered, "This email address is already registered.")
	}
	if err != nil {
		return fmt.Errorf("claim email: %w", err)
	}
	return nil
}

// LookupEmail returns the user holding email's claim.
func (tx *Tx) LookupEmail(ctx context.Context, email string) (uuid.UUID, bool, error) {
	if tx.store.keys == nil {
		return uuid.Nil, false, ErrNoKeyring
	}
	id, err := tx.q.EmailClaimLookup(ctx, tx.store.keys.EmailIndex(email))
	if errors.Is(err, pgx.ErrNoRows) {
		return uuid.Nil, false, nil
	}
	if err != nil {
		return uuid.Nil, false, fmt.Errorf("look up email: %w", err)
	}
	return id, true, nil
}

// EraseSubject shreds a user's personal data in this transaction: it deletes
// the wrapped data key (every encrypted field of the user becomes
// unreadable, while the events and their hashes stay as they are), the
// email claim and the stored idempotent responses.
func (tx *Tx) EraseSubject(ctx context.Context, userID uuid.UUID) error {
	if err := tx.q.DataKeyDelete(ctx, userID); err != nil {
		return fmt.Errorf("erase data key: %w", err)
	}
	if err := tx.q.EmailClaimDelete(ctx, userID); err != nil {
		return fmt.Errorf("erase email claim: %w", err)
	}
	if err := tx.q.IdempotencyDeleteUser(ctx, uuid.NullUUID{UUID: userID, Valid: true}); err != nil {
		return fmt.Errorf("erase idempotent responses: %w", err)
	}
	delete(tx.keys, userID)
	tx.store.cache.drop(userID)
	return nil
}

// Decoded is a stored event with its payload decoded to its domain type.
type Decoded struct {
	Record
	Event domain.Event
}

// Load reads a stream's events after afterVersion in version order and
// decodes them. It returns the stream's version (afterVersion when no newer
// events exist).
func (tx *Tx) Load(ctx context.Context, streamType, streamID string, afterVersion int64) ([]Decoded, int64, error) {
	rows, err := tx.q.EventsLoadStream(ctx, db.EventsLoadStreamParams{StreamType: streamType, StreamID: streamID, AfterVersion: afterVersion})
	if err != nil {
		return nil, 0, fmt.Errorf("load stream: %w", err)
	}
	recs := make([]Record, len(rows))
	for i, r := range rows {
		recs[i] = recordFromRow(r)
	}
	out, err := decodeAll(ctx, tx.q, tx.store.keys, recs)
	if err != nil {
		return nil, 0, err
	}
	version := afterVersion
	if len(recs) > 0 {
		version = recs[len(recs)-1].StreamVersion
	}
	return out, version, nil
}

// Decode decodes stored records, opening personal fields with their
// subjects' keys; the fields of erased subjects decode as zero values.
func (s *Store) Decode(ctx context.Context, recs []Record) ([]Decoded, error) {
	if s.keys == nil || len(piiSubjects(recs)) == 0 {
		// Nothing sealed: no keys to load, no transaction.
		return decodeAll(ctx, nil, nil, recs)
	}
	var out []Decoded
	err := pg.InTx(ctx, s.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(ptx pgx.Tx) error {
		var err error
		out, err = decodeAll(ctx, db.New(ptx), s.keys, recs)
		return err
	})
	return out, err
}

func decodeAll(ctx context.Context, q *db.Queries, kr *keyring.Keyring, recs []Record) ([]Decoded, error) {
	keys := map[uuid.UUID]keyring.DataKey{}
	if subjects := piiSubjects(recs); len(subjects) > 0 && kr != nil {
		rows, err := q.DataKeysGet(ctx, subjects)
		if err != nil {
			return nil, fmt.Errorf("load data keys: %w", err)
		}
		for _, r := range rows {
			k, err := kr.UnwrapDataKey(r.SubjectID, r.WrappedKey)
			if err != nil {
				return nil, fmt.Errorf("unwrap data key of %s: %w", r.SubjectID, err)
			}
			keys[r.SubjectID] = k
		}
	}
	out := make([]Decoded, len(recs))
	for i, r := range recs {
		ev, err := decodeRecord(r, keys)
		if err != nil {
			return nil, err
		}
		out[i] = Decoded{Record: r, Event: ev}
	}
	return out, nil
}

// LoadEvent reads and decodes one event of a stream by version; false when
// there is none. One index probe, whatever the stream's length.
func (tx *Tx) LoadEvent(ctx context.Context, streamType, streamID string, version int64) (Decoded, bool, error) {
	row, err := tx.q.EventsLoadOne(ctx, db.EventsLoadOneParams{StreamType: streamType, StreamID: streamID, StreamVersion: version})
	if errors.Is(err, pgx.ErrNoRows) {
		return Decoded{}, false, nil
	}
	if err != nil {
		return Decoded{}, false, fmt.Errorf("load event: %w", err)
	}
	out, err := decodeAll(ctx, tx.q, tx.store.keys, []Record{recordFromRow(row)})
	if err != nil {
		return Decoded{}, false, err
	}
	return out[0], true, nil
}
