package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/apitest"
)

// tfEnrollment is the answer to POST /auth/2fa/enroll.
type tfEnrollment struct {
	Secret     string `json:"secret"`
	OtpauthURI string `json:"otpauthUri"`
}

// tfChallenge is a login's answer with 2FA on.
type tfChallenge struct {
	TwoFactorRequired bool   `json:"twoFactorRequired"`
	ChallengeToken    string `json:"challengeToken"`
	AccessToken       string `json:"accessToken"`
}

// tfCode is the TOTP code an authenticator app shows for secret at now +
// offset.
func tfCode(t *testing.T, secret string, offset time.Duration) string {
	t.Helper()
	c, err := totp.GenerateCode(secret, time.Now().Add(offset))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tfEnable registers a user, logs in, enrolls and confirms TOTP with a
// real code; it returns the user's credentials, the secret, the code the
// confirmation spent and the recovery codes.
func tfEnable(t *testing.T, s *authServer, prefix string) (email, password, access, secret, spent string, recovery []string) {
	t.Helper()
	email, password = authEmail(prefix), "2fa password "+prefix
	s.register(t, email, password, "")
	access = s.login(t, email, password, "").AccessToken

	r := s.c.Do(http.MethodPost, "/api/v1/auth/2fa/enroll", nil, authBearer(access))
	if r.Status != http.StatusOK {
		t.Fatalf("enroll = %d %s", r.Status, r.Body)
	}
	var e tfEnrollment
	r.JSON(t, &e)
	key, err := otp.NewKeyFromURL(e.OtpauthURI)
	if err != nil || key.Secret() != e.Secret || key.AccountName() != email {
		t.Fatalf("otpauthUri %q: %v", e.OtpauthURI, err)
	}
	secret = e.Secret
	s.remember(secret)

	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/2fa/confirm", map[string]string{"code": "000000"}, authBearer(access)),
		http.StatusUnauthorized, "TWO_FACTOR_FAILED")
	spent = tfCode(t, secret, 0)
	r = s.c.Do(http.MethodPost, "/api/v1/auth/2fa/confirm", map[string]string{"code": spent}, authBearer(access))
	if r.Status != http.StatusOK || r.Header.Get(api.HeaderPosition) == "" {
		t.Fatalf("confirm = %d %s", r.Status, r.Body)
	}
	var out struct {
		Enabled       bool     `json:"enabled"`
		RecoveryCodes []string `json:"recoveryCodes"`
	}
	r.JSON(t, &out)
	if !out.Enabled || len(out.RecoveryCodes) != 10 {
		t.Fatalf("confirm = %s", r.Body)
	}
	s.remember(out.RecoveryCodes...)
	return email, password, access, secret, spent, out.RecoveryCodes
}

// tfLogin logs in with the password and expects the 2FA challenge.
func tfLogin(t *testing.T, s *authServer, email, password, deviceID string) string {
	t.Helper()
	body := map[string]string{"email": email, "password": password}
	if deviceID != "" {
		body["deviceId"], body["deviceName"] = deviceID, "Device "+deviceID
	}
	r := s.c.Do(http.MethodPost, "/api/v1/auth/login", body)
	if r.Status != http.StatusOK {
		t.Fatalf("login with 2FA on = %d %s", r.Status, r.Body)
	}
	var ch tfChallenge
	r.JSON(t, &ch)
	if !ch.TwoFactorRequired || ch.ChallengeToken == "" || ch.AccessToken != "" || r.Header.Get(api.HeaderPosition) != "" {
		t.Fatalf("login with 2FA on answered %s", r.Body)
	}
	s.remember(ch.ChallengeToken)
	return ch.ChallengeToken
}

// tfComplete posts the second step.
func tfComplete(s *authServer, body map[string]string) *apitest.Response {
	return s.c.Do(http.MethodPost, "/api/v1/auth/login/2fa", body)
}

func tfPair(t *testing.T, s *authServer, r *apitest.Response) authPair {
	t.Helper()
	if r.Status != http.StatusOK || r.Header.Get(api.HeaderPosition) == "" {
		t.Fatalf("login/2fa = %d %s", r.Status, r.Body)
	}
	var p authPair
	r.JSON(t, &p)
	if p.AccessToken == "" || p.RefreshToken == "" || p.TokenType != "Bearer" {
		t.Fatalf("login/2fa = %s", r.Body)
	}
	s.remember(p.AccessToken, p.RefreshToken)
	return p
}

// TestTwoFactorOverHTTP drives TOTP 2FA through one real server with codes
// computed from the enrolled secret as an authenticator app would: the
// login challenge, a code accepted once and refused on replay, recovery
// codes used once, disabling; every answer is checked against the OpenAPI
// document, and the event log holds neither the secret nor a code.
func TestTwoFactorOverHTTP(t *testing.T) {
	t.Parallel()
	s := startAuthServer(t, nil)
	email, password, access, secret, spent, recovery := tfEnable(t, s, "tf")

	// Enrolling again, with 2FA on, conflicts; without a token it is 401.
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/2fa/enroll", map[string]string{}, authBearer(access)), http.StatusConflict, "CONFLICT")
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/2fa/enroll", nil), http.StatusUnauthorized, "UNAUTHORIZED")
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/2fa/confirm", map[string]string{"code": spent}, authBearer(access)),
		http.StatusConflict, "CONFLICT")

	// The password alone now earns a challenge, not a session.
	ch := tfLogin(t, s, email, password, "dev-tf")
	// The code the confirmation spent is refused (its time step is used).
	wantAuthError(t, tfComplete(s, map[string]string{"challengeToken": ch, "code": spent}), http.StatusUnauthorized, "TWO_FACTOR_FAILED")
	// The next step's code (accepted one step early) completes the login,
	// with the device the login named.
	next := tfCode(t, secret, 30*time.Second)
	pair := tfPair(t, s, tfComplete(s, map[string]string{"challengeToken": ch, "code": next}))
	if pair.User.Email != email {
		t.Errorf("login/2fa user %+v", pair.User)
	}
	found := false
	for _, sess := range s.sessions(t, pair.AccessToken) {
		if sess.Current {
			found = sess.DeviceID != nil && *sess.DeviceID == "dev-tf" && sess.DeviceName != nil && *sess.DeviceName == "Device dev-tf"
		}
	}
	if !found {
		t.Error("the completed login's session does not carry the login's device")
	}
	// A challenge completes one login.
	wantAuthError(t, tfComplete(s, map[string]string{"challengeToken": ch, "code": tfCode(t, secret, 0)}), http.StatusUnauthorized, "TOKEN_INVALID")
	// Replaying the accepted code, even with a fresh challenge, fails.
	ch = tfLogin(t, s, email, password, "")
	wantAuthError(t, tfComplete(s, map[string]string{"challengeToken": ch, "code": next}), http.StatusUnauthorized, "TWO_FACTOR_FAILED")

	// A recovery code works once.
	tfPair(t, s, tfComplete(s, map[string]string{"challengeToken": ch, "recoveryCode": recovery[0]}))
	ch = tfLogin(t, s, email, password, "")
	wantAuthError(t, tfComplete(s, map[string]string{"challengeToken": ch, "recoveryCode": recovery[0]}), http.StatusUnauthorized, "TWO_FACTOR_FAILED")

	// Bad requests.
	wantAuthError(t, tfComplete(s, map[string]string{"challengeToken": ch, "code": "123456", "recoveryCode": recovery[1]}),
		http.StatusBadRequest, "VALIDATION_FAILED")
	wantAuthError(t, tfComplete(s, map[string]string{"challengeToken": ch}), http.StatusBadRequest, "VALIDATION_FAILED")
	wantAuthError(t, tfComplete(s, map[string]string{"challengeToken": ch, "code": "123456", "extra": "x"}), http.StatusBadRequest, "VALIDATION_FAILED")
	wantAuthError(t, tfComplete(s, map[string]string{"challengeToken": "bm90IGEgY2hhbGxlbmdl", "code": "123456"}), http.StatusUnauthorized, "TOKEN_INVALID")

	// Disabling needs the password and a second factor.
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/2fa/disable", map[string]string{"password": "wrong password", "recoveryCode": recovery[1]},
		authBearer(access)), http.StatusUnauthorized, "INVALID_CREDENTIALS")
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/2fa/disable", map[string]string{"password": password}, authBearer(access)),
		http.StatusBadRequest, "VALIDATION_FAILED")
	r := s.c.Do(http.MethodPost, "/api/v1/auth/2fa/disable", map[string]string{"password": password, "recoveryCode": recovery[1]}, authBearer(access))
	if r.Status != http.StatusOK || string(r.Body) != `{"success":true}`+"\n" && string(r.Body) != `{"success":true}` {
		t.Fatalf("disable = %d %s", r.Status, r.Body)
	}
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/2fa/disable", map[string]string{"password": password, "code": tfCode(t, secret, 0)},
		authBearer(access)), http.StatusConflict, "CONFLICT")
	// The challenge from before is dead, and a password login starts a
	// session again.
	wantAuthError(t, tfComplete(s, map[string]string{"challengeToken": ch, "recoveryCode": recovery[2]}), http.StatusUnauthorized, "TOKEN_INVALID")
	s.login(t, email, password, "")

	// The user's security log shows it all.
	var evs []securityEvent
	r = s.c.Do(http.MethodGet, "/api/v1/auth/security-events", nil, authBearer(access))
	if r.Status != http.StatusOK {
		t.Fatalf("security events = %d %s", r.Status, r.Body)
	}
	r.JSON(t, &evs)
	for _, want := range []securityEvent{{"two_factor_enabled", "totp"}, {"recovery_code_used", "remaining: 9"},
		{"recovery_code_used", "remaining: 8"}, {"two_factor_disabled", "totp"}, {"login_failed", ""}} {
		if !hasSecurityEvent(evs, want.Type, want.Detail) {
			t.Errorf("no security event %s %q in %+v", want.Type, want.Detail, evs)
		}
	}

	// The event log records the facts, never the secret or a code.
	ex := runCmd(t, s.vars, "events", "export")
	if ex.code != 0 {
		t.Fatalf("events export: %d %s", ex.code, ex.stderr)
	}
	for _, want := range []string{`"user.two_factor_enabled"`, `"user.two_factor_disabled"`, `"user.recovery_code_used"`} {
		if !strings.Contains(ex.stdout, want) {
			t.Errorf("export lacks a %s event", want)
		}
	}
	for _, secret := range append([]string{secret, strings.ToLower(secret)}, recovery...) {
		if strings.Contains(ex.stdout, secret) || strings.Contains(s.log.String(), secret) {
			t.Errorf("the event export or the log contains %q", secret)
		}
	}
	for _, secret := range []string{ch, password} {
		if strings.Contains(s.log.String(), secret) {
			t.Errorf("the log contains %q", secret)
		}
	}
}

// TestTwoFactorRateLimits: the 2FA management endpoints draw on
// two_factor_user per user, the second login step on login_ip per client
// address.
func TestTwoFactorRateLimits(t *testing.T) {
	t.Parallel()
	s := startAuthServer(t, map[string]string{
		"RATE_LIMITS": `{"two_factor_user": {"limit": 2, "period": "1h"}, "login_ip": {"limit": 4, "period": "1h"}}`,
	})
	// two_factor_user: enroll and confirm are the user's two requests; the
	// disable is refused before its password is checked.
	email, password := authEmail("tfrl"), "2fa rate limit password"
	s.register(t, email, password, "")
	access := s.login(t, email, password, "").AccessToken
	r := s.c.Do(http.MethodPost, "/api/v1/auth/2fa/enroll", nil, authBearer(access))
	if r.Status != http.StatusOK || r.Header.Get("RateLimit-Policy") == "" {
		t.Fatalf("enroll = %d %s (RateLimit-Policy %q)", r.Status, r.Body, r.Header.Get("RateLimit-Policy"))
	}
	var e tfEnrollment
	r.JSON(t, &e)
	s.remember(e.Secret)
	r = s.c.Do(http.MethodPost, "/api/v1/auth/2fa/confirm", map[string]string{"code": tfCode(t, e.Secret, 0)}, authBearer(access))
	if r.Status != http.StatusOK {
		t.Fatalf("confirm = %d %s", r.Status, r.Body)
	}
	r = s.c.Do(http.MethodPost, "/api/v1/auth/2fa/disable", map[string]string{"password": password, "code": "000000"}, authBearer(access))
	wantAuthError(t, r, http.StatusTooManyRequests, "RATE_LIMITED")
	if r.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}

	// login_ip: the password login is the second request, the second
	// steps the third and fourth; the fifth is refused before its code is
	// looked at.
	ch := tfLogin(t, s, email, password, "")
	for range 2 {
		wantAuthError(t, tfComplete(s, map[string]string{"challengeToken": ch, "code": "000000"}), http.StatusUnauthorized, "TWO_FACTOR_FAILED")
	}
	wantAuthError(t, tfComplete(s, map[string]string{"challengeToken": ch, "code": tfCode(t, e.Secret, 30*time.Second)}),
		http.StatusTooManyRequests, "RATE_LIMITED")
}
