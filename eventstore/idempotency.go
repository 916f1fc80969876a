package eventstore

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"regexp"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore/internal/db"
)

// idempotencyKeyPattern is the contract for keys: 1–255 characters of
// [A-Za-z0-9_.:-].
var idempotencyKeyPattern = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,255}$`)

// ValidIdempotencyKey reports whether key satisfies the key contract.
func ValidIdempotencyKey(key string) bool { return idempotencyKeyPattern.MatchString(key) }

// reserveIdempotency claims the key for this transaction, or returns the
// committed receipt to replay. The INSERT blocks while a concurrent
// transaction holds the same key, so a duplicate waits for the first request
// and replays its result; if the first rolled back (a 4xx stores nothing),
// the INSERT succeeds and this request is a new attempt.
func (tx *Tx) reserveIdempotency(ctx context.Context, idem *Idempotency, requestHash []byte) (*domain.Receipt, error) {
	if !ValidIdempotencyKey(idem.Key) {
		return nil, &domain.Error{Code: domain.CodeValidationFailed, Message: "Invalid idempotency key.",
			Details: []domain.FieldError{{Field: "idempotencyKey", Message: "must be 1-255 characters of A-Z a-z 0-9 _ . : -"}}}
	}
	params := db.IdempotencyReserveParams{
		Subject: idem.Subject, Principal: idem.Principal, Operation: tx.cmd.Name, Key: idem.Key,
		RequestHash: requestHash,
	}
	if u := tx.cmd.Actor.UserID; u != uuid.Nil {
		params.UserID = uuid.NullUUID{UUID: u, Valid: true}
	}
	if idem.TTL > 0 {
		params.ExpiresAt = pgtype.Timestamptz{Time: tx.now.Add(idem.TTL), Valid: true}
	}
	_, err := tx.q.IdempotencyReserve(ctx, params)
	if err == nil {
		return nil, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("reserve idempotency key: %w", err)
	}
	row, err := tx.q.IdempotencyGet(ctx, db.IdempotencyGetParams{
		Subject: idem.Subject, Principal: idem.Principal, Operation: tx.cmd.Name, Key: idem.Key,
	})
	if errors.Is(err, pgx.ErrNoRows) {
		// Removed between the two statements (expiry or erasure): run again.
		return nil, ErrVersionConflict
	}
	if err != nil {
		return nil, fmt.Errorf("read idempotency key: %w", err)
	}
	if subtle.ConstantTimeCompare(row.RequestHash, requestHash) != 1 {
		return nil, domain.Errorf(domain.CodeIdempotencyKeyReused,
			"This idempotency key was already used for a different request.")
	}
	return &domain.Receipt{
		Status:   int(row.Status),
		Body:     row.Response,
		Position: row.Position.String,
		Replayed: true,
	}, nil
}

// completeIdempotency queues, for the batch sent before the commit, the
// storing of r under the reserved key, or, when r is an error, the release
// of the reservation: errors are never stored for replay, though the
// command commits what it recorded (an expiry, a revocation).
func (tx *Tx) completeIdempotency(idem *Idempotency, r domain.Receipt) {
	if r.Status >= 400 {
		tx.Queue(db.IdempotencyReleaseSQL, idem.Subject, idem.Principal, tx.cmd.Name, idem.Key)
		return
	}
	tx.Queue(db.IdempotencyCompleteSQL, idem.Subject, idem.Principal, tx.cmd.Name, idem.Key,
		int32(r.Status), r.Body, pgtype.Text{String: r.Position, Valid: r.Position != ""})
}
