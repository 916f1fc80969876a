package mail

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/internal/keyring"
)

// Payload is what a queued mail needs to be rendered. It is stored sealed
// (it holds the recipient and, for verification and reset, the raw
// one-time token) and only opened by the worker right before sending.
type Payload struct {
	// To is the recipient address.
	To string `json:"to"`
	// Token is the raw one-time token of a verification or reset mail.
	Token string `json:"token,omitempty"`
	// ExpiresAt is when Token stops working.
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	// At is when the mailed fact happened (token issued, login, reuse).
	At time.Time `json:"at"`
	// Device details of a notice.
	DeviceName string `json:"deviceName,omitempty"`
	IPAddress  string `json:"ipAddress,omitempty"`
	UserAgent  string `json:"userAgent,omitempty"`
}

// Queuer is where Enqueue writes: an eventstore.Tx queues the insert into
// the command's pipelined writes, committed with its events.
type Queuer interface {
	Queue(sql string, args ...any)
}

// outboxLabel binds a sealed payload to its outbox row.
func outboxLabel(id uuid.UUID) string { return "mail_outbox:" + id.String() }

// Enqueue queues a mail of kind for user in the caller's transaction: the
// mail exists if and only if the transaction commits, and the worker sends
// it after the commit. The payload is sealed with DATA_KEK; now is when it
// is first due.
func Enqueue(q Queuer, kr *keyring.Keyring, user uuid.UUID, kind string, p Payload, now time.Time) error {
	if kr == nil {
		return fmt.Errorf("mail: enqueue %s: no keyring", kind)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return err
	}
	raw, err := json.Marshal(p)
	if err != nil {
		return err
	}
	q.Queue(`INSERT INTO mail_outbox (id, user_id, kind, sealed, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $5)`,
		id, user, kind, kr.Wrap(outboxLabel(id), raw), now)
	return nil
}

// openPayload unseals an outbox row's payload.
func openPayload(kr *keyring.Keyring, id uuid.UUID, sealed []byte) (Payload, error) {
	raw, err := kr.Unwrap(outboxLabel(id), sealed)
	if err != nil {
		return Payload{}, err
	}
	var p Payload
	if err := json.Unmarshal(raw, &p); err != nil {
		return Payload{}, err
	}
	return p, nil
}
