package identity_test

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/identity"
	"github.com/manacore/mana/internal/mail"
	"github.com/manacore/mana/projections"
)

// outbox collects what the mail worker sends.
type outbox struct {
	mu   sync.Mutex
	sent []mail.Message
}

func (o *outbox) Send(_ context.Context, m mail.Message) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sent = append(o.sent, m)
	return nil
}

// accountEnv is an identity service, its store and a mail worker on one
// database, all under one settable clock.
type accountEnv struct {
	f      *fixture
	svc    *identity.Service
	store  *eventstore.Store
	clock  *fakeClock
	worker *mail.Worker
	box    *outbox
	ann    *announced
}

// newAccountEnv builds the environment on a database of its own: every
// worker sends whatever is queued in its database.
func newAccountEnv(t *testing.T, requireVerified bool) *accountEnv {
	t.Helper()
	f := newFixture(t)
	e := &accountEnv{f: f, clock: &fakeClock{now: time.Now().UTC().Truncate(time.Second)}, box: &outbox{}, ann: &announced{}}
	var err error
	e.store, err = eventstore.New(f.pool, eventstore.Options{Keyring: f.kr, Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	e.svc, err = identity.New(identity.Config{
		Store: e.store, Tokens: f.tokens, Hasher: f.hasher, Clock: e.clock, Revocations: e.ann,
		Freshness: projections.NewFreshness(f.pool, nil, time.Second), ReuseWindow: 10 * time.Second,
		RequireEmailVerification: requireVerified,
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := mail.NewRenderer("", "")
	if err != nil {
		t.Fatal(err)
	}
	e.worker, err = mail.NewWorker(mail.WorkerConfig{Store: e.store, Mailer: e.box, Renderer: r, Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

var tokenLine = regexp.MustCompile(`(?m)^([A-Za-z0-9_-]{43})\r?$`)

// mails sends what is due and returns every mail of kind sent to email so
// far, oldest first.
func (e *accountEnv) mails(t *testing.T, kind, email string) []mail.Message {
	t.Helper()
	if _, err := e.worker.SendDue(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	e.box.mu.Lock()
	defer e.box.mu.Unlock()
	var out []mail.Message
	for _, m := range e.box.sent {
		if m.Kind == kind && m.To == email {
			out = append(out, m)
		}
	}
	return out
}

// token returns the token of the newest mail of kind to email, failing when
// there are not exactly n such mails.
func (e *accountEnv) token(t *testing.T, kind, email string, n int) string {
	t.Helper()
	ms := e.mails(t, kind, email)
	if len(ms) != n {
		t.Fatalf("%d %s mails to %s, want %d", len(ms), kind, email, n)
	}
	m := tokenLine.FindStringSubmatch(ms[n-1].Text)
	if m == nil {
		t.Fatalf("no token in the mail:\n%s", ms[n-1].Text)
	}
	return m[1]
}

func (e *accountEnv) register(t *testing.T, prefix string) (string, uuid.UUID) {
	t.Helper()
	email := prefix + "." + randomSuffix() + "@example.com"
	u, _, err := e.svc.Register(ctxT(t), domain.RegisterInput{Email: email, Password: goodPassword, Name: "Ada"}, domain.RequestMeta{})
	if err != nil {
		t.Fatal(err)
	}
	return email, u.ID
}

func (e *accountEnv) login(t *testing.T, email, password, device string) (domain.TokenPair, domain.Principal) {
	t.Helper()
	pair, _, err := e.svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: password, DeviceID: device, DeviceName: "Device " + device}, domain.RequestMeta{})
	if err != nil {
		t.Fatalf("login %s: %v", email, err)
	}
	p, _, err := e.svc.Authenticate(ctxT(t), pair.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	return pair, p
}

func (e *accountEnv) profile(t *testing.T, user uuid.UUID) domain.Profile {
	t.Helper()
	prof, err := e.svc.Profile(ctxT(t), domain.Principal{UserID: user})
	if err != nil {
		t.Fatal(err)
	}
	return prof
}

func TestEmailVerification(t *testing.T) {
	t.Parallel()

	t.Run("the registration mail verifies once", func(t *testing.T) {
		t.Parallel()
		e := newAccountEnv(t, false)
		email, user := e.register(t, "verify")
		tok := e.token(t, mail.KindVerifyEmail, email, 1)
		if e.profile(t, user).EmailVerified {
			t.Fatal("verified before the token was used")
		}
		if _, err := e.svc.VerifyEmail(ctxT(t), tok, domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		if !e.profile(t, user).EmailVerified {
			t.Error("not verified after the token")
		}
		if _, err := e.svc.VerifyEmail(ctxT(t), tok, domain.RequestMeta{}); code(err) != domain.CodeTokenInvalid {
			t.Errorf("second use = %v, want TOKEN_INVALID", err)
		}
		// A verified address gets no more mails.
		if err := e.svc.ResendVerification(ctxT(t), email, domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		if n := len(e.mails(t, mail.KindVerifyEmail, email)); n != 1 {
			t.Errorf("%d verification mails after a resend for a verified address, want 1", n)
		}
	})

	t.Run("a verification token expires after 24 hours", func(t *testing.T) {
		t.Parallel()
		e := newAccountEnv(t, false)
		email, user := e.register(t, "verify-expiry")
		old := e.token(t, mail.KindVerifyEmail, email, 1)
		e.clock.Advance(domain.VerifyTokenTTL)
		if _, err := e.svc.VerifyEmail(ctxT(t), old, domain.RequestMeta{}); code(err) != domain.CodeTokenInvalid {
			t.Fatalf("expired token = %v, want TOKEN_INVALID", err)
		}
		if err := e.svc.ResendVerification(ctxT(t), "  "+email+" ", domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		fresh := e.token(t, mail.KindVerifyEmail, email, 2)
		e.clock.Advance(domain.VerifyTokenTTL - time.Second)
		if _, err := e.svc.VerifyEmail(ctxT(t), fresh, domain.RequestMeta{}); err != nil {
			t.Fatalf("a token a second before its expiry: %v", err)
		}
		if !e.profile(t, user).EmailVerified {
			t.Error("not verified")
		}
	})

	t.Run("bad tokens", func(t *testing.T) {
		t.Parallel()
		e := newAccountEnv(t, false)
		email, _ := e.register(t, "verify-bad")
		tok := e.token(t, mail.KindVerifyEmail, email, 1)
		for _, bad := range []string{"", "x", tok[:42], tok + "A", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"} {
			if _, err := e.svc.VerifyEmail(ctxT(t), bad, domain.RequestMeta{}); code(err) != domain.CodeTokenInvalid {
				t.Errorf("VerifyEmail(%q) = %v, want TOKEN_INVALID", bad, err)
			}
		}
		// A verification token is no reset token.
		if _, err := e.svc.ResetPassword(ctxT(t), tok, "a new password", domain.RequestMeta{}); code(err) != domain.CodeTokenInvalid {
			t.Errorf("a verification token resets the password: %v", err)
		}
	})

	t.Run("REQUIRE_EMAIL_VERIFICATION refuses logins until verified", func(t *testing.T) {
		t.Parallel()
		e := newAccountEnv(t, true)
		email, _ := e.register(t, "require")
		_, _, err := e.svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: goodPassword}, domain.RequestMeta{})
		if code(err) != domain.CodeEmailNotVerified {
			t.Fatalf("login before verification = %v, want EMAIL_NOT_VERIFIED", err)
		}
		// Without the password the answer reveals nothing.
		_, _, err = e.svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: wrongPassword}, domain.RequestMeta{})
		if code(err) != domain.CodeInvalidCredentials {
			t.Fatalf("wrong password = %v, want INVALID_CREDENTIALS", err)
		}
		if _, err := e.svc.VerifyEmail(ctxT(t), e.token(t, mail.KindVerifyEmail, email, 1), domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		e.login(t, email, goodPassword, "")
	})
}

func TestPasswordReset(t *testing.T) {
	t.Parallel()

	t.Run("reset with the mailed token", func(t *testing.T) {
		t.Parallel()
		e := newAccountEnv(t, false)
		email, user := e.register(t, "reset")
		a, _ := e.login(t, email, goodPassword, "a")
		b, _ := e.login(t, email, goodPassword, "b")
		if err := e.svc.ForgotPassword(ctxT(t), email, domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		tok := e.token(t, mail.KindResetPassword, email, 1)
		// A new password out of bounds spends nothing.
		if _, err := e.svc.ResetPassword(ctxT(t), tok, "short", domain.RequestMeta{}); code(err) != domain.CodeValidationFailed {
			t.Fatalf("short password = %v", err)
		}
		const newPassword = "a brand new password"
		if _, err := e.svc.ResetPassword(ctxT(t), tok, newPassword, domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		for _, pair := range []domain.TokenPair{a, b} {
			if _, _, err := e.svc.Authenticate(ctxT(t), pair.AccessToken); code(err) != domain.CodeSessionRevoked {
				t.Errorf("a session from before the reset = %v, want SESSION_REVOKED", err)
			}
		}
		if len(e.ann.sids) != 2 {
			t.Errorf("%d revocations announced, want 2", len(e.ann.sids))
		}
		if _, _, err := e.svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: goodPassword}, domain.RequestMeta{}); code(err) != domain.CodeInvalidCredentials {
			t.Errorf("the old password = %v, want INVALID_CREDENTIALS", err)
		}
		e.login(t, email, newPassword, "")
		if _, err := e.svc.ResetPassword(ctxT(t), tok, "yet another password", domain.RequestMeta{}); code(err) != domain.CodeTokenInvalid {
			t.Errorf("second use = %v, want TOKEN_INVALID", err)
		}
		// The mailbox is proven: the address counts as verified.
		if !e.profile(t, user).EmailVerified {
			t.Error("a reset did not verify the address")
		}
	})

	t.Run("unknown addresses get no mail and leave no trace", func(t *testing.T) {
		t.Parallel()
		e := newAccountEnv(t, false)
		nobody := "nobody." + randomSuffix() + "@example.com"
		if err := e.svc.ForgotPassword(ctxT(t), nobody, domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		if err := e.svc.ResendVerification(ctxT(t), nobody, domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		e.box.mu.Lock()
		n := len(e.box.sent)
		e.box.mu.Unlock()
		if _, err := e.worker.SendDue(ctxT(t)); err != nil || n != 0 || len(e.mails(t, mail.KindResetPassword, nobody)) != 0 {
			t.Errorf("mails for an unknown address: %d, %v", n, err)
		}
		if err := e.svc.ForgotPassword(ctxT(t), "not an address", domain.RequestMeta{}); code(err) != domain.CodeValidationFailed {
			t.Errorf("malformed address = %v, want VALIDATION_FAILED", err)
		}
	})

	t.Run("a reset token expires after an hour", func(t *testing.T) {
		t.Parallel()
		e := newAccountEnv(t, false)
		email, _ := e.register(t, "reset-expiry")
		if err := e.svc.ForgotPassword(ctxT(t), email, domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		first := e.token(t, mail.KindResetPassword, email, 1)
		e.clock.Advance(59 * time.Minute)
		if err := e.svc.ForgotPassword(ctxT(t), email, domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		second := e.token(t, mail.KindResetPassword, email, 2)
		e.clock.Advance(time.Minute)
		if _, err := e.svc.ResetPassword(ctxT(t), first, "password after expiry", domain.RequestMeta{}); code(err) != domain.CodeTokenInvalid {
			t.Fatalf("a token an hour old = %v, want TOKEN_INVALID", err)
		}
		if _, err := e.svc.ResetPassword(ctxT(t), second, "password in time", domain.RequestMeta{}); err != nil {
			t.Fatalf("a token a minute old: %v", err)
		}
		e.login(t, email, "password in time", "")
	})

	t.Run("using one reset token spends the others", func(t *testing.T) {
		t.Parallel()
		e := newAccountEnv(t, false)
		email, _ := e.register(t, "reset-many")
		for i := 0; i < 2; i++ {
			if err := e.svc.ForgotPassword(ctxT(t), email, domain.RequestMeta{}); err != nil {
				t.Fatal(err)
			}
		}
		ms := e.mails(t, mail.KindResetPassword, email)
		if len(ms) != 2 {
			t.Fatalf("%d reset mails, want 2", len(ms))
		}
		first, second := tokenLine.FindStringSubmatch(ms[0].Text)[1], tokenLine.FindStringSubmatch(ms[1].Text)[1]
		if first == second {
			t.Fatal("two requests mailed the same token")
		}
		if _, err := e.svc.ResetPassword(ctxT(t), second, "the second password", domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.ResetPassword(ctxT(t), first, "the first password", domain.RequestMeta{}); code(err) != domain.CodeTokenInvalid {
			t.Errorf("the other token after a reset = %v, want TOKEN_INVALID", err)
		}
	})

	t.Run("a reset clears a lock", func(t *testing.T) {
		t.Parallel()
		e := newAccountEnv(t, false)
		email, user := e.register(t, "reset-lock")
		var err error
		for i := 0; i < identity.LockoutThreshold; i++ {
			_, _, err = e.svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: wrongPassword}, domain.RequestMeta{})
		}
		if _, _, err = e.svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: goodPassword}, domain.RequestMeta{}); code(err) != domain.CodeAccountLocked {
			t.Fatalf("after %d failures = %v, want ACCOUNT_LOCKED", identity.LockoutThreshold, err)
		}
		if err := e.svc.ForgotPassword(ctxT(t), email, domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.ResetPassword(ctxT(t), e.token(t, mail.KindResetPassword, email, 1), "unlocked password", domain.RequestMeta{}); err != nil {
			t.Fatal(err)
		}
		e.login(t, email, "unlocked password", "")
		// The event says a lock was cleared.
		var payload []byte
		if err := e.f.pool.QueryRow(ctxT(t), `SELECT payload FROM events WHERE stream_type = 'user' AND stream_id = $1 AND event_type = 'user.password_reset'`,
			user.String()).Scan(&payload); err != nil {
			t.Fatal(err)
		}
		var ev domain.UserPasswordReset
		if err := json.Unmarshal(payload, &ev); err != nil || !ev.Unlocked {
			t.Errorf("user.password_reset = %s (%v), want unlocked", payload, err)
		}
	})
}

func TestChangePassword(t *testing.T) {
	t.Parallel()
	e := newAccountEnv(t, false)
	email, _ := e.register(t, "change")
	mine, me := e.login(t, email, goodPassword, "mine")
	other, _ := e.login(t, email, goodPassword, "other")

	if _, err := e.svc.ChangePassword(ctxT(t), me, wrongPassword, "the next password", domain.RequestMeta{}); code(err) != domain.CodeInvalidCredentials {
		t.Fatalf("wrong current password = %v, want INVALID_CREDENTIALS", err)
	}
	if _, err := e.svc.ChangePassword(ctxT(t), me, goodPassword, "short", domain.RequestMeta{}); code(err) != domain.CodeValidationFailed {
		t.Fatalf("short new password = %v, want VALIDATION_FAILED", err)
	}
	if _, err := e.svc.ChangePassword(ctxT(t), me, goodPassword, "the next password", domain.RequestMeta{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.svc.Authenticate(ctxT(t), mine.AccessToken); err != nil {
		t.Errorf("the caller's own session after the change: %v", err)
	}
	if _, _, err := e.svc.Authenticate(ctxT(t), other.AccessToken); code(err) != domain.CodeSessionRevoked {
		t.Errorf("another session after the change = %v, want SESSION_REVOKED", err)
	}
	if _, _, err := e.svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: goodPassword}, domain.RequestMeta{}); code(err) != domain.CodeInvalidCredentials {
		t.Errorf("old password = %v", err)
	}
	e.login(t, email, "the next password", "")
	// The old password no longer changes anything.
	if _, err := e.svc.ChangePassword(ctxT(t), me, goodPassword, "a third password", domain.RequestMeta{}); code(err) != domain.CodeInvalidCredentials {
		t.Errorf("stale current password = %v", err)
	}
}

func TestProfile(t *testing.T) {
	t.Parallel()
	e := newAccountEnv(t, false)
	email, user := e.register(t, "profile")
	pair, me := e.login(t, email, goodPassword, "")
	prof := e.profile(t, user)
	if prof.ID != user || prof.Email != email || prof.Name != "Ada" || prof.Role != domain.RoleUser || prof.EmailVerified || prof.CreatedAt.IsZero() {
		t.Fatalf("profile %+v", prof)
	}
	name := "  Ada Lovelace "
	got, w, err := e.svc.UpdateProfile(ctxT(t), me, domain.ProfileUpdate{Name: &name}, domain.RequestMeta{})
	if err != nil || got.Name != "Ada Lovelace" || w.Position == "" {
		t.Fatalf("update = %+v, %+v, %v", got, w, err)
	}
	if e.profile(t, user).Name != "Ada Lovelace" {
		t.Error("the new name did not stick")
	}
	// Login and refresh answer with the new name.
	if p2, _ := e.login(t, email, goodPassword, ""); p2.User.Name != "Ada Lovelace" {
		t.Errorf("login name %q", p2.User.Name)
	}
	next, _, err := e.svc.Refresh(ctxT(t), pair.RefreshToken, domain.RequestMeta{})
	if err != nil || next.User.Name != "Ada Lovelace" {
		t.Errorf("refresh name %q, %v", next.User.Name, err)
	}
	// The same name again writes nothing.
	same := "Ada Lovelace"
	if _, w, err := e.svc.UpdateProfile(ctxT(t), me, domain.ProfileUpdate{Name: &same}, domain.RequestMeta{}); err != nil || w.Position != "" {
		t.Errorf("unchanged name wrote %+v, %v", w, err)
	}
	tooLong := strings.Repeat("n", 256)
	if _, _, err := e.svc.UpdateProfile(ctxT(t), me, domain.ProfileUpdate{Name: &tooLong}, domain.RequestMeta{}); code(err) != domain.CodeValidationFailed {
		t.Errorf("a 256-character name = %v", err)
	}
}

// TestSecurityNotices: the mail worker, following the feed, mails about a
// login from a new device (not the first device) and a reused refresh token,
// and forgets an erased user's mail state.
func TestSecurityNotices(t *testing.T) {
	t.Parallel()
	e := newAccountEnv(t, false)
	email, user := e.register(t, "notice")
	// caughtUp lets the worker follow the feed until it has passed the
	// write at pos (the feed shows a commit once no older transaction of
	// the cluster is open).
	caughtUp := func(pos string) {
		t.Helper()
		want, err := eventstore.ParseCursor(pos)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := e.worker.Follow(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			var at eventstore.Cursor
			if err := e.f.pool.QueryRow(ctxT(t), `SELECT tx_id, position FROM mail_cursor`).Scan(&at.TxID, &at.Position); err != nil {
				t.Fatal(err)
			}
			if !at.Less(want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the mail worker is at %s, not past %s", at, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	login := func(device string) domain.TokenPair {
		t.Helper()
		pair, w, err := e.svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: goodPassword, DeviceID: device, DeviceName: "Device " + device}, domain.RequestMeta{})
		if err != nil {
			t.Fatal(err)
		}
		caughtUp(w.Position)
		return pair
	}
	count := func(kind string) int { t.Helper(); return len(e.mails(t, kind, email)) }

	login("laptop")
	if n := count(mail.KindNewDevice); n != 0 {
		t.Fatalf("%d notices for the first device, want 0", n)
	}
	login("phone")
	if n := count(mail.KindNewDevice); n != 1 {
		t.Fatalf("%d notices after a second device, want 1", n)
	}
	pair := login("laptop")
	if n := count(mail.KindNewDevice); n != 1 {
		t.Fatalf("%d notices after a known device, want still 1", n)
	}
	if m := e.mails(t, mail.KindNewDevice, email)[0]; !strings.Contains(m.Text, "Device phone") {
		t.Errorf("the notice does not name the device:\n%s", m.Text)
	}

	if _, _, err := e.svc.Refresh(ctxT(t), pair.RefreshToken, domain.RequestMeta{}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(11 * time.Second)
	if _, _, err := e.svc.Refresh(ctxT(t), pair.RefreshToken, domain.RequestMeta{}); code(err) != domain.CodeRefreshTokenReused {
		t.Fatalf("reuse = %v", err)
	}
	head, err := e.store.FeedHead(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	_ = head
	deadline := time.Now().Add(30 * time.Second)
	for count(mail.KindRefreshReuse) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no refresh-token reuse notice")
		}
		if _, err := e.worker.Follow(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if m := e.mails(t, mail.KindRefreshReuse, email)[0]; !strings.Contains(m.Text, "Device laptop") {
		t.Errorf("the reuse notice does not name the session's device:\n%s", m.Text)
	}

	// An erased user's queued mails, tokens and devices go.
	if err := e.svc.ForgotPassword(ctxT(t), email, domain.RequestMeta{}); err != nil {
		t.Fatal(err)
	}
	r, err := e.store.Execute(ctxT(t), eventstore.Command{Name: "test.erase"}, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: user.String(), ExpectedVersion: eventstore.AnyVersion,
			Events: []domain.Event{domain.UserErased{UserID: user, ErasedAt: tx.Now()}}})
		return domain.Receipt{}, err
	})
	if err != nil {
		t.Fatal(err)
	}
	caughtUp(r.Position)
	var left int
	if err := e.f.pool.QueryRow(ctxT(t), `SELECT (SELECT count(*) FROM mail_outbox WHERE user_id = $1) + (SELECT count(*) FROM email_tokens WHERE user_id = $1)
		+ (SELECT count(*) FROM mail_known_devices WHERE user_id = $1)`, user).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d mail rows of the erased user remain", left)
	}
}
