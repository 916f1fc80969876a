package identity

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/hotp"
	"github.com/pquerna/otp/totp"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// TOTP parameters: what every authenticator app speaks (RFC 6238 with
// SHA-1, 6 digits, 30-second steps). A code is accepted one step either
// side of the server's, for clock drift and typing time.
const (
	// TOTPIssuer names the service in authenticator apps.
	TOTPIssuer = "Mana Core"
	// TOTPPeriod is the length of a time step in seconds.
	TOTPPeriod = 30
	// TOTPSkew is how many steps before and after the current one a code
	// may belong to.
	TOTPSkew = 1

	totpSecretSize = 20 // bytes: 160 bits, RFC 4226's recommendation
	totpDigits     = otp.DigitsSix

	// recoveryCodeLen is the length of a recovery code without its dash:
	// 10 base32 characters, 50 bits.
	recoveryCodeLen = 10
	// maxFactorInput bounds a code or recovery code as typed.
	maxFactorInput = 64
	// maxChallengeLen bounds a challenge token before it is decoded.
	maxChallengeLen = 2048
)

// challengeLabel binds sealed challenge tokens to their purpose: the KEK
// opens them only under this label.
const challengeLabel = "mana:2fa-challenge"

var (
	errTwoFactorFailed  = domain.Errorf(domain.CodeTwoFactorFailed, "The code is wrong, expired or already used.")
	errChallengeInvalid = domain.Errorf(domain.CodeTokenInvalid, "The login challenge is invalid or was used; log in again.")
	errChallengeExpired = domain.Errorf(domain.CodeTokenExpired, "The login challenge expired; log in again.")
	errTwoFactorOff     = domain.Errorf(domain.CodeConflict, "Two-factor authentication is not enabled.")
	errTwoFactorOn      = domain.Errorf(domain.CodeConflict, "Two-factor authentication is already enabled.")
	errNoEnrollment     = domain.Errorf(domain.CodeConflict, "No two-factor enrolment is pending; enroll first.")

	// errWrongFactor is a decision's verdict on a wrong, replayed or used
	// code. It rolls the transaction back; the caller then counts the
	// failure (recordFailure) and answers errTwoFactorFailed.
	errWrongFactor = errors.New("identity: wrong second factor")
	// errFactorNotEnabled is checkFactor's verdict when 2FA is off.
	errFactorNotEnabled = errors.New("identity: two-factor authentication is off")
)

var _ domain.TwoFactor = (*Service)(nil)

func secretLabel(user uuid.UUID) string     { return "totp:" + user.String() }
func recoveryPurpose(user uuid.UUID) string { return "recovery-code:" + user.String() }

// validateFactor checks that exactly one of a TOTP code (6 digits, spaces
// ignored) and a recovery code is given, and normalizes it.
func validateFactor(f domain.SecondFactor) (domain.SecondFactor, error) {
	code := strings.Join(strings.Fields(f.Code), "")
	rc := f.RecoveryCode
	switch {
	case (code == "") == (strings.TrimSpace(rc) == ""):
		return f, invalid("code", "give exactly one of code and recoveryCode")
	case code != "" && !isTOTPCode(code):
		return f, invalid("code", "must be 6 digits")
	case len(rc) > maxFactorInput || !utf8.ValidString(rc):
		return f, invalid("recoveryCode", "is too long")
	}
	return domain.SecondFactor{Code: code, RecoveryCode: rc}, nil
}

func isTOTPCode(s string) bool {
	if len(s) != totpDigits.Length() {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// normalizeRecoveryCode is the form a recovery code is hashed in: lower
// case, without the dash or spaces a user may type.
func normalizeRecoveryCode(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '-' || r == ' ' || r == '\t' {
			return -1
		}
		if r >= 'A' && r <= 'Z' {
			return r + ('a' - 'A')
		}
		return r
	}, s)
}

func (s *Service) recoveryHash(user uuid.UUID, code string) []byte {
	return s.cfg.Store.Keyring().MAC(recoveryPurpose(user), []byte(normalizeRecoveryCode(code)))
}

var recoveryEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// newRecoveryCodes returns RecoveryCodeCount distinct random codes shaped
// "xxxxx-xxxxx" (lower-case base32).
func newRecoveryCodes() ([]string, error) {
	seen := map[string]bool{}
	out := make([]string, 0, domain.RecoveryCodeCount)
	for len(out) < domain.RecoveryCodeCount {
		b := make([]byte, 7) // 56 bits, of which the first 50 are used
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		c := strings.ToLower(recoveryEncoding.EncodeToString(b))[:recoveryCodeLen]
		if seen[c] {
			continue
		}
		seen[c] = true
		out = append(out, c[:recoveryCodeLen/2]+"-"+c[recoveryCodeLen/2:])
	}
	return out, nil
}

// twoFactorRow is a user's TOTP state, locked FOR UPDATE.
type twoFactorRow struct {
	wrapped  []byte
	enabled  bool
	lastStep *int64
}

func lockTwoFactor(ctx context.Context, tx *eventstore.Tx, user uuid.UUID) (twoFactorRow, bool, error) {
	var r twoFactorRow
	var enabledAt *time.Time
	err := tx.QueryRow(ctx, `SELECT secret_wrapped, enabled_at, last_used_step FROM two_factor WHERE user_id = $1 FOR UPDATE`, user).
		Scan(&r.wrapped, &enabledAt, &r.lastStep)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false, nil
	}
	r.enabled = enabledAt != nil
	return r, err == nil, err
}

// matchTOTP returns the time step code belongs to, among the steps within
// TOTPSkew of now that come after the last accepted one: a code of an
// already used step (a replay) or of an earlier one does not match.
func (s *Service) matchTOTP(user uuid.UUID, row twoFactorRow, code string, now time.Time) (int64, bool, error) {
	secret, err := s.cfg.Store.Keyring().Unwrap(secretLabel(user), row.wrapped)
	if err != nil {
		return 0, false, fmt.Errorf("unwrap totp secret: %w", err)
	}
	current := now.Unix() / TOTPPeriod
	matched, found := int64(0), false
	for step := current - TOTPSkew; step <= current+TOTPSkew; step++ {
		if step < 0 || row.lastStep != nil && step <= *row.lastStep {
			continue
		}
		want, err := hotp.GenerateCodeCustom(string(secret), uint64(step), hotp.ValidateOpts{Digits: totpDigits, Algorithm: otp.AlgorithmSHA1})
		if err != nil {
			return 0, false, fmt.Errorf("totp: %w", err)
		}
		// Every candidate is compared, in constant time, whichever matches.
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 && !found {
			matched, found = step, true
		}
	}
	return matched, found, nil
}

// checkFactor verifies and spends a second factor of user inside tx,
// holding the user's two_factor row locked: a TOTP code moves
// last_used_step to its step; a recovery code is marked used and
// user.recovery_code_used is appended. errFactorNotEnabled when 2FA is
// off, errWrongFactor when the factor does not verify.
func (s *Service) checkFactor(ctx context.Context, tx *eventstore.Tx, user uuid.UUID, f domain.SecondFactor) error {
	row, found, err := lockTwoFactor(ctx, tx, user)
	if err != nil {
		return err
	}
	if !found || !row.enabled {
		return errFactorNotEnabled
	}
	if f.Code != "" {
		step, ok, err := s.matchTOTP(user, row, f.Code, tx.Now())
		if err != nil {
			return err
		}
		if !ok {
			return errWrongFactor
		}
		_, err = tx.Exec(ctx, `UPDATE two_factor SET last_used_step = $2 WHERE user_id = $1`, user, step)
		return err
	}
	// The outer SELECT sees the table as it was before the UPDATE of the
	// CTE, so the unused count still includes the code just spent.
	var used, unused int
	err = tx.QueryRow(ctx, `WITH spent AS (
    UPDATE recovery_codes SET used_at = $3 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL RETURNING 1)
SELECT (SELECT count(*) FROM spent), (SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL)`,
		user, s.recoveryHash(user, f.RecoveryCode), tx.Now()).Scan(&used, &unused)
	if err != nil {
		return err
	}
	if used == 0 {
		return errWrongFactor
	}
	_, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: user.String(),
		ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{user},
		Events: []domain.Event{domain.UserRecoveryCodeUsed{UserID: user, Remaining: unused - used}}})
	return err
}

// requireSecondFactor is the 2FA gate of sensitive commands besides login
// (deleting the account), run inside the command's transaction: nil when
// the user has 2FA off; TWO_FACTOR_REQUIRED when it is on and code is
// empty; errWrongFactor when code is wrong, replayed or used (the command
// rolls back, then counts the failure with recordFailure and answers
// errTwoFactorFailed). code is a 6-digit TOTP code or a recovery code; a
// valid one is spent.
func (s *Service) requireSecondFactor(ctx context.Context, tx *eventstore.Tx, user uuid.UUID, code string) error {
	row, found, err := lockTwoFactor(ctx, tx, user)
	if err != nil || !found || !row.enabled {
		return err
	}
	code = strings.TrimSpace(code)
	switch {
	case code == "":
		return domain.Errorf(domain.CodeTwoFactorRequired, "Two-factor authentication is on: a code is required.")
	case len(code) > maxFactorInput:
		return errWrongFactor
	}
	f := domain.SecondFactor{RecoveryCode: code}
	if c := strings.Join(strings.Fields(code), ""); isTOTPCode(c) {
		f = domain.SecondFactor{Code: c}
	}
	return s.checkFactor(ctx, tx, user, f)
}

// deleteTwoFactor removes every trace of user's 2FA credentials (the
// secret, the recovery codes, open challenges) inside tx: on disabling, and
// for erasure.
func deleteTwoFactor(ctx context.Context, tx *eventstore.Tx, user uuid.UUID) error {
	for _, q := range []string{
		`DELETE FROM two_factor WHERE user_id = $1`,
		`DELETE FROM recovery_codes WHERE user_id = $1`,
		`DELETE FROM two_factor_challenges WHERE user_id = $1`,
	} {
		if _, err := tx.Exec(ctx, q, user); err != nil {
			return err
		}
	}
	return nil
}

// EnrollTwoFactor implements domain.TwoFactor: a fresh secret, wrapped by
// the KEK, replaces any pending one; 2FA stays off until confirmed.
func (s *Service) EnrollTwoFactor(ctx context.Context, p domain.Principal, _ domain.RequestMeta) (domain.TwoFactorEnrollment, error) {
	account := p.Email
	if account == "" {
		account = p.UserID.String()
	}
	key, err := totp.Generate(totp.GenerateOpts{Issuer: TOTPIssuer, AccountName: account, Period: TOTPPeriod,
		SecretSize: totpSecretSize, Digits: totpDigits, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		return domain.TwoFactorEnrollment{}, fmt.Errorf("totp: %w", err)
	}
	wrapped := s.cfg.Store.Keyring().Wrap(secretLabel(p.UserID), []byte(key.Secret()))
	err = pg.InTx(ctx, s.pool, system, func(tx pgx.Tx) error {
		var pending bool
		err := tx.QueryRow(ctx, `INSERT INTO two_factor AS t (user_id, secret_wrapped, created_at) VALUES ($1, $2, $3)
ON CONFLICT (user_id) DO UPDATE SET secret_wrapped = excluded.secret_wrapped, created_at = excluded.created_at, last_used_step = NULL
WHERE t.enabled_at IS NULL
RETURNING true`, p.UserID, wrapped, s.now()).Scan(&pending)
		if errors.Is(err, pgx.ErrNoRows) {
			return errTwoFactorOn
		}
		return err
	})
	if err != nil {
		return domain.TwoFactorEnrollment{}, err
	}
	return domain.TwoFactorEnrollment{Secret: key.Secret(), OtpauthURI: key.URL()}, nil
}

// ConfirmTwoFactor implements domain.TwoFactor: a valid code of the pending
// secret turns 2FA on, replaces the recovery codes with fresh ones (only
// their keyed hashes are kept) and appends user.two_factor_enabled.
func (s *Service) ConfirmTwoFactor(ctx context.Context, p domain.Principal, code string, meta domain.RequestMeta) (domain.TwoFactorConfirmed, domain.Written, error) {
	code = strings.Join(strings.Fields(code), "")
	if !isTOTPCode(code) {
		return domain.TwoFactorConfirmed{}, domain.Written{}, invalid("code", "must be 6 digits")
	}
	codes, err := newRecoveryCodes()
	if err != nil {
		return domain.TwoFactorConfirmed{}, domain.Written{}, err
	}
	hashes := make([][]byte, len(codes))
	for i, c := range codes {
		hashes[i] = s.recoveryHash(p.UserID, c)
	}
	r, err := s.cfg.Store.Execute(ctx, command("auth.two_factor_confirm", userActor(p.UserID), meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		row, found, err := lockTwoFactor(ctx, tx, p.UserID)
		switch {
		case err != nil:
			return domain.Receipt{}, err
		case !found:
			return domain.Receipt{}, errNoEnrollment
		case row.enabled:
			return domain.Receipt{}, errTwoFactorOn
		}
		step, ok, err := s.matchTOTP(p.UserID, row, code, tx.Now())
		if err != nil {
			return domain.Receipt{}, err
		}
		if !ok {
			return domain.Receipt{}, errWrongFactor
		}
		if _, err := tx.Exec(ctx, `UPDATE two_factor SET enabled_at = $2, last_used_step = $3 WHERE user_id = $1`,
			p.UserID, tx.Now(), step); err != nil {
			return domain.Receipt{}, err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM recovery_codes WHERE user_id = $1`, p.UserID); err != nil {
			return domain.Receipt{}, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO recovery_codes (user_id, code_hash, created_at)
SELECT $1, h, $3 FROM unnest($2::bytea[]) AS h`, p.UserID, hashes, tx.Now()); err != nil {
			return domain.Receipt{}, err
		}
		_, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: p.UserID.String(),
			ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{p.UserID},
			Events: []domain.Event{domain.UserTwoFactorEnabled{UserID: p.UserID, Method: domain.TwoFactorMethodTOTP, CodesIssued: len(codes)}}})
		return domain.Receipt{Status: http.StatusOK}, err
	})
	if errors.Is(err, errWrongFactor) {
		return domain.TwoFactorConfirmed{}, domain.Written{}, errTwoFactorFailed
	}
	if err != nil {
		return domain.TwoFactorConfirmed{}, domain.Written{}, err
	}
	return domain.TwoFactorConfirmed{Enabled: true, RecoveryCodes: codes}, domain.Written{Position: r.Position}, nil
}

// userCredentials is what re-authenticating a signed-in user decides on.
type userCredentials struct {
	account
	emailHMAC []byte
}

func (s *Service) loadUserCredentials(ctx context.Context, user uuid.UUID) (userCredentials, error) {
	var u userCredentials
	err := pg.InTx(ctx, s.pool, system, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
SELECT u.user_id, u.role, coalesce(c.password_hash, ''), u.email_hmac,
       EXISTS (SELECT 1 FROM two_factor t WHERE t.user_id = u.user_id AND t.enabled_at IS NOT NULL)
FROM auth_users u LEFT JOIN password_credentials c USING (user_id)
WHERE u.user_id = $1 AND NOT u.erased`, user).Scan(&u.id, &u.role, &u.hash, &u.emailHMAC, &u.twoFactor)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		u.found = err == nil
		return err
	})
	if err != nil {
		return userCredentials{}, fmt.Errorf("load user: %w", err)
	}
	return u, nil
}

// DisableTwoFactor implements domain.TwoFactor. The password is checked
// like a login's (a verification slot of the lockout, a failure counted),
// then the second factor inside the transaction that deletes the secret,
// the recovery codes and open challenges and appends
// user.two_factor_disabled.
func (s *Service) DisableTwoFactor(ctx context.Context, p domain.Principal, in domain.TwoFactorDisableInput, meta domain.RequestMeta) (domain.Written, error) {
	if in.Password == "" || utf8.RuneCountInString(in.Password) > maxPassword {
		return domain.Written{}, invalid("password", "must be 1 to 128 characters")
	}
	f, err := validateFactor(in.SecondFactor)
	if err != nil {
		return domain.Written{}, err
	}
	u, err := s.loadUserCredentials(ctx, p.UserID)
	if err != nil {
		return domain.Written{}, err
	}
	if !u.found {
		return domain.Written{}, errTokenInvalid
	}
	if !u.twoFactor {
		return domain.Written{}, errTwoFactorOff
	}
	if err := s.reserveVerification(ctx, u.emailHMAC, s.now()); err != nil {
		return domain.Written{}, err
	}
	ok, err := s.cfg.Hasher.Verify(ctx, in.Password, u.hash)
	if err != nil {
		return domain.Written{}, err
	}
	if !ok {
		return domain.Written{}, s.loginFailed(ctx, u.emailHMAC, u.account, meta)
	}
	r, err := s.cfg.Store.Execute(ctx, command("auth.two_factor_disable", userActor(p.UserID), meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		switch err := s.checkFactor(ctx, tx, p.UserID, f); {
		case errors.Is(err, errFactorNotEnabled):
			return domain.Receipt{}, errTwoFactorOff
		case err != nil:
			return domain.Receipt{}, err
		}
		if err := deleteTwoFactor(ctx, tx, p.UserID); err != nil {
			return domain.Receipt{}, err
		}
		// Password and code were right: the failure count starts over, as
		// after a login.
		if _, err := tx.Exec(ctx, `DELETE FROM login_attempts WHERE email_hmac = $1`, u.emailHMAC); err != nil {
			return domain.Receipt{}, err
		}
		_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: p.UserID.String(),
			ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{p.UserID},
			Events: []domain.Event{domain.UserTwoFactorDisabled{UserID: p.UserID, Method: domain.TwoFactorMethodTOTP}}})
		return domain.Receipt{Status: http.StatusOK}, err
	})
	if errors.Is(err, errWrongFactor) {
		if err := s.recordFailure(ctx, u.emailHMAC, u.account, meta); err != nil {
			return domain.Written{}, err
		}
		return domain.Written{}, errTwoFactorFailed
	}
	if err != nil {
		return domain.Written{}, err
	}
	return domain.Written{Position: r.Position}, nil
}

// challengeClaims is the sealed content of a challenge token: the open
// challenge row it names, the user, and what the login asked for, so the
// session it completes is the one the password login would have started.
type challengeClaims struct {
	ID         uuid.UUID `json:"c"`
	UserID     uuid.UUID `json:"u"`
	Email      string    `json:"e"`
	DeviceID   string    `json:"d,omitempty"`
	DeviceName string    `json:"n,omitempty"`
	ExpiresAt  time.Time `json:"x"`
}

// challenge records an open challenge for a password login of a 2FA
// account and returns it as the *domain.TwoFactorChallenge Login answers.
// The token is the claims sealed with the KEK (AES-256-GCM under
// challengeLabel): opaque to the client, unforgeable, and it carries the
// device name without storing it anywhere. The row makes it single use.
func (s *Service) challenge(ctx context.Context, acct account, email string, in domain.LoginInput) error {
	now := s.now()
	c := challengeClaims{ID: uuid.New(), UserID: acct.id, Email: email, DeviceID: in.DeviceID,
		DeviceName: strings.TrimSpace(in.DeviceName), ExpiresAt: now.Add(domain.TwoFactorChallengeTTL)}
	err := pg.InTx(ctx, s.pool, system, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM two_factor_challenges WHERE user_id = $1 AND expires_at <= $2`, acct.id, now); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO two_factor_challenges (challenge_id, user_id, expires_at) VALUES ($1, $2, $3)`, c.ID, c.UserID, c.ExpiresAt)
		return err
	})
	if err != nil {
		return fmt.Errorf("2fa challenge: %w", err)
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return &domain.TwoFactorChallenge{
		ChallengeToken: base64.RawURLEncoding.EncodeToString(s.cfg.Store.Keyring().Wrap(challengeLabel, b)),
		ExpiresAt:      c.ExpiresAt,
	}
}

func (s *Service) openChallenge(token string, now time.Time) (challengeClaims, error) {
	var c challengeClaims
	if token == "" || len(token) > maxChallengeLen {
		return c, errChallengeInvalid
	}
	sealed, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return c, errChallengeInvalid
	}
	b, err := s.cfg.Store.Keyring().Unwrap(challengeLabel, sealed)
	if err != nil || json.Unmarshal(b, &c) != nil || c.ID == uuid.Nil || c.UserID == uuid.Nil {
		return challengeClaims{}, errChallengeInvalid
	}
	if !now.Before(c.ExpiresAt) {
		return challengeClaims{}, errChallengeExpired
	}
	return c, nil
}

// CompleteLogin implements domain.TwoFactor: the challenge names the user
// and the login; a verification slot of the account's lockout is taken;
// then, in the transaction that starts the session, the challenge row is
// consumed and the factor verified and spent (a wrong factor rolls it all
// back and counts as a failed login).
func (s *Service) CompleteLogin(ctx context.Context, in domain.TwoFactorLoginInput, meta domain.RequestMeta) (domain.TokenPair, domain.Written, error) {
	f, err := validateFactor(in.SecondFactor)
	if err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	c, err := s.openChallenge(in.ChallengeToken, s.now())
	if err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	u, err := s.loadUserCredentials(ctx, c.UserID)
	if err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	if !u.found || !u.twoFactor {
		return domain.TokenPair{}, domain.Written{}, errChallengeInvalid
	}
	if err := s.reserveVerification(ctx, u.emailHMAC, s.now()); err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	login := domain.LoginInput{Email: c.Email, DeviceID: c.DeviceID, DeviceName: c.DeviceName}
	pair, w, err := s.startSession(ctx, u.emailHMAC, u.account, c.Email, login, meta, func(ctx context.Context, tx *eventstore.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM two_factor_challenges WHERE challenge_id = $1 AND user_id = $2 AND expires_at > $3`,
			c.ID, c.UserID, tx.Now())
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errChallengeInvalid
		}
		if err := s.checkFactor(ctx, tx, c.UserID, f); errors.Is(err, errFactorNotEnabled) {
			return errChallengeInvalid
		} else if err != nil {
			return err
		}
		return nil
	})
	if errors.Is(err, errWrongFactor) {
		if err := s.recordFailure(ctx, u.emailHMAC, u.account, meta); err != nil {
			return domain.TokenPair{}, domain.Written{}, err
		}
		return domain.TokenPair{}, domain.Written{}, errTwoFactorFailed
	}
	return pair, w, err
}
