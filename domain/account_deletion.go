package domain

import "context"

// Why things end when an account is deleted: the reason of the
// session.revoked of each of its sessions and of the purchase.failed of
// each purchase still waiting for its payment.
const (
	RevokedAccountDeleted        = "account_deleted"
	PurchaseFailedAccountDeleted = "account_deleted"
)

// AccountDeletion is the port of DELETE /auth/account: a user erasing their
// own account.
type AccountDeletion interface {
	// DeleteAccount erases the principal's account once password (and,
	// with two-factor authentication on, code) is right. In one
	// transaction it revokes every session, releases the active holds,
	// fails the purchases still waiting for a payment, writes the
	// remaining balance off (credit.written_off), appends user.erased and
	// shreds the user's personal data: the data key, the email claim, the
	// stored idempotent responses and the credentials go, and the address
	// may register again (without a second signup bonus). The read models
	// drop the user's rows when they apply user.erased.
	//
	// A wrong password counts towards the account's lockout like a failed
	// login and answers INVALID_CREDENTIALS; a locked account answers
	// ACCOUNT_LOCKED. With two-factor authentication on, a missing code is
	// TWO_FACTOR_REQUIRED and a wrong one TWO_FACTOR_FAILED. A principal
	// whose account is already gone gets TOKEN_INVALID.
	DeleteAccount(ctx context.Context, p Principal, password, code string, meta RequestMeta) (Written, error)
}
