package domain

import (
	"context"
	"time"

	"github.com/google/uuid"
)

// Account features (SPEC §5): email verification, password reset, change
// password and the profile. The one-time tokens of verification and reset
// are credential material: their keyed hashes live in the credential table
// email_tokens and the raw token only in the sealed mail waiting to be sent,
// never in an event.

// Lifetimes of the one-time email tokens.
const (
	// ResetTokenTTL is how long a password-reset token is valid.
	ResetTokenTTL = time.Hour
	// VerifyTokenTTL is how long an email-verification token is valid.
	VerifyTokenTTL = 24 * time.Hour
)

// RevokedByPasswordReset is the reason of the sessions a completed password
// reset ends (every session of the user). A password change ends the other
// sessions with RevokedPasswordReset ("password_changed").
const RevokedByPasswordReset = "password_reset"

// Profile is the caller's own account as GET /auth/profile shows it.
type Profile struct {
	ID            uuid.UUID `json:"id"`
	Email         string    `json:"email"`
	Name          string    `json:"name"`
	Role          string    `json:"role"`
	EmailVerified bool      `json:"emailVerified"`
	CreatedAt     time.Time `json:"createdAt"`
}

// ProfileUpdate is a validated PATCH /auth/profile: nil fields stay as they
// are. The email address cannot be changed.
type ProfileUpdate struct {
	Name *string
}

// AccountRecovery is the port of the account features. The answers of
// ForgotPassword and ResendVerification never depend on whether the address
// belongs to an account: the API answers both with one constant body.
type AccountRecovery interface {
	// ForgotPassword mails a password-reset token (32 random bytes, valid
	// for ResetTokenTTL, single use) to the account of email, if there is
	// one. VALIDATION_FAILED only for a malformed address.
	ForgotPassword(ctx context.Context, email string, meta RequestMeta) error
	// ResendVerification mails a new verification token to the account of
	// email if there is one and its address is not verified yet.
	ResendVerification(ctx context.Context, email string, meta RequestMeta) error
	// ResetPassword sets a new password with a mailed reset token, revokes
	// every session of the user and clears a login lock. TOKEN_INVALID for
	// a bad, used or expired token.
	ResetPassword(ctx context.Context, token, newPassword string, meta RequestMeta) (Written, error)
	// VerifyEmail marks the address of the token's user verified.
	// TOKEN_INVALID for a bad, used or expired token.
	VerifyEmail(ctx context.Context, token string, meta RequestMeta) (Written, error)
	// ChangePassword replaces the principal's password after checking the
	// current one (INVALID_CREDENTIALS when wrong) and revokes the
	// principal's other sessions.
	ChangePassword(ctx context.Context, p Principal, currentPassword, newPassword string, meta RequestMeta) (Written, error)
	// Profile returns the principal's account.
	Profile(ctx context.Context, p Principal) (Profile, error)
	// UpdateProfile changes the principal's profile and returns it.
	UpdateProfile(ctx context.Context, p Principal, in ProfileUpdate, meta RequestMeta) (Profile, Written, error)
}

// UserVerificationRequested records that a verification mail was queued:
// at registration or on a resend. The token is not part of it.
type UserVerificationRequested struct {
	UserID    uuid.UUID `json:"userId"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// EventType implements Event.
func (UserVerificationRequested) EventType() string { return "user.verification_requested" }

// SchemaVersion implements Event.
func (UserVerificationRequested) SchemaVersion() int { return 1 }

// Ways an address gets verified.
const (
	// VerifiedByLink: the user sent back the mailed verification token.
	VerifiedByLink = "verification"
	// VerifiedByReset: a completed password reset proved the mailbox too.
	VerifiedByReset = "password_reset"
)

// UserEmailVerified records that the user proved control of the address.
type UserEmailVerified struct {
	UserID uuid.UUID `json:"userId"`
	// Via is VerifiedByLink or VerifiedByReset.
	Via string `json:"via"`
}

// EventType implements Event.
func (UserEmailVerified) EventType() string { return "user.email_verified" }

// SchemaVersion implements Event.
func (UserEmailVerified) SchemaVersion() int { return 1 }

// UserPasswordResetRequested records that a password-reset mail was queued
// for a known account. The token is not part of it; unknown addresses leave
// no trace.
type UserPasswordResetRequested struct {
	UserID    uuid.UUID `json:"userId"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// EventType implements Event.
func (UserPasswordResetRequested) EventType() string { return "user.password_reset_requested" }

// SchemaVersion implements Event.
func (UserPasswordResetRequested) SchemaVersion() int { return 1 }

// UserPasswordReset records a new password set with a reset token: every
// session of the user was revoked (each with its session.revoked) and a
// login lock, if any, was cleared.
type UserPasswordReset struct {
	UserID          uuid.UUID `json:"userId"`
	SessionsRevoked int       `json:"sessionsRevoked"`
	Unlocked        bool      `json:"unlocked"`
}

// EventType implements Event.
func (UserPasswordReset) EventType() string { return "user.password_reset" }

// SchemaVersion implements Event.
func (UserPasswordReset) SchemaVersion() int { return 1 }

// UserProfileUpdated records a new display name. The name is personal
// data, sealed with the user's key like the one in user.registered.
type UserProfileUpdated struct {
	UserID uuid.UUID `json:"userId"`
	Name   string    `json:"name"`
}

// EventType implements Event.
func (UserProfileUpdated) EventType() string { return "user.profile_updated" }

// SchemaVersion implements Event.
func (UserProfileUpdated) SchemaVersion() int { return 1 }

// DataSubject implements PersonalData.
func (e UserProfileUpdated) DataSubject() uuid.UUID { return e.UserID }

// PersonalFields implements PersonalData.
func (UserProfileUpdated) PersonalFields() []string { return []string{"name"} }

func init() {
	register(func() Event { return &UserVerificationRequested{} })
	register(func() Event { return &UserEmailVerified{} })
	register(func() Event { return &UserPasswordResetRequested{} })
	register(func() Event { return &UserPasswordReset{} })
	register(func() Event { return &UserProfileUpdated{} })
}
