package identity

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// errBadCredentials is the one answer to a wrong password and an unknown
// email alike.
var errBadCredentials = domain.Errorf(domain.CodeInvalidCredentials, "Invalid email or password.")

func locked(until, now time.Time) error {
	secs := int(math.Ceil(until.Sub(now).Seconds()))
	return &domain.Error{Code: domain.CodeAccountLocked, RetryAfterSeconds: max(secs, 1),
		Message: "Too many failed logins. Try again later."}
}

// account is the write-side state login decides on.
type account struct {
	id    uuid.UUID
	role  string
	hash  string
	found bool
	// twoFactor: the account has TOTP 2FA on, so a right password earns a
	// challenge (see totp.go), not a session.
	twoFactor bool
}

// Login implements domain.Identity. The order is: take a verification slot
// for the blind email index (at most LockoutThreshold per window, even
// under parallel guesses; a lock refuses at once), verify the password —
// against a dummy hash for unknown emails, so both cost the same — then
// record the outcome. Unknown emails are counted but never become events.
func (s *Service) Login(ctx context.Context, in domain.LoginInput, meta domain.RequestMeta) (domain.TokenPair, domain.Written, error) {
	email, err := validateEmail(in.Email)
	if err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	if in.Password == "" || utf8.RuneCountInString(in.Password) > maxPassword {
		return domain.TokenPair{}, domain.Written{}, invalid("password", "must be 1 to 128 characters")
	}
	if len(in.DeviceID) > 255 || utf8.RuneCountInString(in.DeviceName) > 255 {
		return domain.TokenPair{}, domain.Written{}, invalid("deviceName", "device id and name must be at most 255 characters")
	}
	emailHMAC := s.cfg.Store.Keyring().EmailIndex(email)
	now := s.now()
	if err := s.reserveVerification(ctx, emailHMAC, now); err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	acct, err := s.loadAccount(ctx, emailHMAC)
	if err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	ok := false
	if acct.found {
		ok, err = s.cfg.Hasher.Verify(ctx, in.Password, acct.hash)
	} else {
		err = s.cfg.Hasher.VerifyDummy(ctx, in.Password)
	}
	if err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	if !ok {
		return domain.TokenPair{}, domain.Written{}, s.loginFailed(ctx, emailHMAC, acct, meta)
	}
	// REQUIRE_EMAIL_VERIFICATION: only after the password, so the answer
	// tells nothing to whoever does not know it (recovery.go).
	if s.cfg.RequireEmailVerification {
		if err := s.requireVerified(ctx, acct.id); err != nil {
			return domain.TokenPair{}, domain.Written{}, err
		}
	}
	if acct.twoFactor {
		// The failure count is not reset: only a completed second step
		// resets it, so the password alone buys no extra code guesses.
		return domain.TokenPair{}, domain.Written{}, s.challenge(ctx, acct, email, in)
	}
	return s.startSession(ctx, emailHMAC, acct, email, in, meta, nil)
}

// reserveVerification counts one password verification for the address in
// its window, resetting an expired window or lock, and refuses when the
// address is locked or its window's verifications are used up. The row
// lock serializes parallel guesses on one address.
func (s *Service) reserveVerification(ctx context.Context, emailHMAC []byte, now time.Time) error {
	var (
		verifications int
		windowStart   time.Time
		lockedUntil   *time.Time
	)
	err := pg.InTx(ctx, s.pool, system, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `
INSERT INTO login_attempts AS la (email_hmac, window_start, verifications, failures)
VALUES ($1, $2, 1, 0)
ON CONFLICT (email_hmac) DO UPDATE SET
    window_start  = CASE WHEN la.locked_until IS NOT NULL AND la.locked_until <= $2 OR la.locked_until IS NULL AND la.window_start <= $3
                         THEN $2 ELSE la.window_start END,
    verifications = CASE WHEN la.locked_until IS NOT NULL AND la.locked_until <= $2 OR la.locked_until IS NULL AND la.window_start <= $3
                         THEN 1 ELSE la.verifications + CASE WHEN la.locked_until > $2 THEN 0 ELSE 1 END END,
    failures      = CASE WHEN la.locked_until IS NOT NULL AND la.locked_until <= $2 OR la.locked_until IS NULL AND la.window_start <= $3
                         THEN 0 ELSE la.failures END,
    locked_until  = CASE WHEN la.locked_until <= $2 THEN NULL ELSE la.locked_until END
RETURNING verifications, window_start, locked_until`,
			emailHMAC, now, now.Add(-LockoutWindow)).Scan(&verifications, &windowStart, &lockedUntil)
	})
	if err != nil {
		return fmt.Errorf("login attempts: %w", err)
	}
	if lockedUntil != nil && lockedUntil.After(now) {
		return locked(*lockedUntil, now)
	}
	if verifications > LockoutThreshold {
		return locked(windowStart.Add(LockoutWindow), now)
	}
	return nil
}

func (s *Service) loadAccount(ctx context.Context, emailHMAC []byte) (account, error) {
	var a account
	err := pg.InTx(ctx, s.pool, system, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
SELECT u.user_id, u.role, c.password_hash,
       EXISTS (SELECT 1 FROM two_factor t WHERE t.user_id = u.user_id AND t.enabled_at IS NOT NULL)
FROM auth_users u JOIN password_credentials c USING (user_id)
WHERE u.email_hmac = $1 AND NOT u.erased`, emailHMAC).Scan(&a.id, &a.role, &a.hash, &a.twoFactor)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		a.found = err == nil
		return err
	})
	if err != nil {
		return account{}, fmt.Errorf("load account: %w", err)
	}
	return a, nil
}

// loginFailed counts the failure (recordFailure) and answers
// INVALID_CREDENTIALS.
func (s *Service) loginFailed(ctx context.Context, emailHMAC []byte, acct account, meta domain.RequestMeta) error {
	if err := s.recordFailure(ctx, emailHMAC, acct, meta); err != nil {
		return err
	}
	return errBadCredentials
}

// recordFailure counts a failed verification (a wrong password or second
// factor); the LockoutThreshold-th in a window locks the address. Known
// accounts get user.login_failed (and user.locked).
func (s *Service) recordFailure(ctx context.Context, emailHMAC []byte, acct account, meta domain.RequestMeta) error {
	actor := "anonymous"
	if acct.found {
		actor = userActor(acct.id)
	}
	_, err := s.cfg.Store.Execute(ctx, command("auth.login_failed", actor, meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		now := tx.Now()
		var failures int
		var lockedUntil *time.Time
		err := tx.QueryRow(ctx, `
INSERT INTO login_attempts AS la (email_hmac, window_start, verifications, failures)
VALUES ($1, $4, 1, 1)
ON CONFLICT (email_hmac) DO UPDATE SET failures = la.failures + 1,
    locked_until = CASE WHEN la.failures + 1 >= $2 THEN $3::timestamptz ELSE la.locked_until END
RETURNING failures, locked_until`, emailHMAC, LockoutThreshold, now.Add(LockoutDuration), now).Scan(&failures, &lockedUntil)
		if err != nil {
			return domain.Receipt{}, err
		}
		if !acct.found {
			return domain.Receipt{}, nil
		}
		evs := []domain.Event{domain.UserLoginFailed{UserID: acct.id, Failures: failures, IPAddress: meta.IP}}
		if lockedUntil != nil && failures == LockoutThreshold {
			evs = append(evs, domain.UserLocked{UserID: acct.id, LockedUntil: *lockedUntil})
		}
		_, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: acct.id.String(),
			ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{acct.id}, Events: evs})
		return domain.Receipt{}, err
	})
	return err
}

// startSession clears the failure count and starts a session: its refresh
// key and the first access token go to auth_sessions, the facts to
// session.started and user.login_succeeded. verify, when not nil, runs in
// the same transaction before anything is written (the second step of a
// 2FA login spends its code there); its error rolls everything back.
func (s *Service) startSession(ctx context.Context, emailHMAC []byte, acct account, email string, in domain.LoginInput, meta domain.RequestMeta,
	verify func(ctx context.Context, tx *eventstore.Tx) error) (domain.TokenPair, domain.Written, error) {
	sid, err := uuid.NewV7()
	if err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	key := make([]byte, refreshKeyLen)
	if _, err := rand.Read(key); err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	// Signing (about a millisecond of RSA) happens before the transaction.
	access, err := s.cfg.Tokens.Sign(domain.Claims{Subject: acct.id, Email: email, Role: acct.role, SessionID: sid, DeviceID: in.DeviceID})
	if err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	const counter = 1
	var name string
	r, err := s.cfg.Store.Execute(ctx, command("auth.login", userActor(acct.id), meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		now := tx.Now()
		// The share lock orders this session against an erasure of the
		// account (DeleteAccount locks the row FOR UPDATE): either the
		// erasure sees the session and revokes it, or this sees the
		// erasure and starts none.
		var erased bool
		if err := tx.QueryRow(ctx, `SELECT erased FROM auth_users WHERE user_id = $1 FOR SHARE`, acct.id).Scan(&erased); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return domain.Receipt{}, errBadCredentials
			}
			return domain.Receipt{}, err
		}
		if erased {
			return domain.Receipt{}, errBadCredentials
		}
		if verify != nil {
			if err := verify(ctx, tx); err != nil {
				return domain.Receipt{}, err
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM login_attempts WHERE email_hmac = $1`, emailHMAC); err != nil {
			return domain.Receipt{}, err
		}
		expires := now.Add(domain.SessionTTL)
		if _, err := tx.Exec(ctx, `
INSERT INTO auth_sessions (session_id, user_id, version, refresh_key, counter, rotated_at, current_access, device_id, status, expires_at, created_at)
VALUES ($1, $2, 1, $3, $4, $5, $6, nullif($7, ''), 'active', $8, $5)`,
			sid, acct.id, key, counter, now, access, in.DeviceID, expires); err != nil {
			return domain.Receipt{}, err
		}
		_, name, err = s.userNames(ctx, tx, acct.id)
		if err != nil {
			return domain.Receipt{}, err
		}
		_, err = tx.Append(ctx,
			eventstore.StreamAppend{StreamType: domain.StreamSession, StreamID: sid.String(), Users: []uuid.UUID{acct.id},
				Events: []domain.Event{domain.SessionStarted{SessionID: sid, UserID: acct.id, DeviceID: in.DeviceID,
					DeviceName: strings.TrimSpace(in.DeviceName), IPAddress: meta.IP, UserAgent: truncate(meta.UserAgent, 512), ExpiresAt: expires}}},
			eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: acct.id.String(), ExpectedVersion: eventstore.AnyVersion,
				Users: []uuid.UUID{acct.id}, Events: []domain.Event{domain.UserLoginSucceeded{UserID: acct.id, SessionID: sid, IPAddress: meta.IP}}},
		)
		return domain.Receipt{Status: http.StatusOK}, err
	})
	if err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	return domain.TokenPair{
		User:         domain.UserView{ID: acct.id, Email: email, Name: name, Role: acct.role},
		AccessToken:  access,
		RefreshToken: encodeRefresh(sid, counter, key),
		ExpiresIn:    int(domain.AccessTokenTTL.Seconds()),
		TokenType:    "Bearer",
	}, domain.Written{Position: r.Position}, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
