package domain

import (
	"time"

	"github.com/google/uuid"
)

// Account is a user's credit account as decisions see it: the buckets, the
// totals and the stream version, kept current in the append transaction so
// a decision never replays history.
type Account struct {
	UserID      uuid.UUID
	Version     int64
	Free        Credits
	Paid        Credits
	Held        Credits
	TotalEarned Credits
	TotalSpent  Credits
	CreatedAt   time.Time
	// LastDailyGrant is the UTC day (YYYY-MM-DD) of the last daily grant.
	LastDailyGrant string
}

// Balance is the balance object of GET /credits/balance and every
// newBalance: balance = free + paid (spendable now); held credits are
// reserved and not in balance; balance + heldCredits = totalEarned −
// totalSpent.
type Balance struct {
	Balance              Credits `json:"balance"`
	FreeCreditsRemaining Credits `json:"freeCreditsRemaining"`
	PaidBalance          Credits `json:"paidBalance"`
	HeldCredits          Credits `json:"heldCredits"`
	TotalEarned          Credits `json:"totalEarned"`
	TotalSpent           Credits `json:"totalSpent"`
	DailyFreeCredits     Credits `json:"dailyFreeCredits"`
}

// Balance returns a's balance object; daily is the configured daily amount.
func (a Account) Balance(daily Credits) Balance {
	return Balance{
		Balance: a.Free + a.Paid, FreeCreditsRemaining: a.Free, PaidBalance: a.Paid, HeldCredits: a.Held,
		TotalEarned: a.TotalEarned, TotalSpent: a.TotalSpent, DailyFreeCredits: daily,
	}
}

// Apply folds a credit event of this account into a: the user's postings
// move the buckets; the event's kind moves the totals. Projections and
// ledger verification fold with the same function.
func (a *Account) Apply(ev CreditEvent) {
	free, paid, held := UserFreeAccount(a.UserID), UserPaidAccount(a.UserID), UserHeldAccount(a.UserID)
	for _, p := range ev.Entries() {
		switch p.Account {
		case free:
			a.Free += p.Amount
		case paid:
			a.Paid += p.Amount
		case held:
			a.Held += p.Amount
		}
	}
	switch e := ev.(type) {
	case CreditSignupBonusGranted:
		a.TotalEarned += e.Amount
	case *CreditSignupBonusGranted:
		a.TotalEarned += e.Amount
	case CreditDailyGranted:
		a.TotalEarned += e.Amount
		a.LastDailyGrant = e.Day
	case *CreditDailyGranted:
		a.TotalEarned += e.Amount
		a.LastDailyGrant = e.Day
	case CreditGranted:
		a.TotalEarned += e.Amount
	case *CreditGranted:
		a.TotalEarned += e.Amount
	case CreditAdjusted:
		a.adjustTotals(e.Amount)
	case *CreditAdjusted:
		a.adjustTotals(e.Amount)
	case CreditSpent:
		a.TotalSpent += e.Amount
	case *CreditSpent:
		a.TotalSpent += e.Amount
	case CreditHoldCaptured:
		a.TotalSpent += e.Captured.Total()
	case *CreditHoldCaptured:
		a.TotalSpent += e.Captured.Total()
	case CreditRefunded:
		a.TotalSpent -= e.Amount
	case *CreditRefunded:
		a.TotalSpent -= e.Amount
	case CreditWrittenOff:
		a.TotalSpent += e.Amount
	case *CreditWrittenOff:
		a.TotalSpent += e.Amount
	case CreditPurchased:
		a.TotalEarned += a.paidPart(e.Postings)
	case *CreditPurchased:
		a.TotalEarned += a.paidPart(e.Postings)
	}
}

// paidPart is what postings add to the user's paid bucket: a purchase for
// an erased account posts to system:unclaimed and earns the user nothing.
func (a *Account) paidPart(ps []Posting) Credits {
	var n Credits
	for _, p := range ps {
		if p.Account == UserPaidAccount(a.UserID) {
			n += p.Amount
		}
	}
	return n
}

func (a *Account) adjustTotals(amount Credits) {
	if amount > 0 {
		a.TotalEarned += amount
	} else {
		a.TotalSpent -= amount
	}
}

// Day returns t's UTC day as YYYY-MM-DD.
func Day(t time.Time) string { return t.UTC().Format(time.DateOnly) }

// DailyGrant returns the daily free credits due before a debit at now: on
// the first debit of a UTC day, for an account created before that day,
// when the amount is positive. No back-fill, no cap.
func (a Account) DailyGrant(now time.Time, amount Credits) (CreditDailyGranted, bool) {
	today := Day(now)
	if amount <= 0 || a.LastDailyGrant == today || Day(a.CreatedAt) >= today {
		return CreditDailyGranted{}, false
	}
	return CreditDailyGranted{UserID: a.UserID, Amount: amount, Day: today, Postings: []Posting{
		{Account: UserFreeAccount(a.UserID), Amount: amount},
		{Account: AccountDailyGrant, Amount: -amount},
	}}, true
}

// take splits amount over the buckets, free first; false when the
// spendable balance is short.
func (a Account) take(amount Credits) (Split, bool) {
	if amount <= 0 || a.Free+a.Paid < amount {
		return Split{}, false
	}
	f := min(a.Free, amount)
	return Split{Free: f, Paid: amount - f}, true
}

func insufficient(a Account, amount Credits) error {
	return Errorf(CodeInsufficientCredits, "Insufficient credits: %d requested, %d available.", amount, a.Free+a.Paid)
}

// Spend decides a spend of amount for app: free credits first, then paid;
// INSUFFICIENT_CREDITS when the balance is short.
func (a Account) Spend(txID uuid.UUID, app string, amount Credits, description string, metadata map[string]any) (CreditSpent, error) {
	s, ok := a.take(amount)
	if !ok {
		return CreditSpent{}, insufficient(a, amount)
	}
	return CreditSpent{TransactionID: txID, UserID: a.UserID, AppID: app, Amount: amount, Split: s,
		Description: description, Metadata: metadata, Postings: debit(a.UserID, s, AppRevenueAccount(app))}, nil
}

// PlaceHold decides a hold of amount for app until expires: free first,
// then paid, moved to the held account.
func (a Account) PlaceHold(holdID uuid.UUID, app string, amount Credits, expires time.Time) (CreditHoldPlaced, error) {
	s, ok := a.take(amount)
	if !ok {
		return CreditHoldPlaced{}, insufficient(a, amount)
	}
	return CreditHoldPlaced{HoldID: holdID, UserID: a.UserID, AppID: app, Amount: amount, Split: s, ExpiresAt: expires,
		Postings: debit(a.UserID, s, UserHeldAccount(a.UserID))}, nil
}

// Adjust decides an admin correction: positive amounts go to free;
// negative ones come from free first, then paid, and never overdraw.
func (a Account) Adjust(txID uuid.UUID, amount Credits, reason string) (CreditAdjusted, error) {
	if amount == 0 {
		return CreditAdjusted{}, Errorf(CodeValidationFailed, "The adjustment must not be zero.")
	}
	if amount > 0 {
		return CreditAdjusted{TransactionID: txID, UserID: a.UserID, Amount: amount, Split: Split{Free: amount}, Reason: reason,
			Postings: []Posting{{Account: UserFreeAccount(a.UserID), Amount: amount}, {Account: AccountAdjustments, Amount: -amount}}}, nil
	}
	s, ok := a.take(-amount)
	if !ok {
		return CreditAdjusted{}, insufficient(a, -amount)
	}
	return CreditAdjusted{TransactionID: txID, UserID: a.UserID, Amount: amount, Split: Split{Free: -s.Free, Paid: -s.Paid}, Reason: reason,
		Postings: debit(a.UserID, s, AccountAdjustments)}, nil
}

// Grant decides an admin grant of amount to bucket "free" or "paid".
func (a Account) Grant(txID uuid.UUID, amount Credits, bucket, reason string) (CreditGranted, error) {
	if amount <= 0 {
		return CreditGranted{}, Errorf(CodeValidationFailed, "The amount must be a positive integer.")
	}
	acct := UserFreeAccount(a.UserID)
	switch bucket {
	case "", "free":
		bucket = "free"
	case "paid":
		acct = UserPaidAccount(a.UserID)
	default:
		return CreditGranted{}, Errorf(CodeValidationFailed, "The bucket must be free or paid.")
	}
	return CreditGranted{TransactionID: txID, UserID: a.UserID, Amount: amount, Bucket: bucket, Reason: reason,
		Postings: []Posting{{Account: acct, Amount: amount}, {Account: AccountGrants, Amount: -amount}}}, nil
}

// WriteOff decides writing off the whole spendable balance.
func (a Account) WriteOff() (CreditWrittenOff, bool) {
	s := Split{Free: a.Free, Paid: a.Paid}
	if s.Total() == 0 {
		return CreditWrittenOff{}, false
	}
	return CreditWrittenOff{UserID: a.UserID, Amount: s.Total(), Split: s, Postings: debit(a.UserID, s, AccountWriteoff)}, true
}

// debit moves split out of the user's buckets to counter.
func debit(user uuid.UUID, s Split, counter string) []Posting {
	var ps []Posting
	if s.Free != 0 {
		ps = append(ps, Posting{Account: UserFreeAccount(user), Amount: -s.Free})
	}
	if s.Paid != 0 {
		ps = append(ps, Posting{Account: UserPaidAccount(user), Amount: -s.Paid})
	}
	return append(ps, Posting{Account: counter, Amount: s.Total()})
}

// Hold statuses.
const (
	HoldActive   = "active"
	HoldCaptured = "captured"
	HoldReleased = "released"
	HoldExpired  = "expired"
)

// Hold is a hold's write-side state.
type Hold struct {
	ID        uuid.UUID
	UserID    uuid.UUID
	AppID     string
	Amount    Credits
	Split     Split
	Status    string
	ExpiresAt time.Time
	CreatedAt time.Time
	Captured  Credits
}

// ExpiredAt reports whether an active hold's time is up at now: a hold is
// expired once now ≥ expiresAt, whether or not its expiry was recorded.
func (h Hold) ExpiredAt(now time.Time) bool {
	return h.Status == HoldActive && !now.Before(h.ExpiresAt)
}

// Expire returns the event recording an active hold's expiry.
func (h Hold) Expire() CreditHoldExpired {
	return CreditHoldExpired{HoldID: h.ID, UserID: h.UserID, AppID: h.AppID, Returned: h.Split, Postings: h.giveBack(h.Split, Split{}, "")}
}

// Release decides giving an active hold back whole.
func (h Hold) Release() CreditHoldReleased {
	return CreditHoldReleased{HoldID: h.ID, UserID: h.UserID, AppID: h.AppID, Returned: h.Split, Postings: h.giveBack(h.Split, Split{}, "")}
}

// Capture decides the final charge of amount ≤ the hold: held-free first,
// the rest back to its original buckets.
func (h Hold) Capture(txID uuid.UUID, amount Credits) (CreditHoldCaptured, error) {
	if amount <= 0 {
		return CreditHoldCaptured{}, Errorf(CodeValidationFailed, "The amount must be a positive integer.")
	}
	if amount > h.Amount {
		return CreditHoldCaptured{}, Errorf(CodeCaptureExceedsHold, "Capture of %d exceeds the hold of %d.", amount, h.Amount)
	}
	cf := min(h.Split.Free, amount)
	captured := Split{Free: cf, Paid: amount - cf}
	returned := Split{Free: h.Split.Free - captured.Free, Paid: h.Split.Paid - captured.Paid}
	return CreditHoldCaptured{HoldID: h.ID, TransactionID: txID, UserID: h.UserID, AppID: h.AppID, Captured: captured, Returned: returned,
		Postings: h.giveBack(returned, captured, AppRevenueAccount(h.AppID))}, nil
}

// giveBack empties the held account: returned to the buckets, captured to
// counter.
func (h Hold) giveBack(returned, captured Split, counter string) []Posting {
	ps := []Posting{{Account: UserHeldAccount(h.UserID), Amount: -h.Amount}}
	if returned.Free != 0 {
		ps = append(ps, Posting{Account: UserFreeAccount(h.UserID), Amount: returned.Free})
	}
	if returned.Paid != 0 {
		ps = append(ps, Posting{Account: UserPaidAccount(h.UserID), Amount: returned.Paid})
	}
	if captured.Total() != 0 {
		ps = append(ps, Posting{Account: counter, Amount: captured.Total()})
	}
	return ps
}
