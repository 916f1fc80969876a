package domain

import (
	"context"
	"time"

	"github.com/google/uuid"
)

// Caller is who a credit command acts for: a user with their own token, an
// app with its service key, or an admin.
type Caller struct {
	// Kind is "user", "app" or "admin".
	Kind string
	// UserID is the user (or admin) behind the call; zero for apps.
	UserID uuid.UUID
	// AppID is the service key's app for Kind "app".
	AppID string
	// MaxSpendPerUserPerDay caps an app's daily spend per user; 0 = none.
	MaxSpendPerUserPerDay Credits
	Meta                  RequestMeta
}

// Principal returns the idempotency principal: "user:<id>", "app:<id>" or
// "admin:<id>".
func (c Caller) Principal() string {
	if c.Kind == "app" {
		return "app:" + c.AppID
	}
	return c.Kind + ":" + c.UserID.String()
}

// Transaction is one credit movement as the API shows it.
type Transaction struct {
	ID          uuid.UUID      `json:"id"`
	Type        string         `json:"type"`
	Amount      Credits        `json:"amount"`
	AppID       *string        `json:"appId"`
	Description *string        `json:"description"`
	Metadata    map[string]any `json:"metadata,omitempty"`
	HoldID      *uuid.UUID     `json:"holdId,omitempty"`
	CreatedAt   time.Time      `json:"createdAt"`
}

// UseInput is a validated spend.
type UseInput struct {
	Amount         Credits        `json:"amount"`
	AppID          string         `json:"appId"`
	Description    string         `json:"description"`
	Metadata       map[string]any `json:"metadata,omitempty"`
	IdempotencyKey string         `json:"-"`
}

// HoldInput is a validated hold placement.
type HoldInput struct {
	Amount         Credits `json:"amount"`
	AppID          string  `json:"appId"`
	TTLSeconds     int     `json:"ttlSeconds"`
	IdempotencyKey string  `json:"-"`
}

// AdminCreditInput is an admin grant, adjustment or refund.
type AdminCreditInput struct {
	UserID uuid.UUID `json:"userId"`
	Amount Credits   `json:"amount"`
	// Bucket is "free" or "paid" for grants.
	Bucket string `json:"bucket,omitempty"`
	// TransactionID names the spend or capture a refund reverses.
	TransactionID  uuid.UUID `json:"transactionId,omitempty"`
	Reason         string    `json:"reason"`
	IdempotencyKey string    `json:"-"`
}

// UsageDay is one row of GET /credits/usage.
type UsageDay struct {
	Day     string  `json:"day"`
	AppID   string  `json:"appId"`
	Credits Credits `json:"credits"`
	Count   int64   `json:"count"`
}

// CreditsService is the credits port the API consumes. Writes return a
// Receipt (status and body, replayable under idempotency); every decision
// reads the account's write-side state.
type CreditsService interface {
	Balance(ctx context.Context, user uuid.UUID, minPosition string) (Balance, error)
	Use(ctx context.Context, c Caller, user uuid.UUID, in UseInput) (Receipt, error)
	Transactions(ctx context.Context, user uuid.UUID, limit, offset int, minPosition string) ([]Transaction, error)
	Usage(ctx context.Context, user uuid.UUID, from, to time.Time, minPosition string) ([]UsageDay, error)
	PlaceHold(ctx context.Context, c Caller, user uuid.UUID, in HoldInput) (Receipt, error)
	CaptureHold(ctx context.Context, c Caller, user uuid.UUID, hold uuid.UUID, amount Credits, key string) (Receipt, error)
	ReleaseHold(ctx context.Context, c Caller, user uuid.UUID, hold uuid.UUID, key string) (Receipt, error)
	Grant(ctx context.Context, c Caller, in AdminCreditInput) (Receipt, error)
	Adjust(ctx context.Context, c Caller, in AdminCreditInput) (Receipt, error)
	Refund(ctx context.Context, c Caller, in AdminCreditInput) (Receipt, error)
	// BalanceAt folds the account's events up to a cursor or time.
	BalanceAt(ctx context.Context, user uuid.UUID, at string) (Balance, error)
	// AuthenticateApp checks a service key for appID.
	AuthenticateApp(ctx context.Context, appID, key string) (Caller, error)
}
