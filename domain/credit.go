package domain

import (
	"fmt"

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

// Ledger account names.
const (
	AccountSignupBonus = "system:signup_bonus"
)

// UserFreeAccount is the ledger account of a user's free credits.
func UserFreeAccount(user uuid.UUID) string { return fmt.Sprintf("user:%s:free", user) }

// CreditSignupBonusGranted records the one-time signup bonus, granted to the
// free bucket in the registration's transaction.
type CreditSignupBonusGranted struct {
	UserID   uuid.UUID `json:"userId"`
	Amount   Credits   `json:"amount"`
	Postings []Posting `json:"postings"`
}

// EventType implements Event.
func (CreditSignupBonusGranted) EventType() string { return "credit.signup_bonus_granted" }

// SchemaVersion implements Event.
func (CreditSignupBonusGranted) SchemaVersion() int { return 1 }

// NewSignupBonus returns the bonus event for user with its postings.
func NewSignupBonus(user uuid.UUID, amount Credits) CreditSignupBonusGranted {
	return CreditSignupBonusGranted{UserID: user, Amount: amount, Postings: []Posting{
		{Account: UserFreeAccount(user), Amount: amount},
		{Account: AccountSignupBonus, Amount: -amount},
	}}
}

func init() {
	register(func() Event { return &CreditSignupBonusGranted{} })
}
