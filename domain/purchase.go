package domain

import (
	"context"
	"time"

	"github.com/google/uuid"
)

// Streams of the purchase side.
const (
	StreamPurchase = "purchase"
	// StreamPayments records webhook facts that belong to no purchase.
	StreamPayments = "payments"
)

// Purchase statuses.
const (
	PurchaseStatusPending   = "pending"
	PurchaseStatusCompleted = "completed"
	PurchaseStatusFailed    = "failed"
)

// PackageUpdated records a change to a credit package; absent fields keep
// their value.
type PackageUpdated struct {
	PackageID  uuid.UUID `json:"packageId"`
	Name       *string   `json:"name,omitempty"`
	Credits    *int64    `json:"credits,omitempty"`
	PriceCents *int64    `json:"priceCents,omitempty"`
	SortOrder  *int      `json:"sortOrder,omitempty"`
	Active     *bool     `json:"active,omitempty"`
}

// PaymentProviderStripe is the payment provider of every purchase so far.
const PaymentProviderStripe = "stripe"

// PurchaseCreated records a checkout started for a package: a Stripe
// PaymentIntent (Kind "payment_intent") or Checkout Session ("checkout").
//
// Version 2 added Provider, the payment provider ProviderID belongs to.
// Version 1 had no such field; every v1 purchase was a Stripe one, so the
// v1 → v2 upcaster (eventstore/upcasters.go) sets "stripe".
type PurchaseCreated struct {
	PurchaseID  uuid.UUID `json:"purchaseId"`
	UserID      uuid.UUID `json:"userId"`
	PackageID   uuid.UUID `json:"packageId"`
	Credits     Credits   `json:"credits"`
	AmountCents int64     `json:"amountCents"`
	Currency    string    `json:"currency"`
	Kind        string    `json:"kind"`
	// Provider is the payment provider: PaymentProviderStripe.
	Provider string `json:"provider"`
	// ProviderID is the provider's id of the payment: the PaymentIntent or
	// Checkout Session id.
	ProviderID string `json:"providerId"`
}

// PurchaseCompleted records the payment that granted a purchase's credits.
type PurchaseCompleted struct {
	PurchaseID    uuid.UUID `json:"purchaseId"`
	UserID        uuid.UUID `json:"userId"`
	StripeEventID string    `json:"stripeEventId"`
	// Unclaimed is set when the account was erased before the payment:
	// the credits went to system:unclaimed.
	Unclaimed bool `json:"unclaimed,omitempty"`
}

// PurchaseFailed records a payment that failed or a checkout that expired.
type PurchaseFailed struct {
	PurchaseID    uuid.UUID `json:"purchaseId"`
	UserID        uuid.UUID `json:"userId"`
	StripeEventID string    `json:"stripeEventId"`
	Reason        string    `json:"reason"`
}

// PurchasePaymentRejected records a verified webhook the service refused to
// grant: its amount or currency did not match the purchase, or it named no
// known purchase (then UserID and PurchaseID may be zero). It is a
// security event.
type PurchasePaymentRejected struct {
	PurchaseID    uuid.UUID `json:"purchaseId"`
	UserID        uuid.UUID `json:"userId"`
	StripeEventID string    `json:"stripeEventId"`
	Reason        string    `json:"reason"`
	AmountCents   int64     `json:"amountCents"`
	Currency      string    `json:"currency"`
}

// CreditPurchased records bought credits: to the paid bucket, or to
// system:unclaimed for an erased account.
type CreditPurchased struct {
	TransactionID uuid.UUID `json:"transactionId"`
	UserID        uuid.UUID `json:"userId"`
	PurchaseID    uuid.UUID `json:"purchaseId"`
	Amount        Credits   `json:"amount"`
	Postings      []Posting `json:"postings"`
}

// EventType implements Event.
func (PackageUpdated) EventType() string { return "package.updated" }

// EventType implements Event.
func (PurchaseCreated) EventType() string { return "purchase.created" }

// EventType implements Event.
func (PurchaseCompleted) EventType() string { return "purchase.completed" }

// EventType implements Event.
func (PurchaseFailed) EventType() string { return "purchase.failed" }

// EventType implements Event.
func (PurchasePaymentRejected) EventType() string { return "purchase.payment_rejected" }

// EventType implements Event.
func (CreditPurchased) EventType() string { return "credit.purchased" }

// SchemaVersion implements Event.
func (PackageUpdated) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (PurchaseCreated) SchemaVersion() int { return 2 }

// SchemaVersion implements Event.
func (PurchaseCompleted) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (PurchaseFailed) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (PurchasePaymentRejected) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (CreditPurchased) SchemaVersion() int { return 1 }

// Account implements CreditEvent.
func (e CreditPurchased) Account() uuid.UUID { return e.UserID }

// Entries implements CreditEvent.
func (e CreditPurchased) Entries() []Posting { return e.Postings }

// NewCreditPurchased returns the grant of a paid purchase: to the user's
// paid bucket, or to system:unclaimed when the account is gone.
func NewCreditPurchased(txID, user, purchase uuid.UUID, amount Credits, unclaimed bool) CreditPurchased {
	to := UserPaidAccount(user)
	if unclaimed {
		to = AccountUnclaimed
	}
	return CreditPurchased{TransactionID: txID, UserID: user, PurchaseID: purchase, Amount: amount,
		Postings: []Posting{{Account: to, Amount: amount}, {Account: AccountPurchases, Amount: -amount}}}
}

func init() {
	register(func() Event { return &PackageUpdated{} })
	register(func() Event { return &PurchaseCreated{} })
	register(func() Event { return &PurchaseCompleted{} })
	register(func() Event { return &PurchaseFailed{} })
	register(func() Event { return &PurchasePaymentRejected{} })
	register(func() Event { return &CreditPurchased{} })
}

// Package is a credit package as GET /credits/packages lists it.
type Package struct {
	ID         uuid.UUID `json:"id"`
	Name       string    `json:"name"`
	Credits    Credits   `json:"credits"`
	PriceCents int64     `json:"priceCents"`
	Currency   string    `json:"currency"`
	SortOrder  int       `json:"sortOrder"`
}

// PurchaseView is a purchase as the API shows it.
type PurchaseView struct {
	ID          uuid.UUID  `json:"id"`
	PackageID   uuid.UUID  `json:"packageId"`
	Credits     Credits    `json:"credits"`
	AmountCents int64      `json:"amount"`
	Currency    string     `json:"currency"`
	Status      string     `json:"status"`
	CreatedAt   time.Time  `json:"createdAt"`
	CompletedAt *time.Time `json:"completedAt"`
}

// PurchaseStarted is the answer to POST /credits/purchase: the client
// secret of the PaymentIntent (or the Checkout URL for payment links).
type PurchaseStarted struct {
	PurchaseID   uuid.UUID `json:"purchaseId"`
	ClientSecret string    `json:"clientSecret,omitempty"`
	URL          string    `json:"url,omitempty"`
	AmountCents  int64     `json:"amount"`
	Credits      Credits   `json:"credits"`
}

// Purchases is the purchases port the API consumes.
type Purchases interface {
	Packages(ctx context.Context) ([]Package, error)
	// Start creates a purchase and its Stripe PaymentIntent (checkout
	// false) or Checkout Session (true). PAYMENTS_NOT_CONFIGURED without a
	// Stripe key.
	Start(ctx context.Context, user uuid.UUID, packageID uuid.UUID, checkout bool, meta RequestMeta) (PurchaseStarted, Written, error)
	Purchase(ctx context.Context, user, purchase uuid.UUID, minPosition string) (PurchaseView, error)
	List(ctx context.Context, user uuid.UUID, minPosition string) ([]PurchaseView, error)
	// Webhook verifies and applies a Stripe webhook: INVALID_SIGNATURE
	// for a bad, missing or stale signature; PAYMENTS_NOT_CONFIGURED
	// without a webhook secret.
	Webhook(ctx context.Context, payload []byte, signature string) error
}
