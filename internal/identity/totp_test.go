package identity_test

import (
	"bytes"
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/identity"
)

// tfUser is a registered user with TOTP 2FA confirmed, on a service whose
// clock the test moves.
type tfUser struct {
	f       *fixture
	svc     *identity.Service
	clock   *fakeClock
	email   string
	p       domain.Principal
	secret  string
	codes   []string
	enabled time.Time // the clock when 2FA was confirmed
}

// newTFUser registers a user, logs in and enrolls and confirms TOTP with
// the code of the clock's current step. The clock starts at the beginning
// of a 30-second step, so the test knows which step every code is of.
func newTFUser(t *testing.T, f *fixture) *tfUser {
	t.Helper()
	clock := &fakeClock{now: time.Now().UTC().Truncate(identity.TOTPPeriod * time.Second)}
	svc, _ := f.service(t, clock)
	u := &tfUser{f: f, svc: svc, clock: clock, email: "tf." + randomSuffix() + "@example.com"}
	if _, _, err := svc.Register(ctxT(t), domain.RegisterInput{Email: u.email, Password: goodPassword}, domain.RequestMeta{}); err != nil {
		t.Fatal(err)
	}
	pair, _, err := svc.Login(ctxT(t), domain.LoginInput{Email: u.email, Password: goodPassword}, domain.RequestMeta{})
	if err != nil {
		t.Fatal(err)
	}
	if u.p, _, err = svc.Authenticate(ctxT(t), pair.AccessToken); err != nil {
		t.Fatal(err)
	}
	e, err := svc.EnrollTwoFactor(ctxT(t), u.p, domain.RequestMeta{})
	if err != nil {
		t.Fatal(err)
	}
	u.secret = e.Secret
	out, _, err := svc.ConfirmTwoFactor(ctxT(t), u.p, u.code(t, 0), domain.RequestMeta{})
	if err != nil {
		t.Fatalf("confirm: %v", err)
	}
	u.codes, u.enabled = out.RecoveryCodes, clock.Now()
	return u
}

// code is the TOTP code of the clock's time plus offset, as an
// authenticator app computes it.
func (u *tfUser) code(t *testing.T, offset time.Duration) string {
	t.Helper()
	c, err := totp.GenerateCode(u.secret, u.clock.Now().Add(offset))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// challenge logs in with the right password and returns the challenge
// token that 2FA answers with.
func (u *tfUser) challenge(t *testing.T, in domain.LoginInput) string {
	t.Helper()
	in.Email, in.Password = u.email, goodPassword
	pair, _, err := u.svc.Login(ctxT(t), in, domain.RequestMeta{})
	var ch *domain.TwoFactorChallenge
	if !errors.As(err, &ch) || pair.AccessToken != "" {
		t.Fatalf("login with 2FA on = %+v, %v; want a challenge and no tokens", pair, err)
	}
	if code(err) != domain.CodeTwoFactorRequired || ch.ChallengeToken == "" {
		t.Fatalf("challenge error code %q, token %q", code(err), ch.ChallengeToken)
	}
	if want := u.clock.Now().Add(domain.TwoFactorChallengeTTL); !ch.ExpiresAt.Equal(want) {
		t.Errorf("challenge expires at %v, want %v", ch.ExpiresAt, want)
	}
	return ch.ChallengeToken
}

func (u *tfUser) complete(t *testing.T, challenge string, f domain.SecondFactor) (domain.TokenPair, error) {
	t.Helper()
	pair, _, err := u.svc.CompleteLogin(ctxT(t), domain.TwoFactorLoginInput{ChallengeToken: challenge, SecondFactor: f}, domain.RequestMeta{})
	return pair, err
}

// mustComplete completes a login and checks the session it started works.
func (u *tfUser) mustComplete(t *testing.T, challenge string, f domain.SecondFactor) domain.TokenPair {
	t.Helper()
	pair, err := u.complete(t, challenge, f)
	if err != nil {
		t.Fatalf("complete login with %+v: %v", f, err)
	}
	if pair.User.ID != u.p.UserID || pair.User.Email != u.email || pair.AccessToken == "" || pair.RefreshToken == "" {
		t.Fatalf("complete login = %+v", pair)
	}
	if _, _, err := u.svc.Authenticate(ctxT(t), pair.AccessToken); err != nil {
		t.Fatalf("the completed login's access token: %v", err)
	}
	return pair
}

// events counts the user's events of type typ.
func (u *tfUser) events(t *testing.T, typ string) int {
	t.Helper()
	var n int
	if err := u.f.pool.QueryRow(ctxT(t), `SELECT count(*) FROM events WHERE event_type = $1 AND stream_id = $2`,
		typ, u.p.UserID.String()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

var recoveryCodeShape = regexp.MustCompile(`^[a-z2-7]{5}-[a-z2-7]{5}$`)

// TestTwoFactorEnrollAndConfirm: enrolment gives a secret an authenticator
// app takes; confirming it needs a valid code, issues ten distinct recovery
// codes, and records the fact without the secret or any code.
func TestTwoFactorEnrollAndConfirm(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	clock := &fakeClock{now: time.Now().UTC().Truncate(identity.TOTPPeriod * time.Second)}
	svc, _ := f.service(t, clock)
	email := "enroll." + randomSuffix() + "@example.com"
	if _, _, err := svc.Register(ctxT(t), domain.RegisterInput{Email: email, Password: goodPassword}, domain.RequestMeta{}); err != nil {
		t.Fatal(err)
	}
	pair, _, err := svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: goodPassword}, domain.RequestMeta{})
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := svc.Authenticate(ctxT(t), pair.AccessToken)
	if err != nil {
		t.Fatal(err)
	}

	if _, _, err := svc.ConfirmTwoFactor(ctxT(t), p, "123456", domain.RequestMeta{}); code(err) != domain.CodeConflict {
		t.Errorf("confirm before enrolling = %v, want CONFLICT", err)
	}
	first, err := svc.EnrollTwoFactor(ctxT(t), p, domain.RequestMeta{})
	if err != nil {
		t.Fatal(err)
	}
	// Enrolling again replaces the pending secret: the first one's codes
	// no longer confirm.
	e, err := svc.EnrollTwoFactor(ctxT(t), p, domain.RequestMeta{})
	if err != nil {
		t.Fatal(err)
	}
	if e.Secret == first.Secret {
		t.Fatal("a second enrolment kept the secret")
	}
	key, err := otp.NewKeyFromURL(e.OtpauthURI)
	if err != nil {
		t.Fatalf("otpauth URI %q: %v", e.OtpauthURI, err)
	}
	if key.Type() != "totp" || key.Secret() != e.Secret || key.Issuer() != identity.TOTPIssuer || key.AccountName() != email ||
		key.Period() != 30 || key.Digits() != otp.DigitsSix || key.Algorithm() != otp.AlgorithmSHA1 {
		t.Errorf("otpauth URI %q: type %s issuer %q account %q period %d digits %v", e.OtpauthURI, key.Type(), key.Issuer(),
			key.AccountName(), key.Period(), key.Digits())
	}
	if len(e.Secret) != 32 { // 20 bytes in base32
		t.Errorf("secret of %d characters, want 32", len(e.Secret))
	}

	// Until confirmed, 2FA is off: a login gets a session at once.
	if _, _, err := svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: goodPassword}, domain.RequestMeta{}); err != nil {
		t.Fatalf("login with a pending enrolment: %v", err)
	}
	oldCode, _ := totp.GenerateCode(first.Secret, clock.Now())
	for _, c := range []string{oldCode, "000000"} {
		if _, _, err := svc.ConfirmTwoFactor(ctxT(t), p, c, domain.RequestMeta{}); code(err) != domain.CodeTwoFactorFailed {
			t.Errorf("confirm with a wrong code = %v, want TWO_FACTOR_FAILED", err)
		}
	}
	if _, _, err := svc.ConfirmTwoFactor(ctxT(t), p, "12345", domain.RequestMeta{}); code(err) != domain.CodeValidationFailed {
		t.Errorf("confirm with 5 digits = %v, want VALIDATION_FAILED", err)
	}
	good, _ := totp.GenerateCode(e.Secret, clock.Now())
	out, w, err := svc.ConfirmTwoFactor(ctxT(t), p, good[:3]+" "+good[3:], domain.RequestMeta{})
	if err != nil {
		t.Fatalf("confirm: %v", err)
	}
	if !out.Enabled || len(out.RecoveryCodes) != domain.RecoveryCodeCount || w.Position == "" {
		t.Fatalf("confirm = %+v, %+v", out, w)
	}
	seen := map[string]bool{}
	for _, rc := range out.RecoveryCodes {
		if !recoveryCodeShape.MatchString(rc) || seen[rc] {
			t.Errorf("recovery code %q is malformed or repeated", rc)
		}
		seen[rc] = true
	}

	if _, err := svc.EnrollTwoFactor(ctxT(t), p, domain.RequestMeta{}); code(err) != domain.CodeConflict {
		t.Errorf("enroll with 2FA on = %v, want CONFLICT", err)
	}
	if _, _, err := svc.ConfirmTwoFactor(ctxT(t), p, good, domain.RequestMeta{}); code(err) != domain.CodeConflict {
		t.Errorf("confirm with 2FA on = %v, want CONFLICT", err)
	}

	// The credential tables hold the secret only wrapped and the codes only
	// as keyed hashes; the events hold neither.
	var wrapped []byte
	var hashes [][]byte
	if err := f.pool.QueryRow(ctxT(t), `SELECT secret_wrapped, (SELECT array_agg(code_hash) FROM recovery_codes WHERE user_id = $1)
FROM two_factor WHERE user_id = $1`, p.UserID).Scan(&wrapped, &hashes); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(wrapped, []byte(e.Secret)) || len(hashes) != domain.RecoveryCodeCount {
		t.Errorf("two_factor holds the plain secret, or %d recovery hashes", len(hashes))
	}
	for _, h := range hashes {
		for _, rc := range out.RecoveryCodes {
			if bytes.Contains(h, []byte(rc)) || bytes.Contains(h, []byte(strings.ReplaceAll(rc, "-", ""))) {
				t.Error("a recovery code is stored in the clear")
			}
		}
	}
	var payloads string
	if err := f.pool.QueryRow(ctxT(t), `SELECT string_agg(payload::text || metadata::text, ' ') FROM events`).Scan(&payloads); err != nil {
		t.Fatal(err)
	}
	for _, secret := range append([]string{e.Secret, first.Secret}, out.RecoveryCodes...) {
		if strings.Contains(payloads, secret) {
			t.Errorf("the events contain %q", secret)
		}
	}
	if !strings.Contains(payloads, `"codesIssued": 10`) {
		t.Error("no user.two_factor_enabled payload with codesIssued 10")
	}
}

// TestTwoFactorLogin walks the second step of a login with a fixed clock:
// a code is accepted once, its replay in the same window is refused, the
// next window's code is accepted.
func TestTwoFactorLogin(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const step = identity.TOTPPeriod * time.Second

	t.Run("a code is accepted once; the next window's code is accepted", func(t *testing.T) {
		t.Parallel()
		u := newTFUser(t, f)
		started := u.events(t, "user.login_succeeded")

		// The confirming code's step is used: the same code cannot log in.
		ch := u.challenge(t, domain.LoginInput{DeviceID: "dev-2fa", DeviceName: "Laptop"})
		if u.events(t, "user.login_succeeded") != started {
			t.Fatal("a password step recorded a login")
		}
		if _, err := u.complete(t, ch, domain.SecondFactor{Code: u.code(t, 0)}); code(err) != domain.CodeTwoFactorFailed {
			t.Fatalf("the confirming code again = %v, want TWO_FACTOR_FAILED", err)
		}
		// The next window: its code works once, with the same challenge
		// (a wrong code does not use it up).
		u.clock.Advance(step)
		next := u.code(t, 0)
		pair := u.mustComplete(t, ch, domain.SecondFactor{Code: next})
		p, _, err := u.svc.Authenticate(ctxT(t), pair.AccessToken)
		if err != nil || p.DeviceID != "dev-2fa" {
			t.Errorf("the session of the completed login: %+v, %v; want device dev-2fa from the login", p, err)
		}
		// Its replay within the same window fails, with a fresh challenge
		// too, and that challenge stays open.
		ch2 := u.challenge(t, domain.LoginInput{})
		if _, err := u.complete(t, ch2, domain.SecondFactor{Code: next}); code(err) != domain.CodeTwoFactorFailed {
			t.Fatalf("replay in the same window = %v, want TWO_FACTOR_FAILED", err)
		}
		u.clock.Advance(10 * time.Second) // still the same step
		if _, err := u.complete(t, ch2, domain.SecondFactor{Code: next}); code(err) != domain.CodeTwoFactorFailed {
			t.Fatalf("replay later in the same window = %v, want TWO_FACTOR_FAILED", err)
		}
		// A code of the step after next is accepted early (clock skew);
		// then the one in between is too old.
		ahead, between := u.code(t, 2*step), u.code(t, step)
		u.clock.Advance(step)
		u.mustComplete(t, ch2, domain.SecondFactor{Code: ahead})
		if _, err := u.complete(t, u.challenge(t, domain.LoginInput{}), domain.SecondFactor{Code: between}); code(err) != domain.CodeTwoFactorFailed {
			t.Fatalf("a code of a step before the last used one = %v, want TWO_FACTOR_FAILED", err)
		}
		if got := u.events(t, "user.login_succeeded") - started; got != 2 {
			t.Errorf("%d logins recorded, want 2", got)
		}
		if got := u.events(t, "user.login_failed"); got != 4 {
			t.Errorf("%d user.login_failed, want 4 (one per refused code)", got)
		}
	})

	t.Run("a challenge starts one session and expires", func(t *testing.T) {
		t.Parallel()
		u := newTFUser(t, f)
		u.clock.Advance(step)
		ch := u.challenge(t, domain.LoginInput{})
		u.mustComplete(t, ch, domain.SecondFactor{Code: u.code(t, 0)})
		u.clock.Advance(step)
		if _, err := u.complete(t, ch, domain.SecondFactor{Code: u.code(t, 0)}); code(err) != domain.CodeTokenInvalid {
			t.Errorf("a used challenge = %v, want TOKEN_INVALID", err)
		}
		ch = u.challenge(t, domain.LoginInput{})
		u.clock.Advance(domain.TwoFactorChallengeTTL)
		if _, err := u.complete(t, ch, domain.SecondFactor{Code: u.code(t, 0)}); code(err) != domain.CodeTokenExpired {
			t.Errorf("an expired challenge = %v, want TOKEN_EXPIRED", err)
		}
		for name, bad := range map[string]string{
			"empty": "", "not base64": "!!!", "garbage": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
			"tampered": flipMiddle(u.challenge(t, domain.LoginInput{})),
		} {
			if _, err := u.complete(t, bad, domain.SecondFactor{Code: u.code(t, 0)}); code(err) != domain.CodeTokenInvalid {
				t.Errorf("%s challenge = %v, want TOKEN_INVALID", name, err)
			}
		}
		if _, err := u.complete(t, ch, domain.SecondFactor{}); code(err) != domain.CodeValidationFailed {
			t.Errorf("no factor = %v, want VALIDATION_FAILED", err)
		}
		if _, err := u.complete(t, ch, domain.SecondFactor{Code: "123456", RecoveryCode: u.codes[0]}); code(err) != domain.CodeValidationFailed {
			t.Errorf("both factors = %v, want VALIDATION_FAILED", err)
		}
	})

	t.Run("concurrent logins with one code: exactly one wins", func(t *testing.T) {
		t.Parallel()
		u := newTFUser(t, f)
		u.clock.Advance(step)
		c := u.code(t, 0)
		const n = 2 // the password steps and these take 2n ≤ 5 verifications of the lockout
		chs := make([]string, n)
		for i := range chs {
			chs[i] = u.challenge(t, domain.LoginInput{})
		}
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = u.complete(t, chs[i], domain.SecondFactor{Code: c})
			}()
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch code(err) {
			case "":
				won++
			case domain.CodeTwoFactorFailed, domain.CodeAccountLocked:
			default:
				t.Errorf("a concurrent login: %v", err)
			}
		}
		if won != 1 {
			t.Errorf("%d concurrent logins with one code succeeded, want exactly 1: %v", won, errs)
		}
	})

	t.Run("wrong codes count toward the lockout", func(t *testing.T) {
		t.Parallel()
		u := newTFUser(t, f)
		u.clock.Advance(step)
		ch := u.challenge(t, domain.LoginInput{}) // verification 1 of 5
		for i := range identity.LockoutThreshold - 1 {
			if _, err := u.complete(t, ch, domain.SecondFactor{Code: "000000"}); code(err) != domain.CodeTwoFactorFailed {
				t.Fatalf("wrong code %d = %v, want TWO_FACTOR_FAILED", i, err)
			}
		}
		if _, err := u.complete(t, ch, domain.SecondFactor{Code: u.code(t, 0)}); code(err) != domain.CodeAccountLocked || retryAfter(err) < 1 {
			t.Fatalf("the right code after four wrong ones = %v, want ACCOUNT_LOCKED", err)
		}
		if _, _, err := u.svc.Login(ctxT(t), domain.LoginInput{Email: u.email, Password: goodPassword}, domain.RequestMeta{}); code(err) != domain.CodeAccountLocked {
			t.Fatalf("a password login now = %v, want ACCOUNT_LOCKED", err)
		}
		if got := u.events(t, "user.login_failed"); got != identity.LockoutThreshold-1 {
			t.Errorf("%d user.login_failed, want %d", got, identity.LockoutThreshold-1)
		}
		// After the window, a login works again, and its success resets
		// the count.
		u.clock.Advance(identity.LockoutWindow)
		u.mustComplete(t, u.challenge(t, domain.LoginInput{}), domain.SecondFactor{Code: u.code(t, 0)})
		var rows int
		if err := f.pool.QueryRow(ctxT(t), `SELECT count(*) FROM login_attempts WHERE email_hmac = $1`, f.kr.EmailIndex(u.email)).Scan(&rows); err != nil || rows != 0 {
			t.Errorf("login_attempts rows after a completed login: %d, %v", rows, err)
		}
	})
}

// flipMiddle changes one character in the middle of a token (the last one
// may carry only padding bits, which decoding ignores).
func flipMiddle(s string) string {
	b := []byte(s)
	i := len(b) / 2
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

// TestTwoFactorRecoveryCodes: each recovery code replaces a TOTP code
// once, in any case and with or without its dash.
func TestTwoFactorRecoveryCodes(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	u := newTFUser(t, f)

	ch := u.challenge(t, domain.LoginInput{})
	u.mustComplete(t, ch, domain.SecondFactor{RecoveryCode: u.codes[0]})
	if n := u.events(t, "user.recovery_code_used"); n != 1 {
		t.Fatalf("%d user.recovery_code_used, want 1", n)
	}
	var remaining int
	if err := f.pool.QueryRow(ctxT(t), `SELECT (payload->>'remaining')::int FROM events WHERE event_type = 'user.recovery_code_used' AND stream_id = $1`,
		u.p.UserID.String()).Scan(&remaining); err != nil || remaining != domain.RecoveryCodeCount-1 {
		t.Errorf("remaining = %d, %v; want %d", remaining, err, domain.RecoveryCodeCount-1)
	}

	// Used: refused, however it is typed.
	ch = u.challenge(t, domain.LoginInput{})
	for _, reuse := range []string{u.codes[0], strings.ToUpper(strings.ReplaceAll(u.codes[0], "-", ""))} {
		if _, err := u.complete(t, ch, domain.SecondFactor{RecoveryCode: reuse}); code(err) != domain.CodeTwoFactorFailed {
			t.Fatalf("a used recovery code (%q) = %v, want TWO_FACTOR_FAILED", reuse, err)
		}
	}
	// Another code, typed upper-case without its dash, works.
	u.mustComplete(t, ch, domain.SecondFactor{RecoveryCode: strings.ToUpper(strings.ReplaceAll(u.codes[1], "-", ""))})
	// A made-up code does not.
	if _, err := u.complete(t, u.challenge(t, domain.LoginInput{}), domain.SecondFactor{RecoveryCode: "aaaaa-aaaaa"}); code(err) != domain.CodeTwoFactorFailed {
		t.Errorf("an unknown recovery code = %v, want TWO_FACTOR_FAILED", err)
	}
	var unused int
	if err := f.pool.QueryRow(ctxT(t), `SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL`, u.p.UserID).Scan(&unused); err != nil {
		t.Fatal(err)
	}
	if unused != domain.RecoveryCodeCount-2 {
		t.Errorf("%d unused recovery codes, want %d", unused, domain.RecoveryCodeCount-2)
	}
}

// TestTwoFactorDisable: turning 2FA off needs the password and a valid
// second factor; afterwards a login needs only the password.
func TestTwoFactorDisable(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const step = identity.TOTPPeriod * time.Second

	t.Run("password and code", func(t *testing.T) {
		t.Parallel()
		u := newTFUser(t, f)
		u.clock.Advance(step)
		disable := func(pw string, sf domain.SecondFactor) error {
			_, err := u.svc.DisableTwoFactor(ctxT(t), u.p, domain.TwoFactorDisableInput{Password: pw, SecondFactor: sf}, domain.RequestMeta{})
			return err
		}
		if err := disable(wrongPassword, domain.SecondFactor{Code: u.code(t, 0)}); code(err) != domain.CodeInvalidCredentials {
			t.Errorf("wrong password = %v, want INVALID_CREDENTIALS", err)
		}
		if err := disable(goodPassword, domain.SecondFactor{}); code(err) != domain.CodeValidationFailed {
			t.Errorf("no code = %v, want VALIDATION_FAILED", err)
		}
		if err := disable(goodPassword, domain.SecondFactor{Code: "000000"}); code(err) != domain.CodeTwoFactorFailed {
			t.Errorf("wrong code = %v, want TWO_FACTOR_FAILED", err)
		}
		// The confirming code's step is spent.
		if err := disable(goodPassword, domain.SecondFactor{Code: u.code(t, -step)}); code(err) != domain.CodeTwoFactorFailed {
			t.Errorf("a used code = %v, want TWO_FACTOR_FAILED", err)
		}
		if got := u.events(t, "user.login_failed"); got != 3 {
			t.Errorf("%d user.login_failed, want 3", got)
		}
		if err := disable(goodPassword, domain.SecondFactor{Code: u.code(t, 0)}); err != nil {
			t.Fatalf("disable: %v", err)
		}
		if u.events(t, "user.two_factor_disabled") != 1 {
			t.Error("no user.two_factor_disabled")
		}
		var left int
		if err := f.pool.QueryRow(ctxT(t), `SELECT (SELECT count(*) FROM two_factor WHERE user_id = $1) + (SELECT count(*) FROM recovery_codes WHERE user_id = $1)
    + (SELECT count(*) FROM two_factor_challenges WHERE user_id = $1)`, u.p.UserID).Scan(&left); err != nil || left != 0 {
			t.Errorf("%d 2FA credential rows left, %v", left, err)
		}
		if _, _, err := u.svc.Login(ctxT(t), domain.LoginInput{Email: u.email, Password: goodPassword}, domain.RequestMeta{}); err != nil {
			t.Errorf("a login after disabling: %v", err)
		}
		if err := disable(goodPassword, domain.SecondFactor{Code: u.code(t, step)}); code(err) != domain.CodeConflict {
			t.Errorf("disable again = %v, want CONFLICT", err)
		}
		// And it can be enrolled again from scratch.
		if _, err := u.svc.EnrollTwoFactor(ctxT(t), u.p, domain.RequestMeta{}); err != nil {
			t.Errorf("enroll after disabling: %v", err)
		}
	})

	t.Run("password and recovery code; open challenges die with it", func(t *testing.T) {
		t.Parallel()
		u := newTFUser(t, f)
		ch := u.challenge(t, domain.LoginInput{})
		if _, err := u.svc.DisableTwoFactor(ctxT(t), u.p, domain.TwoFactorDisableInput{Password: goodPassword,
			SecondFactor: domain.SecondFactor{RecoveryCode: u.codes[3]}}, domain.RequestMeta{}); err != nil {
			t.Fatalf("disable with a recovery code: %v", err)
		}
		u.clock.Advance(step)
		if _, err := u.complete(t, ch, domain.SecondFactor{Code: u.code(t, 0)}); code(err) != domain.CodeTokenInvalid {
			t.Errorf("a challenge from before disabling = %v, want TOKEN_INVALID", err)
		}
	})
}
