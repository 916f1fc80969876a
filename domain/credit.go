package domain

import (
	"fmt"
	"regexp"
	"time"

	"github.com/google/uuid"
)

// Credits is an amount of credits. Money is never a float.
type Credits = int64

// StreamCreditAccount is the stream type of a user's credit account.
const StreamCreditAccount = "credit_account"

// Posting is one leg of a double-entry credit event: a signed amount on an
// account (positive increases it). A credit event's postings sum to zero.
type Posting struct {
	Account string  `json:"account"`
	Amount  Credits `json:"amount"`
}

// System ledger accounts (docs/ledger.md lists the postings of every
// credit event).
const (
	AccountSignupBonus = "system:signup_bonus"
	AccountDailyGrant  = "system:daily_grant"
	AccountPurchases   = "system:purchases"
	AccountGrants      = "system:grants"
	AccountAdjustments = "system:adjustments"
	AccountWriteoff    = "system:writeoff"
	AccountUnclaimed   = "system:unclaimed"
)

// UserFreeAccount is the ledger account of a user's free credits.
func UserFreeAccount(user uuid.UUID) string { return fmt.Sprintf("user:%s:free", user) }

// UserPaidAccount is the ledger account of a user's paid credits.
func UserPaidAccount(user uuid.UUID) string { return fmt.Sprintf("user:%s:paid", user) }

// UserHeldAccount is the ledger account of a user's credits under holds.
func UserHeldAccount(user uuid.UUID) string { return fmt.Sprintf("user:%s:held", user) }

// AppRevenueAccount is the ledger account an app's spends post to.
func AppRevenueAccount(app string) string { return "app:" + app + ":revenue" }

var appIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ValidAppID reports whether id is 1–64 characters of [a-z0-9][a-z0-9._-]*.
func ValidAppID(id string) bool { return appIDPattern.MatchString(id) }

// SumPostings returns the sum of ps; every credit event's is zero.
func SumPostings(ps []Posting) Credits {
	var s Credits
	for _, p := range ps {
		s += p.Amount
	}
	return s
}

// CreditEvent is implemented by every credit.* event: its account and the
// postings it makes.
type CreditEvent interface {
	Event
	Account() uuid.UUID
	Entries() []Posting
}

// Split is how an amount divides between the free and paid buckets.
type Split struct {
	Free Credits `json:"free"`
	Paid Credits `json:"paid"`
}

// Total returns Free + Paid.
func (s Split) Total() Credits { return s.Free + s.Paid }

// CreditSignupBonusGranted records the one-time signup bonus, granted to the
// free bucket in the registration's transaction.
type CreditSignupBonusGranted struct {
	UserID   uuid.UUID `json:"userId"`
	Amount   Credits   `json:"amount"`
	Postings []Posting `json:"postings"`
}

// NewSignupBonus returns the bonus event for user with its postings.
func NewSignupBonus(user uuid.UUID, amount Credits) CreditSignupBonusGranted {
	return CreditSignupBonusGranted{UserID: user, Amount: amount, Postings: []Posting{
		{Account: UserFreeAccount(user), Amount: amount},
		{Account: AccountSignupBonus, Amount: -amount},
	}}
}

// CreditDailyGranted records the daily free credits, granted on the first
// debit of a UTC day.
type CreditDailyGranted struct {
	UserID   uuid.UUID `json:"userId"`
	Amount   Credits   `json:"amount"`
	Day      string    `json:"day"`
	Postings []Posting `json:"postings"`
}

// CreditSpent records a spend: free credits first, then paid.
type CreditSpent struct {
	TransactionID uuid.UUID `json:"transactionId"`
	UserID        uuid.UUID `json:"userId"`
	AppID         string    `json:"appId"`
	Amount        Credits   `json:"amount"`
	Split         Split     `json:"split"`
	Description   string    `json:"description,omitempty"`
	// Metadata is the caller's JSON object, sealed as personal data.
	Metadata map[string]any `json:"metadata,omitempty"`
	Postings []Posting      `json:"postings"`
}

// CreditRefunded records credits given back for an earlier spend or
// capture, to the buckets they came from.
type CreditRefunded struct {
	TransactionID uuid.UUID `json:"transactionId"`
	UserID        uuid.UUID `json:"userId"`
	RefundOf      uuid.UUID `json:"refundOf"`
	AppID         string    `json:"appId"`
	Amount        Credits   `json:"amount"`
	Split         Split     `json:"split"`
	Reason        string    `json:"reason"`
	Postings      []Posting `json:"postings"`
}

// CreditGranted records credits an admin granted.
type CreditGranted struct {
	TransactionID uuid.UUID `json:"transactionId"`
	UserID        uuid.UUID `json:"userId"`
	Amount        Credits   `json:"amount"`
	Bucket        string    `json:"bucket"`
	Reason        string    `json:"reason"`
	Postings      []Posting `json:"postings"`
}

// CreditAdjusted records an admin correction, positive (to free) or
// negative (from free first, then paid).
type CreditAdjusted struct {
	TransactionID uuid.UUID `json:"transactionId"`
	UserID        uuid.UUID `json:"userId"`
	Amount        Credits   `json:"amount"`
	Split         Split     `json:"split"`
	Reason        string    `json:"reason"`
	Postings      []Posting `json:"postings"`
}

// CreditHoldPlaced records credits reserved for an app: free first, then
// paid, moved to the held account.
type CreditHoldPlaced struct {
	HoldID    uuid.UUID `json:"holdId"`
	UserID    uuid.UUID `json:"userId"`
	AppID     string    `json:"appId"`
	Amount    Credits   `json:"amount"`
	Split     Split     `json:"split"`
	ExpiresAt time.Time `json:"expiresAt"`
	Postings  []Posting `json:"postings"`
}

// CreditHoldCaptured records the final charge of a hold: Captured of it
// (held-free first) goes to the app; the rest returns to its buckets.
type CreditHoldCaptured struct {
	HoldID        uuid.UUID `json:"holdId"`
	TransactionID uuid.UUID `json:"transactionId"`
	UserID        uuid.UUID `json:"userId"`
	AppID         string    `json:"appId"`
	Captured      Split     `json:"captured"`
	Returned      Split     `json:"returned"`
	Postings      []Posting `json:"postings"`
}

// CreditHoldReleased records a hold given back whole by its app.
type CreditHoldReleased struct {
	HoldID   uuid.UUID `json:"holdId"`
	UserID   uuid.UUID `json:"userId"`
	AppID    string    `json:"appId"`
	Returned Split     `json:"returned"`
	Postings []Posting `json:"postings"`
}

// CreditHoldExpired records a hold whose time ran out, given back whole.
type CreditHoldExpired struct {
	HoldID   uuid.UUID `json:"holdId"`
	UserID   uuid.UUID `json:"userId"`
	AppID    string    `json:"appId"`
	Returned Split     `json:"returned"`
	Postings []Posting `json:"postings"`
}

// CreditWrittenOff records the balance written off when an account is
// deleted.
type CreditWrittenOff struct {
	UserID   uuid.UUID `json:"userId"`
	Amount   Credits   `json:"amount"`
	Split    Split     `json:"split"`
	Postings []Posting `json:"postings"`
}

// EventType implements Event.
func (e CreditSignupBonusGranted) EventType() string { return "credit.signup_bonus_granted" }

// EventType implements Event.
func (e CreditDailyGranted) EventType() string { return "credit.daily_granted" }

// EventType implements Event.
func (e CreditSpent) EventType() string { return "credit.spent" }

// EventType implements Event.
func (e CreditRefunded) EventType() string { return "credit.refunded" }

// EventType implements Event.
func (e CreditGranted) EventType() string { return "credit.granted" }

// EventType implements Event.
func (e CreditAdjusted) EventType() string { return "credit.adjusted" }

// EventType implements Event.
func (e CreditHoldPlaced) EventType() string { return "credit.hold_placed" }

// EventType implements Event.
func (e CreditHoldCaptured) EventType() string { return "credit.hold_captured" }

// EventType implements Event.
func (e CreditHoldReleased) EventType() string { return "credit.hold_released" }

// EventType implements Event.
func (e CreditHoldExpired) EventType() string { return "credit.hold_expired" }

// EventType implements Event.
func (e CreditWrittenOff) EventType() string { return "credit.written_off" }

// SchemaVersion implements Event.
func (CreditSignupBonusGranted) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (CreditDailyGranted) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (CreditSpent) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (CreditRefunded) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (CreditGranted) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (CreditAdjusted) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (CreditHoldPlaced) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (CreditHoldCaptured) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (CreditHoldReleased) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (CreditHoldExpired) SchemaVersion() int { return 1 }

// SchemaVersion implements Event.
func (CreditWrittenOff) SchemaVersion() int { return 1 }

// Account implements CreditEvent.
func (e CreditSignupBonusGranted) Account() uuid.UUID { return e.UserID }

// Account implements CreditEvent.
func (e CreditDailyGranted) Account() uuid.UUID { return e.UserID }

// Account implements CreditEvent.
func (e CreditSpent) Account() uuid.UUID { return e.UserID }

// Account implements CreditEvent.
func (e CreditRefunded) Account() uuid.UUID { return e.UserID }

// Account implements CreditEvent.
func (e CreditGranted) Account() uuid.UUID { return e.UserID }

// Account implements CreditEvent.
func (e CreditAdjusted) Account() uuid.UUID { return e.UserID }

// Account implements CreditEvent.
func (e CreditHoldPlaced) Account() uuid.UUID { return e.UserID }

// Account implements CreditEvent.
func (e CreditHoldCaptured) Account() uuid.UUID { return e.UserID }

// Account implements CreditEvent.
func (e CreditHoldReleased) Account() uuid.UUID { return e.UserID }

// Account implements CreditEvent.
func (e CreditHoldExpired) Account() uuid.UUID { return e.UserID }

// Account implements CreditEvent.
func (e CreditWrittenOff) Account() uuid.UUID { return e.UserID }

// Entries implements CreditEvent.
func (e CreditSignupBonusGranted) Entries() []Posting { return e.Postings }

// Entries implements CreditEvent.
func (e CreditDailyGranted) Entries() []Posting { return e.Postings }

// Entries implements CreditEvent.
func (e CreditSpent) Entries() []Posting { return e.Postings }

// Entries implements CreditEvent.
func (e CreditRefunded) Entries() []Posting { return e.Postings }

// Entries implements CreditEvent.
func (e CreditGranted) Entries() []Posting { return e.Postings }

// Entries implements CreditEvent.
func (e CreditAdjusted) Entries() []Posting { return e.Postings }

// Entries implements CreditEvent.
func (e CreditHoldPlaced) Entries() []Posting { return e.Postings }

// Entries implements CreditEvent.
func (e CreditHoldCaptured) Entries() []Posting { return e.Postings }

// Entries implements CreditEvent.
func (e CreditHoldReleased) Entries() []Posting { return e.Postings }

// Entries implements CreditEvent.
func (e CreditHoldExpired) Entries() []Posting { return e.Postings }

// Entries implements CreditEvent.
func (e CreditWrittenOff) Entries() []Posting { return e.Postings }

// DataSubject implements PersonalData.
func (e CreditSpent) DataSubject() uuid.UUID { return e.UserID }

// PersonalFields implements PersonalData.
func (CreditSpent) PersonalFields() []string { return []string{"description", "metadata"} }

func init() {
	register(func() Event { return &CreditSignupBonusGranted{} })
	register(func() Event { return &CreditDailyGranted{} })
	register(func() Event { return &CreditSpent{} })
	register(func() Event { return &CreditRefunded{} })
	register(func() Event { return &CreditGranted{} })
	register(func() Event { return &CreditAdjusted{} })
	register(func() Event { return &CreditHoldPlaced{} })
	register(func() Event { return &CreditHoldCaptured{} })
	register(func() Event { return &CreditHoldReleased{} })
	register(func() Event { return &CreditHoldExpired{} })
	register(func() Event { return &CreditWrittenOff{} })
}
