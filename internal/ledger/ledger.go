// Package ledger signs checkpoints of the event log: a Merkle tree head over
// the event hashes in feed order up to a cursor below the safe horizon,
// signed with the Ed25519 LEDGER_SIGNING_KEY. A checkpoint proves later that
// the log up to its cursor was not rewritten (`mana ledger verify
// --checkpoint`), and an inclusion proof shows one event is in it, offline
// (`mana ledger check-proof`). See docs/ledger.md, "Signed checkpoints".
package ledger

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// DefaultPageSize is how many event hashes one read of the log returns.
const DefaultPageSize = 10000

// DefaultMaxProofs bounds the proofs a Service computes at once: each one
// reads every event hash up to its checkpoint.
const DefaultMaxProofs = 2

// proofWait is how long a proof request waits for a free slot before it
// is answered BUSY.
const proofWait = 10 * time.Second

// Options configures New.
type Options struct {
	// SigningKey signs new checkpoints; nil leaves the Service able to
	// read, verify and prove only.
	SigningKey ed25519.PrivateKey
	// Clock stamps signed_at; nil means the system clock.
	Clock domain.Clock
	// PageSize is how many event hashes one query reads; 0 means
	// DefaultPageSize.
	PageSize int
	// MaxProofs bounds concurrent proof computations; 0 means
	// DefaultMaxProofs.
	MaxProofs int
}

// Service signs, stores, verifies and proves checkpoints. It is safe for
// concurrent use.
type Service struct {
	pool   *pgxpool.Pool
	key    ed25519.PrivateKey
	clock  domain.Clock
	page   int
	proofs chan struct{}
}

var _ domain.Checkpoints = (*Service)(nil)

// New returns a Service over pool.
func New(pool *pgxpool.Pool, o Options) *Service {
	if o.Clock == nil {
		o.Clock = domain.SystemClock
	}
	if o.PageSize <= 0 {
		o.PageSize = DefaultPageSize
	}
	if o.MaxProofs <= 0 {
		o.MaxProofs = DefaultMaxProofs
	}
	return &Service{pool: pool, key: o.SigningKey, clock: o.Clock, page: o.PageSize, proofs: make(chan struct{}, o.MaxProofs)}
}

var (
	writer  = pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}
	auditor = pg.Actor{Role: pg.RoleAuditor, Scope: pg.ScopeAuditor}
)

// ErrEmptyLog is returned by Create when no event is below the horizon.
var ErrEmptyLog = errors.New("nothing to checkpoint: the feed is empty")

// ErrNoKey is returned by Create on a Service without a signing key.
var ErrNoKey = errors.New("no LEDGER_SIGNING_KEY to sign checkpoints with")

// RegisterKey records the signing key's public half in
// ledger_signing_keys unless it is there already, and returns it.
func (s *Service) RegisterKey(ctx context.Context) (domain.LedgerKey, error) {
	if s.key == nil {
		return domain.LedgerKey{}, ErrNoKey
	}
	var k domain.LedgerKey
	err := pg.InTx(ctx, s.pool, writer, func(tx pgx.Tx) error {
		var err error
		k, err = registerKey(ctx, tx, s.key.Public().(ed25519.PublicKey))
		return err
	})
	return k, err
}

func registerKey(ctx context.Context, tx pgx.Tx, pub ed25519.PublicKey) (domain.LedgerKey, error) {
	id := KeyID(pub)
	if _, err := tx.Exec(ctx, `INSERT INTO ledger_signing_keys (key_id, public_key) VALUES ($1, $2)
		ON CONFLICT DO NOTHING`, id, []byte(pub)); err != nil {
		return domain.LedgerKey{}, fmt.Errorf("register signing key: %w", err)
	}
	var (
		stored []byte
		at     time.Time
	)
	if err := tx.QueryRow(ctx, `SELECT public_key, created_at FROM ledger_signing_keys WHERE key_id = $1`, id).Scan(&stored, &at); err != nil {
		return domain.LedgerKey{}, fmt.Errorf("register signing key: %w", err)
	}
	if !bytes.Equal(stored, pub) {
		// A 96-bit id collision, or a forged row: refuse to sign under it.
		return domain.LedgerKey{}, fmt.Errorf("signing key id %s is registered for another public key", id)
	}
	return ledgerKey(id, stored, at), nil
}

func ledgerKey(id string, pub []byte, at time.Time) domain.LedgerKey {
	return domain.LedgerKey{KeyID: id, Algorithm: Algorithm, PublicKey: base64.RawURLEncoding.EncodeToString(pub), CreatedAt: at.UTC()}
}

// SigningKeys lists every checkpoint key ever used, oldest first.
func (s *Service) SigningKeys(ctx context.Context) ([]domain.LedgerKey, error) {
	keys := []domain.LedgerKey{}
	err := pg.InTx(ctx, s.pool, writer, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT key_id, public_key, created_at FROM ledger_signing_keys ORDER BY created_at, key_id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				id  string
				pub []byte
				at  time.Time
			)
			if err := rows.Scan(&id, &pub, &at); err != nil {
				return err
			}
			keys = append(keys, ledgerKey(id, pub, at))
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("signing keys: %w", err)
	}
	return keys, nil
}

// stored is a checkpoint row.
type stored struct {
	id        int64
	cursor    eventstore.Cursor
	treeSize  int64
	root      []byte
	keyID     string
	signature []byte
	signedAt  time.Time
}

func (c stored) view() domain.Checkpoint {
	return domain.Checkpoint{
		ID: c.id, Cursor: c.cursor.String(), TreeSize: c.treeSize, Root: hex.EncodeToString(c.root),
		KeyID: c.keyID, Signature: base64.RawURLEncoding.EncodeToString(c.signature), SignedAt: c.signedAt.UTC(),
	}
}

const checkpointColumns = `id, cursor_tx, cursor_position, tree_size, root, key_id, signature, signed_at`

// latestOrder is what "latest" means: the checkpoint covering the most of
// the log, the newest of equals.
const latestOrder = ` ORDER BY cursor_tx DESC, cursor_position DESC, id DESC LIMIT 1`

func scanCheckpoint(row pgx.Row) (stored, error) {
	var c stored
	err := row.Scan(&c.id, &c.cursor.TxID, &c.cursor.Position, &c.treeSize, &c.root, &c.keyID, &c.signature, &c.signedAt)
	return c, err
}

// load reads checkpoint id, or the latest for id 0. It reports NOT_FOUND
// as a domain error.
func (s *Service) load(ctx context.Context, a pg.Actor, id int64) (stored, error) {
	var c stored
	err := pg.InTx(ctx, s.pool, a, func(tx pgx.Tx) error {
		var err error
		if id == 0 {
			c, err = scanCheckpoint(tx.QueryRow(ctx, `SELECT `+checkpointColumns+` FROM ledger_checkpoints`+latestOrder))
		} else {
			c, err = scanCheckpoint(tx.QueryRow(ctx, `SELECT `+checkpointColumns+` FROM ledger_checkpoints WHERE id = $1`, id))
		}
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		if id == 0 {
			return c, domain.Errorf(domain.CodeNotFound, "No ledger checkpoint has been signed yet.")
		}
		return c, domain.Errorf(domain.CodeNotFound, "Ledger checkpoint %d does not exist.", id)
	}
	if err != nil {
		return c, fmt.Errorf("load checkpoint: %w", err)
	}
	return c, nil
}

// Checkpoint returns checkpoint id, or the latest one for id 0; NOT_FOUND
// when there is none.
func (s *Service) Checkpoint(ctx context.Context, id int64) (domain.Checkpoint, error) {
	c, err := s.load(ctx, writer, id)
	if err != nil {
		return domain.Checkpoint{}, err
	}
	return c.view(), nil
}

// LatestCheckpoint returns the checkpoint covering the most of the log;
// NOT_FOUND when none was signed yet.
func (s *Service) LatestCheckpoint(ctx context.Context) (domain.Checkpoint, error) {
	return s.Checkpoint(ctx, 0)
}

// head returns the newest cursor below the horizon, and false for an empty
// feed.
func (s *Service) head(ctx context.Context) (eventstore.Cursor, bool, error) {
	var c eventstore.Cursor
	err := pg.InTx(ctx, s.pool, auditor, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT tx_id, position FROM events
			WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
			ORDER BY tx_id DESC, position DESC LIMIT 1`).Scan(&c.TxID, &c.Position)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return c, false, nil
	}
	if err != nil {
		return c, false, fmt.Errorf("feed head: %w", err)
	}
	return c, true, nil
}

// scan calls fn with the hash of every event from the start of the feed up
// to and including upTo, in feed order, reading pages of s.page hashes in
// short read-only transactions. upTo must be below the horizon (it was,
// when a checkpoint chose it), so the events up to it are final and pages
// read at different times agree.
func (s *Service) scan(ctx context.Context, upTo eventstore.Cursor, fn func(c eventstore.Cursor, hash []byte) error) error {
	var after eventstore.Cursor
	for {
		n := 0
		err := pg.InTx(ctx, s.pool, auditor, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, `SELECT tx_id, position, hash FROM events
				WHERE (tx_id, position) > ($1::xid8, $2::bigint) AND (tx_id, position) <= ($3::xid8, $4::bigint)
				ORDER BY tx_id, position LIMIT $5`,
				after.TxID, after.Position, upTo.TxID, upTo.Position, s.page)
			if err != nil {
				return err
			}
			defer rows.Close()
			var (
				c    eventstore.Cursor
				hash []byte
			)
			for rows.Next() {
				if err := rows.Scan(&c.TxID, &c.Position, &hash); err != nil {
					return err
				}
				if err := fn(c, hash); err != nil {
					return err
				}
				after = c
				n++
			}
			return rows.Err()
		})
		if err != nil {
			return fmt.Errorf("read event hashes after %s: %w", after, err)
		}
		if n < s.page {
			return nil
		}
	}
}

// Root computes the Merkle tree head and size over the log up to and
// including upTo.
func (s *Service) Root(ctx context.Context, upTo eventstore.Cursor) (Hash, int64, error) {
	var b Builder
	err := s.scan(ctx, upTo, func(_ eventstore.Cursor, hash []byte) error {
		b.AddEventHash(hash)
		return nil
	})
	return b.Root(), int64(b.Size()), err
}

// CreateOptions tunes Create.
type CreateOptions struct {
	// OnlyIfMoved skips signing when the latest checkpoint already covers
	// the feed's head; Create then returns that checkpoint and false.
	OnlyIfMoved bool
	// Guard runs in the transaction that stores the checkpoint, which
	// rolls back when it fails: a worker checks its lease there.
	Guard func(ctx context.Context, tx pgx.Tx) error
}

// Create signs a checkpoint over the log up to the newest cursor below the
// horizon, stores it (registering the signing key if new) and returns it,
// and whether it is new.
func (s *Service) Create(ctx context.Context, o CreateOptions) (domain.Checkpoint, bool, error) {
	if s.key == nil {
		return domain.Checkpoint{}, false, ErrNoKey
	}
	head, ok, err := s.head(ctx)
	if err != nil {
		return domain.Checkpoint{}, false, err
	}
	if !ok {
		return domain.Checkpoint{}, false, ErrEmptyLog
	}
	if o.OnlyIfMoved {
		latest, err := s.load(ctx, writer, 0)
		switch {
		case err == nil && !latest.cursor.Less(head):
			return latest.view(), false, nil
		case err != nil && domain.ErrorCode(err) != domain.CodeNotFound:
			return domain.Checkpoint{}, false, err
		}
	}
	root, size, err := s.Root(ctx, head)
	if err != nil {
		return domain.Checkpoint{}, false, err
	}
	cp := domain.Checkpoint{
		Cursor: head.String(), TreeSize: size, Root: hex.EncodeToString(root[:]),
		SignedAt: s.clock.Now().UTC().Truncate(time.Microsecond),
	}
	if err := sign(&cp, s.key); err != nil {
		return domain.Checkpoint{}, false, err
	}
	sig, _ := base64.RawURLEncoding.DecodeString(cp.Signature)
	err = pg.InTx(ctx, s.pool, writer, func(tx pgx.Tx) error {
		if o.Guard != nil {
			if err := o.Guard(ctx, tx); err != nil {
				return err
			}
		}
		if _, err := registerKey(ctx, tx, s.key.Public().(ed25519.PublicKey)); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `INSERT INTO ledger_checkpoints (cursor_tx, cursor_position, tree_size, root, key_id, signature, signed_at)
			VALUES ($1::xid8, $2, $3, $4, $5, $6, $7) RETURNING id`,
			head.TxID, head.Position, size, root[:], cp.KeyID, sig, cp.SignedAt).Scan(&cp.ID)
	})
	if err != nil {
		return domain.Checkpoint{}, false, fmt.Errorf("store checkpoint: %w", err)
	}
	return cp, true, nil
}

// Verification is what Verify found.
type Verification struct {
	Checkpoint domain.Checkpoint
	// Problem is empty when the checkpoint's signature verifies and the
	// log up to its cursor still has its size and root; otherwise it says
	// what does not hold.
	Problem string
}

// Verify checks checkpoint id (the latest for 0): its signature with the
// stored public key, then the Merkle root recomputed from the log up to its
// cursor. An error means it could not check; a Verification with a Problem
// means the check failed.
func (s *Service) Verify(ctx context.Context, id int64) (Verification, error) {
	c, err := s.load(ctx, auditor, id)
	if err != nil {
		return Verification{}, err
	}
	v := Verification{Checkpoint: c.view()}
	var pub []byte
	err = pg.InTx(ctx, s.pool, auditor, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT public_key FROM ledger_signing_keys WHERE key_id = $1`, c.keyID).Scan(&pub)
	})
	if err != nil {
		return v, fmt.Errorf("load key %s: %w", c.keyID, err)
	}
	if err := VerifySignature(v.Checkpoint, pub); err != nil {
		v.Problem = err.Error()
		return v, nil
	}
	root, size, err := s.Root(ctx, c.cursor)
	if err != nil {
		return v, err
	}
	switch {
	case size != c.treeSize:
		v.Problem = fmt.Sprintf("the log up to cursor %s holds %d events, the checkpoint signed %d: events were added or removed", c.cursor, size, c.treeSize)
	case !bytes.Equal(root[:], c.root):
		v.Problem = fmt.Sprintf("the Merkle root of the log up to cursor %s is %x, the checkpoint signed %x: events were rewritten", c.cursor, root[:], c.root)
	}
	return v, nil
}

// Proof returns the inclusion proof of eventID in checkpoint checkpointID
// (the latest for 0). It recomputes the tree from the log and refuses
// (INTERNAL) to hand out a proof when the log no longer matches the signed
// root.
func (s *Service) Proof(ctx context.Context, eventID uuid.UUID, checkpointID int64) (domain.InclusionProof, error) {
	c, err := s.load(ctx, writer, checkpointID)
	if err != nil {
		return domain.InclusionProof{}, err
	}
	var (
		ev    eventstore.Cursor
		hash  []byte
		index int64
	)
	err = pg.InTx(ctx, s.pool, auditor, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT tx_id, position, hash FROM events WHERE event_id = $1`, eventID).Scan(&ev.TxID, &ev.Position, &hash)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.InclusionProof{}, domain.Errorf(domain.CodeNotFound, "Event %s does not exist.", eventID)
	}
	if err != nil {
		return domain.InclusionProof{}, fmt.Errorf("load event: %w", err)
	}
	if c.cursor.Less(ev) {
		return domain.InclusionProof{}, domain.Errorf(domain.CodeConflict,
			"Event %s (cursor %s) is not covered by checkpoint %d, which ends at cursor %s; ask again after the next checkpoint.",
			eventID, ev, c.id, c.cursor)
	}

	select {
	case s.proofs <- struct{}{}:
		defer func() { <-s.proofs }()
	case <-time.After(proofWait):
		return domain.InclusionProof{}, &domain.Error{Code: domain.CodeBusy, Message: "Too many proofs are being computed; retry shortly.", RetryAfterSeconds: 5}
	case <-ctx.Done():
		return domain.InclusionProof{}, ctx.Err()
	}

	err = pg.InTx(ctx, s.pool, auditor, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT count(*) FROM events WHERE (tx_id, position) < ($1::xid8, $2::bigint)`, ev.TxID, ev.Position).Scan(&index)
	})
	if err != nil {
		return domain.InclusionProof{}, fmt.Errorf("leaf index: %w", err)
	}
	if index >= c.treeSize {
		return domain.InclusionProof{}, fmt.Errorf("checkpoint %d: event %s is leaf %d of a %d-leaf tree: the log no longer matches the checkpoint", c.id, eventID, index, c.treeSize)
	}
	pb, err := NewPathBuilder(uint64(index), uint64(c.treeSize))
	if err != nil {
		return domain.InclusionProof{}, err
	}
	err = s.scan(ctx, c.cursor, func(_ eventstore.Cursor, h []byte) error { return pb.AddEventHash(h) })
	if err != nil {
		return domain.InclusionProof{}, fmt.Errorf("checkpoint %d: %w", c.id, err)
	}
	root, path, err := pb.Result()
	if err != nil {
		return domain.InclusionProof{}, fmt.Errorf("checkpoint %d: the log no longer matches it: %w", c.id, err)
	}
	if !bytes.Equal(root[:], c.root) {
		return domain.InclusionProof{}, fmt.Errorf("checkpoint %d: the log up to %s no longer has the signed root: run mana ledger verify --checkpoint %d", c.id, c.cursor, c.id)
	}
	p := domain.InclusionProof{
		EventID: eventID, Cursor: ev.String(), EventHash: hex.EncodeToString(hash),
		LeafIndex: index, TreeSize: c.treeSize, AuditPath: make([]string, len(path)), Checkpoint: c.view(),
	}
	for i, h := range path {
		p.AuditPath[i] = hex.EncodeToString(h[:])
	}
	return p, nil
}

// SignerOptions configures RunSigner.
type SignerOptions struct {
	// Interval between checkpoints; a checkpoint is signed only when the
	// feed's head moved since the latest one.
	Interval time.Duration
	// Guard runs in each checkpoint's storing transaction (the lease
	// check).
	Guard func(ctx context.Context, tx pgx.Tx) error
	// Publish announces a new checkpoint (on NATS); its failure is logged.
	Publish func(ctx context.Context, cp domain.Checkpoint) error
	Logger  *slog.Logger
}

// RunSigner signs a checkpoint now and then every Interval while the head
// moves, until ctx ends. A failed round is logged and retried at the next
// tick.
func (s *Service) RunSigner(ctx context.Context, o SignerOptions) error {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Interval <= 0 {
		o.Interval = 5 * time.Minute
	}
	if _, err := s.RegisterKey(ctx); err != nil && ctx.Err() == nil {
		o.Logger.Error("checkpoint signer: register key", "error", err)
	}
	for {
		cp, created, err := s.Create(ctx, CreateOptions{OnlyIfMoved: true, Guard: o.Guard})
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrEmptyLog):
		case err != nil:
			o.Logger.Error("checkpoint signer: round failed", "error", err)
		case created:
			o.Logger.Info("ledger checkpoint signed", "id", cp.ID, "cursor", cp.Cursor, "tree_size", cp.TreeSize, "root", cp.Root, "key_id", cp.KeyID)
			if o.Publish != nil {
				if err := o.Publish(ctx, cp); err != nil {
					o.Logger.Warn("checkpoint signer: publish", "id", cp.ID, "error", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(o.Interval):
		}
	}
}
