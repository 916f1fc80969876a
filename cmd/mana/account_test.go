package main

import (
	"bytes"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/internal/mail/mailpit"
)

// The account tests run `mana serve` with SMTP_URL pointing at a real
// mailpit on free loopback ports, and read the mails the service sends
// through mailpit's REST API to complete the verification and reset flows.

// mailWait bounds the wait for one mail: the worker polls every 500 ms.
const mailWait = 30 * time.Second

// appURL is the web app the token mails link to in these tests.
const appURL = "https://app.mana.test"

// Subjects of the mails (internal/mail/templates).
const (
	subjectVerify  = "Verify your email address"
	subjectReset   = "Reset your password"
	subjectDevice  = "New sign-in to your account"
	subjectReuse   = "A session of your account was stopped"
	accountOKReply = `{"success":true}`
)

var mailedToken = regexp.MustCompile(`(?m)^([A-Za-z0-9_-]{43})\r?$`)

// accountEnv is a server delivering to a mailpit.
type accountEnv struct {
	*authServer
	mp *mailpit.Server
}

func startAccountServer(t *testing.T, extra map[string]string) *accountEnv {
	t.Helper()
	mp := mailpit.Start(t)
	vars := map[string]string{"SMTP_URL": mp.SMTPURL(), "APP_URL": appURL, "MAIL_FROM": "Mana Core <no-reply@mana.test>"}
	for k, v := range extra {
		vars[k] = v
	}
	return &accountEnv{authServer: startAuthServer(t, vars), mp: mp}
}

// mails waits until email has n mails with subject and returns them,
// newest first.
func (s *accountEnv) mails(t *testing.T, email, subject string, n int) []mailpit.Message {
	t.Helper()
	deadline := time.Now().Add(mailWait)
	for {
		var got []mailpit.Message
		for _, m := range s.mp.To(email) {
			if m.Subject == subject {
				got = append(got, m)
			}
		}
		if len(got) >= n {
			if len(got) > n {
				t.Fatalf("%d mails %q to %s, want %d", len(got), subject, email, n)
			}
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d mails %q to %s after %v, want %d", len(got), subject, email, mailWait, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// token waits for the n-th mail with subject to email and returns its
// token, checking that both parts carry it and the link to the app.
func (s *accountEnv) token(t *testing.T, email, subject string, n int) string {
	t.Helper()
	m := s.mails(t, email, subject, n)[0]
	found := mailedToken.FindStringSubmatch(m.Text)
	if found == nil {
		t.Fatalf("no token in the mail:\n%s", m.Text)
	}
	tok := found[1]
	page := map[string]string{subjectVerify: "/verify-email", subjectReset: "/reset-password"}[subject]
	link := appURL + page + "?token=" + tok
	if !strings.Contains(m.Text, link) || !strings.Contains(m.HTML, link) || !strings.Contains(m.HTML, tok) {
		t.Errorf("the mail lacks the link %s in a part:\ntext %s\nhtml %s", link, m.Text, m.HTML)
	}
	if m.From.Address != "no-reply@mana.test" {
		t.Errorf("from %q", m.From.Address)
	}
	s.remember(tok)
	return tok
}

func (s *accountEnv) post(path string, body any, headers ...http.Header) *apitest.Response {
	return s.c.Do(http.MethodPost, "/api/v1/auth/"+path, body, headers...)
}

// TestAccountOverHTTP drives the account features of one real server that
// mails through mailpit.
func TestAccountOverHTTP(t *testing.T) {
	t.Parallel()
	// A tiny reuse window, so a refresh-token reuse is easy to provoke.
	s := startAccountServer(t, map[string]string{"REFRESH_REUSE_WINDOW": "1ms"})
	t.Run("flows", func(t *testing.T) {
		t.Run("verify email", func(t *testing.T) { t.Parallel(); testVerifyEmail(t, s) })
		t.Run("enumeration-safe answers", func(t *testing.T) { t.Parallel(); testEnumerationSafe(t, s) })
		t.Run("reset password", func(t *testing.T) { t.Parallel(); testResetPassword(t, s) })
		t.Run("reset clears a lock", func(t *testing.T) { t.Parallel(); testResetClearsLock(t, s) })
		t.Run("change password", func(t *testing.T) { t.Parallel(); testChangePassword(t, s) })
		t.Run("profile", func(t *testing.T) { t.Parallel(); testProfile(t, s) })
		t.Run("new device notice", func(t *testing.T) { t.Parallel(); testNewDeviceNotice(t, s) })
		t.Run("refresh reuse notice", func(t *testing.T) { t.Parallel(); testReuseNotice(t, s) })
	})

	// No mailed token, address or password reached the event log or the
	// server's log.
	r := runCmd(t, s.vars, "events", "export")
	if r.code != 0 {
		t.Fatalf("events export: %d %s", r.code, r.stderr)
	}
	for _, want := range []string{`"user.verification_requested"`, `"user.email_verified"`, `"user.password_reset_requested"`,
		`"user.password_reset"`, `"user.password_changed"`, `"user.profile_updated"`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("export lacks a %s event", want)
		}
	}
	s.mu.Lock()
	seen := append([]string(nil), s.seen...)
	s.mu.Unlock()
	logs := s.log.String()
	for _, secret := range seen {
		if secret == "" {
			continue
		}
		if strings.Contains(r.stdout, secret) {
			t.Errorf("the event export contains %q", secret)
		}
		if strings.Contains(logs, secret) {
			t.Errorf("the server log contains %q", secret)
		}
	}
}

func testVerifyEmail(t *testing.T, s *accountEnv) {
	email := authEmail("verify")
	u := s.register(t, email, "verify password", "Vera")
	tok := s.token(t, email, subjectVerify, 1)

	r := s.c.Do(http.MethodGet, "/api/v1/auth/profile", nil, authBearer(s.login(t, email, "verify password", "").AccessToken))
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), `"emailVerified":false`) {
		t.Fatalf("profile before verification: %d %s", r.Status, r.Body)
	}
	r = s.post("verify-email", map[string]string{"token": tok})
	if r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != accountOKReply || r.Header.Get(api.HeaderPosition) == "" {
		t.Fatalf("verify-email = %d %s", r.Status, r.Body)
	}
	// The users read model (admin search) shows it.
	conn := connect(t, s.vars["DATABASE_URL"])
	deadline := time.Now().Add(authWait)
	for {
		var verified bool
		err := conn.QueryRow(t.Context(), `SELECT email_verified FROM users WHERE id = $1`, u.ID).Scan(&verified)
		if err == nil && verified {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("users.email_verified is still false (%v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Single use; and anything else is TOKEN_INVALID too.
	wantAuthError(t, s.post("verify-email", map[string]string{"token": tok}), http.StatusUnauthorized, "TOKEN_INVALID")
	wantAuthError(t, s.post("verify-email", map[string]string{"token": "nope"}), http.StatusUnauthorized, "TOKEN_INVALID")
	wantAuthError(t, s.post("verify-email", map[string]string{}), http.StatusBadRequest, "VALIDATION_FAILED")
	wantAuthError(t, s.post("verify-email", map[string]any{"token": tok, "extra": 1}), http.StatusBadRequest, "VALIDATION_FAILED")
}

// testEnumerationSafe: forgot-password and resend-verification answer the
// same bytes for known and unknown addresses; only known ones get mail.
func testEnumerationSafe(t *testing.T, s *accountEnv) {
	known := authEmail("enum-known")
	s.register(t, known, "enumeration password", "")
	verified := authEmail("enum-verified")
	s.register(t, verified, "enumeration password", "")
	if r := s.post("verify-email", map[string]string{"token": s.token(t, verified, subjectVerify, 1)}); r.Status != http.StatusOK {
		t.Fatalf("verify: %d %s", r.Status, r.Body)
	}
	unknown := authEmail("enum-unknown")
	s.remember(unknown)

	for _, path := range []string{"forgot-password", "resend-verification"} {
		var first []byte
		for _, email := range []string{known, unknown, verified, "  " + strings.ToUpper(unknown) + " "} {
			r := s.post(path, map[string]string{"email": email})
			if r.Status != http.StatusOK {
				t.Fatalf("%s %s = %d %s", path, email, r.Status, r.Body)
			}
			if r.Header.Get(api.HeaderPosition) != "" {
				t.Errorf("%s answers with X-Mana-Position for %s: it would tell known addresses apart", path, email)
			}
			if first == nil {
				first = r.Body
				if !strings.HasPrefix(string(r.Body), `{"success":true,"message":"`) {
					t.Errorf("%s body %s", path, r.Body)
				}
			} else if !bytes.Equal(first, r.Body) {
				t.Errorf("%s answers differ:\n%s\n%s", path, first, r.Body)
			}
		}
		wantAuthError(t, s.post(path, map[string]string{"email": "not-an-address"}), http.StatusBadRequest, "VALIDATION_FAILED")
	}
	// known: one reset mail and a second verification mail; verified: one
	// reset mail and no second verification mail; unknown: nothing.
	s.mails(t, known, subjectReset, 1)
	s.mails(t, known, subjectVerify, 2)
	s.mails(t, verified, subjectReset, 1)
	if n := len(s.mails(t, verified, subjectVerify, 1)); n != 1 {
		t.Errorf("%d verification mails for a verified address", n)
	}
	if n := s.mp.Count(unknown); n != 0 {
		t.Errorf("%d mails for an unknown address", n)
	}
}

func testResetPassword(t *testing.T, s *accountEnv) {
	email := authEmail("reset")
	const oldPassword, newPassword = "the old password", "the new password"
	s.register(t, email, oldPassword, "")
	s.remember(newPassword)
	a := s.login(t, email, oldPassword, "")
	b := s.login(t, email, oldPassword, "")
	if r := s.post("forgot-password", map[string]string{"email": email}); r.Status != http.StatusOK {
		t.Fatalf("forgot-password = %d %s", r.Status, r.Body)
	}
	tok := s.token(t, email, subjectReset, 1)
	wantAuthError(t, s.post("reset-password", map[string]string{"token": tok, "newPassword": "short"}), http.StatusBadRequest, "VALIDATION_FAILED")
	wantAuthError(t, s.post("reset-password", map[string]string{"token": tok[:40] + "AAA", "newPassword": newPassword}), http.StatusUnauthorized, "TOKEN_INVALID")

	r := s.post("reset-password", map[string]string{"token": tok, "newPassword": newPassword})
	if r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != accountOKReply || r.Header.Get(api.HeaderPosition) == "" {
		t.Fatalf("reset-password = %d %s", r.Status, r.Body)
	}
	// Every old session is revoked at once.
	for _, p := range []authPair{a, b} {
		wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, authBearer(p.AccessToken)), http.StatusUnauthorized, "SESSION_REVOKED")
		wantAuthError(t, s.refresh(t, p.RefreshToken), http.StatusUnauthorized, "SESSION_REVOKED")
	}
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": email, "password": oldPassword}),
		http.StatusUnauthorized, "INVALID_CREDENTIALS")
	s.login(t, email, newPassword, "")
	// Single use.
	wantAuthError(t, s.post("reset-password", map[string]string{"token": tok, "newPassword": "a third password"}), http.StatusUnauthorized, "TOKEN_INVALID")
	// The reset proved the mailbox.
	p := s.login(t, email, newPassword, "")
	if r := s.c.Do(http.MethodGet, "/api/v1/auth/profile", nil, authBearer(p.AccessToken)); !strings.Contains(string(r.Body), `"emailVerified":true`) {
		t.Errorf("profile after a reset: %s", r.Body)
	}
}

func testResetClearsLock(t *testing.T, s *accountEnv) {
	email := authEmail("reset-lock")
	s.register(t, email, "locked password", "")
	s.remember("wrong lock password", "unlocking password")
	for i := 0; i < 5; i++ {
		wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": email, "password": "wrong lock password"}),
			http.StatusUnauthorized, "INVALID_CREDENTIALS")
	}
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": email, "password": "locked password"}),
		http.StatusTooManyRequests, "ACCOUNT_LOCKED")
	s.post("forgot-password", map[string]string{"email": email})
	if r := s.post("reset-password", map[string]string{"token": s.token(t, email, subjectReset, 1), "newPassword": "unlocking password"}); r.Status != http.StatusOK {
		t.Fatalf("reset = %d %s", r.Status, r.Body)
	}
	s.login(t, email, "unlocking password", "")
}

func testChangePassword(t *testing.T, s *accountEnv) {
	email := authEmail("change")
	s.register(t, email, "changing password", "")
	s.remember("changed password")
	mine := s.login(t, email, "changing password", "mine")
	other := s.login(t, email, "changing password", "other")
	wantAuthError(t, s.post("change-password", map[string]string{"currentPassword": "not my password", "newPassword": "changed password"}, authBearer(mine.AccessToken)),
		http.StatusUnauthorized, "INVALID_CREDENTIALS")
	wantAuthError(t, s.post("change-password", map[string]string{"currentPassword": "changing password", "newPassword": "changed password"}),
		http.StatusUnauthorized, "UNAUTHORIZED")
	r := s.post("change-password", map[string]string{"currentPassword": "changing password", "newPassword": "changed password"}, authBearer(mine.AccessToken))
	if r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != accountOKReply {
		t.Fatalf("change-password = %d %s", r.Status, r.Body)
	}
	if r := s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, authBearer(mine.AccessToken)); r.Status != http.StatusOK {
		t.Errorf("the caller's own session after the change: %d %s", r.Status, r.Body)
	}
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, authBearer(other.AccessToken)), http.StatusUnauthorized, "SESSION_REVOKED")
	s.login(t, email, "changed password", "")
}

func testProfile(t *testing.T, s *accountEnv) {
	email := authEmail("profile")
	u := s.register(t, email, "profile password", "Pro")
	p := s.login(t, email, "profile password", "")
	var prof struct {
		ID            uuid.UUID `json:"id"`
		Email         string    `json:"email"`
		Name          string    `json:"name"`
		Role          string    `json:"role"`
		EmailVerified bool      `json:"emailVerified"`
		CreatedAt     time.Time `json:"createdAt"`
	}
	r := s.c.Do(http.MethodGet, "/api/v1/auth/profile", nil, authBearer(p.AccessToken))
	r.JSON(t, &prof)
	if r.Status != http.StatusOK || prof.ID != u.ID || prof.Email != email || prof.Name != "Pro" || prof.Role != "user" || prof.EmailVerified {
		t.Fatalf("profile = %d %+v", r.Status, prof)
	}
	r = s.c.Do(http.MethodPatch, "/api/v1/auth/profile", map[string]string{"name": " Professor "}, authBearer(p.AccessToken))
	r.JSON(t, &prof)
	if r.Status != http.StatusOK || prof.Name != "Professor" || r.Header.Get(api.HeaderPosition) == "" {
		t.Fatalf("PATCH profile = %d %s", r.Status, r.Body)
	}
	// The email address cannot be changed.
	env := wantAuthError(t, s.c.Do(http.MethodPatch, "/api/v1/auth/profile", map[string]string{"email": "other@example.com"}, authBearer(p.AccessToken)),
		http.StatusBadRequest, "VALIDATION_FAILED")
	if len(env.Details) != 1 || env.Details[0].Field != "email" {
		t.Errorf("details %+v, want one naming email", env.Details)
	}
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/auth/profile", nil), http.StatusUnauthorized, "UNAUTHORIZED")
	if again := s.login(t, email, "profile password", ""); again.User.Name != "Professor" {
		t.Errorf("login answers name %q after the change", again.User.Name)
	}
}

func testNewDeviceNotice(t *testing.T, s *accountEnv) {
	email := authEmail("device")
	s.register(t, email, "device password", "")
	s.login(t, email, "device password", "first-device")
	s.login(t, email, "device password", "second-device")
	m := s.mails(t, email, subjectDevice, 1)[0]
	if !strings.Contains(m.Text, "Device second-device") || !strings.Contains(m.Text, "127.0.0.1") {
		t.Errorf("the notice does not name the device and address:\n%s", m.Text)
	}
	// A known device again, and the first device: no further notice (the
	// worker handles them in feed order, before the third device's).
	s.login(t, email, "device password", "second-device")
	s.login(t, email, "device password", "first-device")
	s.login(t, email, "device password", "third-device")
	ms := s.mails(t, email, subjectDevice, 2)
	if !strings.Contains(ms[0].Text, "Device third-device") {
		t.Errorf("the second notice is not about the third device:\n%s", ms[0].Text)
	}
}

func testReuseNotice(t *testing.T, s *accountEnv) {
	email := authEmail("reuse")
	s.register(t, email, "reuse password", "")
	p := s.login(t, email, "reuse password", "reused-device")
	if r := s.refresh(t, p.RefreshToken); r.Status != http.StatusOK {
		t.Fatalf("refresh = %d %s", r.Status, r.Body)
	}
	time.Sleep(5 * time.Millisecond) // past REFRESH_REUSE_WINDOW
	wantAuthError(t, s.refresh(t, p.RefreshToken), http.StatusUnauthorized, "REFRESH_TOKEN_REUSED")
	m := s.mails(t, email, subjectReuse, 1)[0]
	if !strings.Contains(m.Text, "Device reused-device") {
		t.Errorf("the reuse notice does not name the session:\n%s", m.Text)
	}
}

// TestRequireEmailVerificationOverHTTP: with REQUIRE_EMAIL_VERIFICATION a
// login before verification is 403 EMAIL_NOT_VERIFIED; the mailed link
// lifts it. The recovery endpoints are rate limited by default.
func TestRequireEmailVerificationOverHTTP(t *testing.T) {
	t.Parallel()
	s := startAccountServer(t, map[string]string{"REQUIRE_EMAIL_VERIFICATION": "true", "RATE_LIMITS": ""})
	email := authEmail("required")
	s.register(t, email, "required password", "")
	login := map[string]string{"email": email, "password": "required password"}
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/login", login), http.StatusForbidden, "EMAIL_NOT_VERIFIED")
	s.remember("wrong required password")
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": email, "password": "wrong required password"}),
		http.StatusUnauthorized, "INVALID_CREDENTIALS")
	if r := s.post("verify-email", map[string]string{"token": s.token(t, email, subjectVerify, 1)}); r.Status != http.StatusOK {
		t.Fatalf("verify-email = %d %s", r.Status, r.Body)
	}
	s.login(t, email, "required password", "")

	// recovery_account: 3 an hour per address; recovery_ip: 5 a minute.
	for i := 1; i <= 4; i++ {
		r := s.post("forgot-password", map[string]string{"email": email})
		if i <= 3 && r.Status != http.StatusOK {
			t.Fatalf("forgot-password #%d = %d %s", i, r.Status, r.Body)
		}
		if i == 4 {
			wantAuthError(t, r, http.StatusTooManyRequests, "RATE_LIMITED")
		}
	}
	r := s.post("resend-verification", map[string]string{"email": authEmail("other")})
	if r.Status != http.StatusOK {
		t.Fatalf("resend for another address = %d %s", r.Status, r.Body)
	}
	wantAuthError(t, s.post("reset-password", map[string]string{"token": "x", "newPassword": "whatever password"}), http.StatusTooManyRequests, "RATE_LIMITED")
}
