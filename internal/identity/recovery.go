package identity

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/mail"
	"github.com/manacore/mana/internal/pg"
)

// The account features of SPEC §5 (domain.AccountRecovery): email
// verification, password reset, change password and the profile.
//
// A one-time token is 32 random bytes, mailed base64url-encoded. Only its
// keyed hash (keyring.MAC under "email-token:<purpose>") is stored, in
// email_tokens; the raw token travels only in the sealed mail queued in
// mail_outbox in the same transaction as the event that records the
// request. Using a token spends every open token of that purpose of the
// user; an expired or spent token is TOKEN_INVALID, like an unknown one.

var _ domain.AccountRecovery = (*Service)(nil)

// Token purposes (email_tokens.purpose).
const (
	purposeVerify = "verify"
	purposeReset  = "reset"
)

// tokenBytes is the size of a one-time token.
const tokenBytes = 32

// errChangeCredentials answers a wrong current password.
var errChangeCredentials = domain.Errorf(domain.CodeInvalidCredentials, "The current password is wrong.")

func (s *Service) tokenHash(purpose string, raw []byte) []byte {
	return s.cfg.Store.Keyring().MAC("email-token:"+purpose, raw)
}

// decodeToken parses a mailed token; false for anything that cannot be
// one.
func decodeToken(tok string) ([]byte, bool) {
	if len(tok) != base64.RawURLEncoding.EncodedLen(tokenBytes) {
		return nil, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	return raw, err == nil && len(raw) == tokenBytes
}

// issueToken creates a one-time token of purpose for user, stores its keyed
// hash and queues the mail carrying it to email, all in tx. It returns when
// the token expires.
func (s *Service) issueToken(tx *eventstore.Tx, user uuid.UUID, email, purpose string) (time.Time, error) {
	raw := make([]byte, tokenBytes)
	if _, err := rand.Read(raw); err != nil {
		return time.Time{}, err
	}
	now := tx.Now()
	ttl, kind := domain.VerifyTokenTTL, mail.KindVerifyEmail
	if purpose == purposeReset {
		ttl, kind = domain.ResetTokenTTL, mail.KindResetPassword
	}
	expires := now.Add(ttl)
	tx.Queue(`INSERT INTO email_tokens (token_hash, user_id, purpose, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)`,
		s.tokenHash(purpose, raw), user, purpose, now, expires)
	err := mail.Enqueue(tx, s.cfg.Store.Keyring(), user, kind, mail.Payload{
		To: email, Token: base64.RawURLEncoding.EncodeToString(raw), ExpiresAt: expires, At: now,
	}, now)
	return expires, err
}

// tokenUser returns the user of a valid (known, unspent, unexpired) token,
// without spending it; false otherwise.
func (s *Service) tokenUser(ctx context.Context, hash []byte, purpose string) (uuid.UUID, bool, error) {
	var (
		user    uuid.UUID
		expires time.Time
		used    *time.Time
	)
	err := pg.QueryRow(ctx, s.pool, system, `SELECT user_id, expires_at, used_at FROM email_tokens WHERE token_hash = $1 AND purpose = $2`,
		[]any{hash, purpose}, &user, &expires, &used)
	if errors.Is(err, pgx.ErrNoRows) {
		return uuid.Nil, false, nil
	}
	if err != nil {
		return uuid.Nil, false, fmt.Errorf("look up token: %w", err)
	}
	return user, used == nil && s.now().Before(expires), nil
}

// spendToken checks and spends a token in tx: TOKEN_INVALID when it is
// unknown, spent or expired, or not user's. It spends every open token of
// the purpose of its user.
func spendToken(ctx context.Context, tx *eventstore.Tx, hash []byte, purpose string, user uuid.UUID) error {
	var (
		owner   uuid.UUID
		expires time.Time
		used    *time.Time
	)
	err := tx.QueryRow(ctx, `SELECT user_id, expires_at, used_at FROM email_tokens WHERE token_hash = $1 AND purpose = $2 FOR UPDATE`,
		hash, purpose).Scan(&owner, &expires, &used)
	if errors.Is(err, pgx.ErrNoRows) {
		return errTokenInvalid
	}
	if err != nil {
		return err
	}
	if owner != user || used != nil || !tx.Now().Before(expires) {
		return errTokenInvalid
	}
	return spendOpenTokens(ctx, tx, user, purpose)
}

// spendOpenTokens spends every open token of purpose of user.
func spendOpenTokens(ctx context.Context, tx *eventstore.Tx, user uuid.UUID, purpose string) error {
	_, err := tx.Exec(ctx, `UPDATE email_tokens SET used_at = $3 WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL`,
		user, purpose, tx.Now())
	return err
}

// ForgotPassword implements domain.AccountRecovery. Known and unknown
// addresses take the same path (one transaction looking the address up);
// only a known, not erased account gets a token, a queued mail and
// user.password_reset_requested.
func (s *Service) ForgotPassword(ctx context.Context, rawEmail string, meta domain.RequestMeta) error {
	email, err := validateEmail(rawEmail)
	if err != nil {
		return err
	}
	emailHMAC := s.cfg.Store.Keyring().EmailIndex(email)
	_, err = s.cfg.Store.Execute(ctx, command("auth.forgot_password", "anonymous", meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		var user uuid.UUID
		err := tx.QueryRow(ctx, `SELECT user_id FROM auth_users WHERE email_hmac = $1 AND NOT erased`, emailHMAC).Scan(&user)
		if errors.Is(err, pgx.ErrNoRows) {
			return domain.Receipt{Status: http.StatusOK}, nil
		}
		if err != nil {
			return domain.Receipt{}, err
		}
		expires, err := s.issueToken(tx, user, email, purposeReset)
		if err != nil {
			return domain.Receipt{}, err
		}
		_, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: user.String(),
			ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{user},
			Events: []domain.Event{domain.UserPasswordResetRequested{UserID: user, ExpiresAt: expires}}})
		return domain.Receipt{Status: http.StatusOK}, err
	})
	return err
}

// ResendVerification implements domain.AccountRecovery: a new verification
// token and mail for a known account whose address is not verified yet;
// nothing otherwise.
func (s *Service) ResendVerification(ctx context.Context, rawEmail string, meta domain.RequestMeta) error {
	email, err := validateEmail(rawEmail)
	if err != nil {
		return err
	}
	emailHMAC := s.cfg.Store.Keyring().EmailIndex(email)
	_, err = s.cfg.Store.Execute(ctx, command("auth.resend_verification", "anonymous", meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		var (
			user     uuid.UUID
			verified bool
		)
		err := tx.QueryRow(ctx, `SELECT user_id, email_verified FROM auth_users WHERE email_hmac = $1 AND NOT erased`, emailHMAC).Scan(&user, &verified)
		if errors.Is(err, pgx.ErrNoRows) || err == nil && verified {
			return domain.Receipt{Status: http.StatusOK}, nil
		}
		if err != nil {
			return domain.Receipt{}, err
		}
		expires, err := s.issueToken(tx, user, email, purposeVerify)
		if err != nil {
			return domain.Receipt{}, err
		}
		_, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: user.String(),
			ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{user},
			Events: []domain.Event{domain.UserVerificationRequested{UserID: user, ExpiresAt: expires}}})
		return domain.Receipt{Status: http.StatusOK}, err
	})
	return err
}

// VerifyEmail implements domain.AccountRecovery. An address that is
// already verified (say, by a password reset) stays so; the token is spent
// all the same and no event is added.
func (s *Service) VerifyEmail(ctx context.Context, token string, meta domain.RequestMeta) (domain.Written, error) {
	raw, ok := decodeToken(token)
	if !ok {
		return domain.Written{}, errTokenInvalid
	}
	hash := s.tokenHash(purposeVerify, raw)
	user, valid, err := s.tokenUser(ctx, hash, purposeVerify)
	if err != nil {
		return domain.Written{}, err
	}
	if !valid {
		return domain.Written{}, errTokenInvalid
	}
	r, err := s.cfg.Store.Execute(ctx, command("auth.verify_email", userActor(user), meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		verified, err := lockUserVerified(ctx, tx, user)
		if err != nil {
			return domain.Receipt{}, err
		}
		if err := spendToken(ctx, tx, hash, purposeVerify, user); err != nil {
			return domain.Receipt{}, err
		}
		if verified {
			return domain.Receipt{Status: http.StatusOK}, nil
		}
		return domain.Receipt{Status: http.StatusOK}, markVerified(ctx, tx, user, domain.VerifiedByLink)
	})
	if err != nil {
		return domain.Written{}, err
	}
	return domain.Written{Position: r.Position}, nil
}

// lockUserVerified locks the user's write-side row and reports whether the
// address is verified; TOKEN_INVALID for an erased or unknown user.
func lockUserVerified(ctx context.Context, tx *eventstore.Tx, user uuid.UUID) (bool, error) {
	var verified bool
	err := tx.QueryRow(ctx, `SELECT email_verified FROM auth_users WHERE user_id = $1 AND NOT erased FOR UPDATE`, user).Scan(&verified)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, errTokenInvalid
	}
	return verified, err
}

// markVerified sets the write-side flag and appends user.email_verified.
func markVerified(ctx context.Context, tx *eventstore.Tx, user uuid.UUID, via string) error {
	if _, err := tx.Exec(ctx, `UPDATE auth_users SET email_verified = true WHERE user_id = $1`, user); err != nil {
		return err
	}
	_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: user.String(),
		ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{user},
		Events: []domain.Event{domain.UserEmailVerified{UserID: user, Via: via}}})
	return err
}

// ResetPassword implements domain.AccountRecovery: in one transaction the
// token is spent (with every other open reset token of the user), the
// password replaced, every session revoked, a login lock cleared, the
// address marked verified (the mail proved the mailbox) and
// user.password_reset appended. The argon2 hash is computed before the
// transaction, and only for a token that looks valid.
func (s *Service) ResetPassword(ctx context.Context, token, newPassword string, meta domain.RequestMeta) (domain.Written, error) {
	if err := validateNewPassword(newPassword); err != nil {
		return domain.Written{}, err
	}
	raw, ok := decodeToken(token)
	if !ok {
		return domain.Written{}, errTokenInvalid
	}
	hash := s.tokenHash(purposeReset, raw)
	user, valid, err := s.tokenUser(ctx, hash, purposeReset)
	if err != nil {
		return domain.Written{}, err
	}
	if !valid {
		return domain.Written{}, errTokenInvalid
	}
	pwHash, err := s.cfg.Hasher.Hash(ctx, newPassword)
	if err != nil {
		return domain.Written{}, err
	}
	var revoked []uuid.UUID
	r, err := s.cfg.Store.Execute(ctx, command("auth.reset_password", userActor(user), meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		revoked = nil
		now := tx.Now()
		var (
			emailHMAC []byte
			verified  bool
		)
		err := tx.QueryRow(ctx, `SELECT email_hmac, email_verified FROM auth_users WHERE user_id = $1 AND NOT erased FOR UPDATE`, user).
			Scan(&emailHMAC, &verified)
		if errors.Is(err, pgx.ErrNoRows) {
			return domain.Receipt{}, errTokenInvalid
		}
		if err != nil {
			return domain.Receipt{}, err
		}
		if err := spendToken(ctx, tx, hash, purposeReset, user); err != nil {
			return domain.Receipt{}, err
		}
		if _, err := tx.Exec(ctx, `UPDATE password_credentials SET password_hash = $2, updated_at = $3 WHERE user_id = $1`, user, pwHash, now); err != nil {
			return domain.Receipt{}, err
		}
		// A completed reset clears a lock (SPEC §5) and the failure count.
		var lockedUntil *time.Time
		err = tx.QueryRow(ctx, `DELETE FROM login_attempts WHERE email_hmac = $1 RETURNING locked_until`, emailHMAC).Scan(&lockedUntil)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return domain.Receipt{}, err
		}
		revoked, err = revokeSessions(ctx, tx, user, uuid.Nil, domain.RevokedByPasswordReset)
		if err != nil {
			return domain.Receipt{}, err
		}
		if _, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: user.String(),
			ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{user},
			Events: []domain.Event{domain.UserPasswordReset{UserID: user, SessionsRevoked: len(revoked),
				Unlocked: lockedUntil != nil && lockedUntil.After(now)}}}); err != nil {
			return domain.Receipt{}, err
		}
		if !verified {
			if err := markVerified(ctx, tx, user, domain.VerifiedByReset); err != nil {
				return domain.Receipt{}, err
			}
		}
		return domain.Receipt{Status: http.StatusOK}, nil
	})
	if err != nil {
		return domain.Written{}, err
	}
	for _, sid := range revoked {
		s.announce(sid, user)
	}
	return domain.Written{Position: r.Position}, nil
}

func validateNewPassword(pw string) error {
	if n := utf8.RuneCountInString(pw); n < minPassword || n > maxPassword {
		return invalid("newPassword", "must be 8 to 128 characters")
	}
	return nil
}

// revokeSessions revokes every active session of user but keep (uuid.Nil
// keeps none) in tx and returns their ids, for announcing after the commit.
func revokeSessions(ctx context.Context, tx *eventstore.Tx, user, keep uuid.UUID, reason string) ([]uuid.UUID, error) {
	rows, err := tx.Query(ctx, `SELECT session_id FROM auth_sessions WHERE user_id = $1 AND status = 'active' AND session_id <> $2 ORDER BY session_id`, user, keep)
	if err != nil {
		return nil, err
	}
	sids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, err
	}
	var revoked []uuid.UUID
	for _, sid := range sids {
		row, found, err := lockSession(ctx, tx, sid, &user)
		if err != nil {
			return nil, err
		}
		if found && row.status == "active" {
			if err := revokeLocked(ctx, tx, sid, row, reason); err != nil {
				return nil, err
			}
			revoked = append(revoked, sid)
		}
	}
	return revoked, nil
}

// ChangePassword implements domain.AccountRecovery. The current password is
// verified under the same budget as logins (at most LockoutThreshold
// verifications per account per window; ACCOUNT_LOCKED beyond, or while the
// account is locked), so a stolen access token cannot be used to guess it.
// The new password replaces the old one only if nothing changed it
// meanwhile; the caller's other sessions are revoked, their open reset
// tokens spent, and user.password_changed{reason:"change"} appended.
func (s *Service) ChangePassword(ctx context.Context, p domain.Principal, currentPassword, newPassword string, meta domain.RequestMeta) (domain.Written, error) {
	if currentPassword == "" || utf8.RuneCountInString(currentPassword) > maxPassword {
		return domain.Written{}, invalid("currentPassword", "must be 1 to 128 characters")
	}
	if err := validateNewPassword(newPassword); err != nil {
		return domain.Written{}, err
	}
	var (
		oldHash   string
		emailHMAC []byte
	)
	err := pg.QueryRow(ctx, s.pool, system, `SELECT c.password_hash, u.email_hmac
FROM auth_users u JOIN password_credentials c USING (user_id) WHERE u.user_id = $1 AND NOT u.erased`,
		[]any{p.UserID}, &oldHash, &emailHMAC)
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.Written{}, domain.Errorf(domain.CodeUnauthorized, "The account no longer exists.")
	}
	if err != nil {
		return domain.Written{}, fmt.Errorf("load credentials: %w", err)
	}
	if err := s.reserveVerification(ctx, emailHMAC, s.now()); err != nil {
		return domain.Written{}, err
	}
	ok, err := s.cfg.Hasher.Verify(ctx, currentPassword, oldHash)
	if err != nil {
		return domain.Written{}, err
	}
	if !ok {
		return domain.Written{}, errChangeCredentials
	}
	newHash, err := s.cfg.Hasher.Hash(ctx, newPassword)
	if err != nil {
		return domain.Written{}, err
	}
	var revoked []uuid.UUID
	r, err := s.cfg.Store.Execute(ctx, command("auth.change_password", userActor(p.UserID), meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		revoked = nil
		tag, err := tx.Exec(ctx, `UPDATE password_credentials SET password_hash = $2, updated_at = $4 WHERE user_id = $1 AND password_hash = $3`,
			p.UserID, newHash, oldHash, tx.Now())
		if err != nil {
			return domain.Receipt{}, err
		}
		if tag.RowsAffected() == 0 {
			// Changed or reset meanwhile: the password checked is not
			// the current one any more.
			return domain.Receipt{}, errChangeCredentials
		}
		if _, err := tx.Exec(ctx, `DELETE FROM login_attempts WHERE email_hmac = $1`, emailHMAC); err != nil {
			return domain.Receipt{}, err
		}
		if err := spendOpenTokens(ctx, tx, p.UserID, purposeReset); err != nil {
			return domain.Receipt{}, err
		}
		revoked, err = revokeSessions(ctx, tx, p.UserID, p.SessionID, domain.RevokedPasswordReset)
		if err != nil {
			return domain.Receipt{}, err
		}
		_, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: p.UserID.String(),
			ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{p.UserID},
			Events: []domain.Event{domain.UserPasswordChanged{UserID: p.UserID, Reason: "change"}}})
		return domain.Receipt{Status: http.StatusOK}, err
	})
	if err != nil {
		return domain.Written{}, err
	}
	for _, sid := range revoked {
		s.announce(sid, p.UserID)
	}
	return domain.Written{Position: r.Position}, nil
}

// requireVerified answers EMAIL_NOT_VERIFIED while user's address is not
// verified; Login calls it after the password check when
// REQUIRE_EMAIL_VERIFICATION is on, so the answer tells nothing to whoever
// does not know the password.
func (s *Service) requireVerified(ctx context.Context, user uuid.UUID) error {
	var verified bool
	err := pg.QueryRow(ctx, s.pool, system, `SELECT email_verified FROM auth_users WHERE user_id = $1`, []any{user}, &verified)
	if err != nil {
		return fmt.Errorf("load verification: %w", err)
	}
	if !verified {
		return domain.Errorf(domain.CodeEmailNotVerified, "Verify your email address before logging in; POST /auth/resend-verification sends a new link.")
	}
	return nil
}

// Profile implements domain.AccountRecovery, from write-side state: the
// role and verification flag of auth_users, the address from
// user.registered and the name from the event name_version points at.
func (s *Service) Profile(ctx context.Context, p domain.Principal) (domain.Profile, error) {
	var out domain.Profile
	_, err := s.cfg.Store.Execute(ctx, command("auth.profile", userActor(p.UserID), domain.RequestMeta{}), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		var err error
		out, err = s.loadProfile(ctx, tx, p.UserID, false)
		return domain.Receipt{Status: http.StatusOK}, err
	})
	return out, err
}

// UpdateProfile implements domain.AccountRecovery: a new display name
// (trimmed, at most 255 characters) appends user.profile_updated and points
// name_version at it; the same name changes nothing.
func (s *Service) UpdateProfile(ctx context.Context, p domain.Principal, in domain.ProfileUpdate, meta domain.RequestMeta) (domain.Profile, domain.Written, error) {
	if in.Name == nil {
		prof, err := s.Profile(ctx, p)
		return prof, domain.Written{}, err
	}
	name := strings.TrimSpace(*in.Name)
	if utf8.RuneCountInString(name) > maxName {
		return domain.Profile{}, domain.Written{}, invalid("name", "must be at most 255 characters")
	}
	var out domain.Profile
	r, err := s.cfg.Store.Execute(ctx, command("auth.update_profile", userActor(p.UserID), meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		prof, err := s.loadProfile(ctx, tx, p.UserID, true)
		if err != nil {
			return domain.Receipt{}, err
		}
		out = prof
		if prof.Name == name {
			return domain.Receipt{Status: http.StatusOK}, nil
		}
		recs, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: p.UserID.String(),
			ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{p.UserID},
			Events: []domain.Event{domain.UserProfileUpdated{UserID: p.UserID, Name: name}}})
		if err != nil {
			return domain.Receipt{}, err
		}
		if _, err := tx.Exec(ctx, `UPDATE auth_users SET name_version = $2 WHERE user_id = $1`, p.UserID, recs[0].StreamVersion); err != nil {
			return domain.Receipt{}, err
		}
		out.Name = name
		return domain.Receipt{Status: http.StatusOK}, nil
	})
	if err != nil {
		return domain.Profile{}, domain.Written{}, err
	}
	return out, domain.Written{Position: r.Position}, nil
}

// loadProfile reads the user's profile in tx, locking the write-side row
// when lock is set.
func (s *Service) loadProfile(ctx context.Context, tx *eventstore.Tx, user uuid.UUID, lock bool) (domain.Profile, error) {
	q := `SELECT role, email_verified, created_at FROM auth_users WHERE user_id = $1 AND NOT erased`
	if lock {
		q += ` FOR UPDATE`
	}
	prof := domain.Profile{ID: user}
	err := tx.QueryRow(ctx, q, user).Scan(&prof.Role, &prof.EmailVerified, &prof.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return prof, domain.Errorf(domain.CodeUnauthorized, "The account no longer exists.")
	}
	if err != nil {
		return prof, err
	}
	prof.CreatedAt = prof.CreatedAt.UTC()
	prof.Email, prof.Name, err = s.userNames(ctx, tx, user)
	return prof, err
}

// currentName returns the display name held by the event at version of the
// user's stream (auth_users.name_version): user.registered's at version 1,
// a user.profile_updated's after a change.
func currentName(ctx context.Context, tx *eventstore.Tx, user uuid.UUID, registered string) (string, error) {
	var version int64
	if err := tx.QueryRow(ctx, `SELECT name_version FROM auth_users WHERE user_id = $1`, user).Scan(&version); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return registered, nil
		}
		return "", err
	}
	if version <= 1 {
		return registered, nil
	}
	ev, found, err := tx.LoadEvent(ctx, domain.StreamUser, user.String(), version)
	if err != nil || !found {
		return registered, err
	}
	if u, ok := ev.Event.(*domain.UserProfileUpdated); ok {
		return u.Name, nil
	}
	return registered, nil
}
