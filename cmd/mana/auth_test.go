package main

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/google/uuid"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/eventstore"
)

// authWait bounds every poll of the auth tests.
const authWait = 30 * time.Second

// authServer is one `mana serve --port 0` on its own database cloneClaims, reached
// through an OpenAPI-validating client.
type authServer struct {
	vars map[string]string
	c    *apitest.Client
	log  *logWriter
	// base is the server's address, for clients other than c (a
	// browser); set by startServe.
	base *url.URL

	// seen collects every email, password and token the test sent or
	// received, for the final check that none of them reached the log.
	mu   sync.Mutex
	seen []string
}

// startAuthServer runs serve with cheap argon2 parameters plus extra, waits
// until it listens and stops it when the test ends. Without a DATABASE_URL
// in extra it serves a clone of the migrated template (pgtest.NewDB).
func startAuthServer(t *testing.T, extra map[string]string) *authServer {
	t.Helper()
	return startServe(t, extra)
}

// remember records secrets that must never appear in the event log.
func (s *authServer) remember(secrets ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, secrets...)
}

func authBearer(token string) http.Header { return http.Header{"Authorization": {"Bearer " + token}} }

// authPair is the answer to login and refresh.
type authPair struct {
	User struct {
		ID    uuid.UUID `json:"id"`
		Email string    `json:"email"`
		Name  string    `json:"name"`
		Role  string    `json:"role"`
	} `json:"user"`
	AccessToken  string `json:"accessToken"`
	RefreshToken string `json:"refreshToken"`
	ExpiresIn    int    `json:"expiresIn"`
	TokenType    string `json:"tokenType"`
}

type authUser struct {
	ID        uuid.UUID `json:"id"`
	Email     string    `json:"email"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
}

type authSession struct {
	ID             uuid.UUID `json:"id"`
	DeviceID       *string   `json:"deviceId"`
	DeviceName     *string   `json:"deviceName"`
	IPAddress      *string   `json:"ipAddress"`
	UserAgent      *string   `json:"userAgent"`
	CreatedAt      time.Time `json:"createdAt"`
	LastActivityAt time.Time `json:"lastActivityAt"`
	ExpiresAt      time.Time `json:"expiresAt"`
	Current        bool      `json:"current"`
}

// wantAuthError decodes an error body and checks its status and code.
func wantAuthError(t *testing.T, r *apitest.Response, status int, code string) api.Envelope {
	t.Helper()
	var env api.Envelope
	if err := json.Unmarshal(r.Body, &env); err != nil {
		t.Errorf("status %d, body %s is not an error envelope: %v", r.Status, r.Body, err)
		return env
	}
	if r.Status != status || env.StatusCode != status || env.Code != code {
		t.Errorf("got %d %s, want %d %s; body %s", r.Status, env.Code, status, code, r.Body)
	}
	return env
}

func (s *authServer) register(t *testing.T, email, password, name string) authUser {
	t.Helper()
	s.remember(email, strings.ToLower(strings.TrimSpace(email)), password)
	r := s.c.Do(http.MethodPost, "/api/v1/auth/register", map[string]string{"email": email, "password": password, "name": name})
	if r.Status != http.StatusCreated {
		t.Fatalf("register %s = %d %s", email, r.Status, r.Body)
	}
	var u authUser
	r.JSON(t, &u)
	return u
}

func (s *authServer) login(t *testing.T, email, password, deviceID string) authPair {
	t.Helper()
	body := map[string]string{"email": email, "password": password}
	if deviceID != "" {
		body["deviceId"], body["deviceName"] = deviceID, "Device "+deviceID
	}
	r := s.c.Do(http.MethodPost, "/api/v1/auth/login", body)
	if r.Status != http.StatusOK {
		t.Fatalf("login %s = %d %s", email, r.Status, r.Body)
	}
	var p authPair
	r.JSON(t, &p)
	s.remember(p.AccessToken, p.RefreshToken, body["deviceName"])
	return p
}

func (s *authServer) refresh(t *testing.T, token string) *apitest.Response {
	t.Helper()
	r := s.c.Do(http.MethodPost, "/api/v1/auth/refresh", map[string]string{"refreshToken": token})
	if r.Status == http.StatusOK {
		var p authPair
		r.JSON(t, &p)
		s.remember(p.AccessToken, p.RefreshToken)
	}
	return r
}

func (s *authServer) sessions(t *testing.T, token string) []authSession {
	t.Helper()
	r := s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, authBearer(token))
	if r.Status != http.StatusOK {
		t.Fatalf("GET /auth/sessions = %d %s", r.Status, r.Body)
	}
	var list []authSession
	r.JSON(t, &list)
	return list
}

// authEmail returns a fresh address for one subtest.
func authEmail(prefix string) string {
	return prefix + "." + strings.ReplaceAll(uuid.NewString()[:8], "-", "") + "@example.com"
}

// jwtParts splits a compact JWS and decodes its header and claims.
func jwtParts(t *testing.T, tok string) (header, claims map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts, want 3", len(parts))
	}
	for i, dst := range []*map[string]any{&header, &claims} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatalf("token part %d: %v", i, err)
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			t.Fatalf("token part %d: %v", i, err)
		}
	}
	return header, claims
}

// craftJWT builds a compact JWS from header and claims, signed by sign (nil
// leaves the signature empty).
func craftJWT(t *testing.T, header, claims map[string]any, sign func(input []byte) []byte) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	input := enc(header) + "." + enc(claims)
	sig := ""
	if sign != nil {
		sig = base64.RawURLEncoding.EncodeToString(sign([]byte(input)))
	}
	return input + "." + sig
}

func cloneClaims(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// TestAuthOverHTTP drives the auth endpoints of one real server, checking
// every response against the OpenAPI document, and finally that the event
// log holds none of the emails, passwords or tokens used.
func TestAuthOverHTTP(t *testing.T) {
	t.Parallel()
	testAuthSuite(t, startAuthServer(t, nil))
}

// testAuthSuite runs every auth flow on s in parallel, then checks the
// event log for secrets. TestAuthThroughPgBouncer runs it too.
func testAuthSuite(t *testing.T, s *authServer) {
	t.Run("flows", func(t *testing.T) {
		t.Run("register", func(t *testing.T) { t.Parallel(); testRegister(t, s) })
		t.Run("login", func(t *testing.T) { t.Parallel(); testLogin(t, s) })
		t.Run("access token", func(t *testing.T) { t.Parallel(); testAccessToken(t, s) })
		t.Run("refresh", func(t *testing.T) { t.Parallel(); testRefresh(t, s) })
		t.Run("logout and validate", func(t *testing.T) { t.Parallel(); testLogoutValidate(t, s) })
		t.Run("sessions", func(t *testing.T) { t.Parallel(); testSessions(t, s) })
		t.Run("lockout", func(t *testing.T) { t.Parallel(); testLockout(t, s) })
		t.Run("token attacks", func(t *testing.T) { t.Parallel(); testTokenAttacks(t, s) })
	})

	// After every flow: the log carries no secret in any form we sent.
	r := runCmd(t, s.vars, "events", "export")
	if r.code != 0 {
		t.Fatalf("events export: %d %s", r.code, r.stderr)
	}
	for _, want := range []string{`"user.registered"`, `"session.started"`, `"session.refreshed"`, `"session.revoked"`, `"user.login_failed"`, `"user.locked"`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("export lacks a %s event", want)
		}
	}
	s.mu.Lock()
	seen := append([]string(nil), s.seen...)
	s.mu.Unlock()
	if len(seen) < 20 {
		t.Fatalf("only %d secrets were recorded; the flows did not run", len(seen))
	}
	for _, secret := range append(seen, "-----BEGIN") {
		if secret != "" && strings.Contains(r.stdout, secret) {
			t.Errorf("the event export contains %q", secret)
		}
	}
}

// authExport runs events export with args and decodes its lines.
func authExport(t *testing.T, vars map[string]string, args ...string) []eventstore.EventLine {
	t.Helper()
	r := runCmd(t, vars, append([]string{"events", "export"}, args...)...)
	if r.code != 0 {
		t.Fatalf("events export: %d %s", r.code, r.stderr)
	}
	var out []eventstore.EventLine
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l eventstore.EventLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

func testRegister(t *testing.T, s *authServer) {
	raw := "  Ada.Reg" + uuid.NewString()[:8] + "@Example.COM "
	email := strings.ToLower(strings.TrimSpace(raw))
	const password = "correct horse battery"
	s.remember(raw, email, password)
	r := s.c.Do(http.MethodPost, "/api/v1/auth/register", map[string]string{"email": raw, "password": password, "name": "  Ada  "})
	if r.Status != http.StatusCreated {
		t.Fatalf("register = %d %s", r.Status, r.Body)
	}
	var u authUser
	r.JSON(t, &u)
	if u.ID == uuid.Nil || u.Email != email || u.Name != "Ada" || u.CreatedAt.IsZero() || time.Since(u.CreatedAt) > time.Minute {
		t.Errorf("registered = %+v, want the id, %q, Ada and a fresh createdAt", u, email)
	}
	pos := r.Header.Get(api.HeaderPosition)
	if _, err := eventstore.ParseCursor(pos); pos == "" || err != nil {
		t.Errorf("X-Mana-Position = %q (%v), want a feed cursor", pos, err)
	}

	// Taken whatever the case and spacing.
	dup := strings.ToUpper(email)
	s.remember(dup)
	r = s.c.Do(http.MethodPost, "/api/v1/auth/register", map[string]string{"email": dup, "password": "another password"})
	wantAuthError(t, r, http.StatusConflict, "EMAIL_ALREADY_REGISTERED")

	for _, tc := range []struct {
		name  string
		body  string
		field string
	}{
		{"unknown field", `{"email":"x.` + uuid.NewString()[:8] + `@example.com","password":"long enough pw","admin":true}`, "admin"},
		{"short password", `{"email":"y.` + uuid.NewString()[:8] + `@example.com","password":"sh rt!"}`, "password"},
		{"long password", `{"email":"y.` + uuid.NewString()[:8] + `@example.com","password":"` + strings.Repeat("p ", 65) + `"}`, "password"},
		{"bad email", `{"email":"not-an-email","password":"long enough pw"}`, "email"},
		{"no domain dot", `{"email":"a@localhost","password":"long enough pw"}`, "email"},
		{"long name", `{"email":"z.` + uuid.NewString()[:8] + `@example.com","password":"long enough pw","name":"` + strings.Repeat("n", 256) + `"}`, "name"},
		{"wrong type", `{"email":1,"password":"long enough pw"}`, "email"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := s.c.Do(http.MethodPost, "/api/v1/auth/register", tc.body)
			env := wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
			if len(env.Details) != 1 || env.Details[0].Field != tc.field {
				t.Errorf("details = %+v, want one naming %s", env.Details, tc.field)
			}
			if strings.Contains(string(r.Body), "sh rt!") || strings.Contains(string(r.Body), "long enough pw") {
				t.Errorf("the error repeats the password: %s", r.Body)
			}
		})
	}
	r = s.c.Do(http.MethodPost, "/api/v1/auth/register", `{"email":"w@example.com","password":"long enough pw"}`,
		http.Header{"Content-Type": {"text/plain"}})
	wantAuthError(t, r, http.StatusUnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE")

	// One registration and one bonus of 150 for this user, in the log.
	var gotReg, gotBonus int
	for _, l := range authExport(t, s.vars, "--types", "user.registered,credit.signup_bonus_granted") {
		if l.StreamID != u.ID.String() {
			continue
		}
		var p struct {
			UserID uuid.UUID `json:"userId"`
			Amount int64     `json:"amount"`
		}
		if err := json.Unmarshal(l.Payload, &p); err != nil {
			t.Fatalf("%s payload: %v", l.EventType, err)
		}
		switch l.EventType {
		case "user.registered":
			gotReg++
		case "credit.signup_bonus_granted":
			gotBonus++
			if p.Amount != 150 || p.UserID != u.ID {
				t.Errorf("signup bonus payload %s, want 150 for %s", l.Payload, u.ID)
			}
		}
	}
	if gotReg != 1 || gotBonus != 1 {
		t.Errorf("log has %d user.registered and %d credit.signup_bonus_granted for the user, want 1 and 1", gotReg, gotBonus)
	}
}

func testLogin(t *testing.T, s *authServer) {
	email := authEmail("login")
	const password = "login password 1"
	u := s.register(t, email, password, "Lo")

	r := s.c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": "  " + strings.ToUpper(email), "password": password})
	if r.Status != http.StatusOK {
		t.Fatalf("login = %d %s", r.Status, r.Body)
	}
	if r.Header.Get(api.HeaderPosition) == "" {
		t.Error("login has no X-Mana-Position")
	}
	var p authPair
	r.JSON(t, &p)
	s.remember(p.AccessToken, p.RefreshToken)
	if p.User.ID != u.ID || p.User.Email != email || p.User.Name != "Lo" || p.User.Role != "user" ||
		p.AccessToken == "" || p.RefreshToken == "" || p.ExpiresIn != 900 || p.TokenType != "Bearer" {
		t.Errorf("login = %s", r.Body)
	}

	// A wrong password and an unknown email get the same answer.
	const wrong = "wrong password 1"
	unknown := authEmail("nobody")
	s.remember(wrong, unknown)
	r1 := s.c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": email, "password": wrong})
	r2 := s.c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": unknown, "password": wrong})
	e1 := wantAuthError(t, r1, http.StatusUnauthorized, "INVALID_CREDENTIALS")
	e2 := wantAuthError(t, r2, http.StatusUnauthorized, "INVALID_CREDENTIALS")
	if e1.StatusCode != e2.StatusCode || e1.Code != e2.Code || e1.Message != e2.Message || len(e1.Details)+len(e2.Details) != 0 {
		t.Errorf("wrong password %s differs from unknown email %s", r1.Body, r2.Body)
	}
	// Byte-identical once the per-request timestamp is blanked.
	blank := func(b []byte, ts string) string { return strings.Replace(string(b), ts, "", 1) }
	if blank(r1.Body, e1.Timestamp) != blank(r2.Body, e2.Timestamp) {
		t.Errorf("bodies differ beyond the timestamp:\n%s\n%s", r1.Body, r2.Body)
	}
	if r1.Header.Get("Retry-After") != "" || r2.Header.Get("Retry-After") != "" {
		t.Error("a first failure carries Retry-After")
	}

	for _, body := range []string{
		`{"email":"` + email + `","password":""}`,
		`{"email":"` + email + `"}`,
		`{"email":"` + email + `","password":"x","extra":1}`,
		`{"email":"nope","password":"x"}`,
	} {
		wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/login", body), http.StatusBadRequest, "VALIDATION_FAILED")
	}
}

func testAccessToken(t *testing.T, s *authServer) {
	email := authEmail("jwt")
	u := s.register(t, email, "jwt password 12", "")
	withDevice := s.login(t, email, "jwt password 12", "phone-1")
	without := s.login(t, email, "jwt password 12", "")

	r := s.c.Do(http.MethodGet, "/.well-known/jwks.json", nil)
	r2 := s.c.Do(http.MethodGet, "/api/v1/auth/jwks", nil)
	if r.Status != http.StatusOK || r2.Status != http.StatusOK || !bytes.Equal(r.Body, r2.Body) {
		t.Fatalf("JWKS: %d %s vs %d %s", r.Status, r.Body, r2.Status, r2.Body)
	}
	var set jose.JSONWebKeySet
	r.JSON(t, &set)
	if len(set.Keys) == 0 {
		t.Fatalf("JWKS has no keys: %s", r.Body)
	}
	for _, k := range set.Keys {
		if _, ok := k.Key.(*rsa.PublicKey); !ok || k.KeyID == "" || k.Algorithm != "RS256" || k.Use != "sig" || !k.IsPublic() {
			t.Errorf("JWK %+v, want a public RS256 signing key with a kid", k)
		}
	}

	for _, tc := range []struct {
		name   string
		pair   authPair
		device string
	}{{"with device", withDevice, "phone-1"}, {"without device", without, ""}} {
		t.Run(tc.name, func(t *testing.T) {
			header, claims := jwtParts(t, tc.pair.AccessToken)
			if header["alg"] != "RS256" || header["kid"] == nil || header["kid"] == "" {
				t.Errorf("header %v, want alg RS256 and a kid", header)
			}
			jws, err := jose.ParseSigned(tc.pair.AccessToken, []jose.SignatureAlgorithm{jose.RS256})
			if err != nil {
				t.Fatalf("go-jose parse: %v", err)
			}
			kid := jws.Signatures[0].Header.KeyID
			keys := set.Key(kid)
			if len(keys) != 1 {
				t.Fatalf("kid %q is %d times in the JWKS", kid, len(keys))
			}
			payload, err := jws.Verify(keys[0])
			if err != nil {
				t.Fatalf("the token does not verify with the published key: %v", err)
			}
			var c struct {
				Sub   string   `json:"sub"`
				Email string   `json:"email"`
				Role  string   `json:"role"`
				Sid   string   `json:"sid"`
				Did   *string  `json:"did"`
				Iss   string   `json:"iss"`
				Aud   []string `json:"aud"`
				Iat   int64    `json:"iat"`
				Exp   int64    `json:"exp"`
				Jti   string   `json:"jti"`
			}
			dec := json.NewDecoder(bytes.NewReader(payload))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&c); err != nil {
				t.Fatalf("claims %s: %v", payload, err)
			}
			want := 9 // sub email role sid iss aud iat exp jti
			if tc.device != "" {
				want++ // did
			}
			if len(claims) != want {
				t.Errorf("claims %v: %d, want %d", claims, len(claims), want)
			}
			if c.Sub != u.ID.String() || c.Email != email || c.Role != "user" || c.Iss != "manacore" ||
				len(c.Aud) != 1 || c.Aud[0] != "manacore" || c.Exp-c.Iat != 900 || c.Jti == "" ||
				time.Since(time.Unix(c.Iat, 0)).Abs() > time.Minute {
				t.Errorf("claims %s", payload)
			}
			if _, err := uuid.Parse(c.Sid); err != nil {
				t.Errorf("sid %q is not a UUID", c.Sid)
			}
			if tc.device == "" && c.Did != nil || tc.device != "" && (c.Did == nil || *c.Did != tc.device) {
				t.Errorf("did = %v, want %q", c.Did, tc.device)
			}
		})
	}
	_, c1 := jwtParts(t, withDevice.AccessToken)
	_, c2 := jwtParts(t, without.AccessToken)
	if c1["sid"] == c2["sid"] || c1["jti"] == c2["jti"] {
		t.Errorf("two logins share sid or jti: %v %v", c1, c2)
	}
}

func testRefresh(t *testing.T, s *authServer) {
	email := authEmail("refresh")
	s.register(t, email, "refresh password", "Re")
	p0 := s.login(t, email, "refresh password", "")
	_, c0 := jwtParts(t, p0.AccessToken)

	r := s.refresh(t, p0.RefreshToken)
	if r.Status != http.StatusOK || r.Header.Get(api.HeaderPosition) == "" {
		t.Fatalf("refresh = %d %s (position %q)", r.Status, r.Body, r.Header.Get(api.HeaderPosition))
	}
	var p1 authPair
	r.JSON(t, &p1)
	if p1.AccessToken == p0.AccessToken || p1.RefreshToken == p0.RefreshToken || p1.User != p0.User ||
		p1.ExpiresIn != 900 || p1.TokenType != "Bearer" {
		t.Errorf("rotation %s did not give a new pair for the same user", r.Body)
	}
	_, c1 := jwtParts(t, p1.AccessToken)
	if c1["sid"] != c0["sid"] || c1["jti"] == c0["jti"] {
		t.Errorf("refreshed claims %v, want the same sid and a new jti than %v", c1, c0)
	}

	// Within the reuse window the old token gets the rotation's pair again.
	r = s.refresh(t, p0.RefreshToken)
	var again authPair
	r.JSON(t, &again)
	if r.Status != http.StatusOK || again != p1 {
		t.Errorf("reusing the old token in the window = %d %s, want the same pair as the rotation", r.Status, r.Body)
	}

	// Two tabs refreshing at once both stay logged in, with one pair.
	start := make(chan struct{})
	var wg sync.WaitGroup
	res := make([]*apitest.Response, 2)
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res[i] = s.c.Do(http.MethodPost, "/api/v1/auth/refresh", map[string]string{"refreshToken": p1.RefreshToken})
		}()
	}
	close(start)
	wg.Wait()
	var pairs [2]authPair
	for i, r := range res {
		if r.Status != http.StatusOK {
			t.Fatalf("concurrent refresh %d = %d %s", i, r.Status, r.Body)
		}
		r.JSON(t, &pairs[i])
		s.remember(pairs[i].AccessToken, pairs[i].RefreshToken)
	}
	if pairs[0] != pairs[1] || pairs[0].RefreshToken == p1.RefreshToken {
		t.Errorf("concurrent refreshes got different pairs:\n%+v\n%+v", pairs[0], pairs[1])
	}
	p2 := pairs[0]
	if r := s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, authBearer(p2.AccessToken)); r.Status != http.StatusOK {
		t.Errorf("the refreshed access token = %d %s", r.Status, r.Body)
	}

	wantAuthError(t, s.refresh(t, "not-a-token"), http.StatusUnauthorized, "TOKEN_INVALID")
	forged := []byte(p2.RefreshToken)
	forged[len(forged)-2] ^= 1
	wantAuthError(t, s.refresh(t, string(forged)), http.StatusUnauthorized, "TOKEN_INVALID")
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/refresh", `{"refreshToken":""}`), http.StatusBadRequest, "VALIDATION_FAILED")
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/refresh", `{}`), http.StatusBadRequest, "VALIDATION_FAILED")

	// A token two rotations old is theft, window or not: the session ends.
	wantAuthError(t, s.refresh(t, p0.RefreshToken), http.StatusUnauthorized, "REFRESH_TOKEN_REUSED")
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, authBearer(p2.AccessToken)), http.StatusUnauthorized, "SESSION_REVOKED")
	wantAuthError(t, s.refresh(t, p2.RefreshToken), http.StatusUnauthorized, "SESSION_REVOKED")
}

func testLogoutValidate(t *testing.T, s *authServer) {
	email := authEmail("logout")
	u := s.register(t, email, "logout password", "")

	good := s.login(t, email, "logout password", "tab")
	r := s.c.Do(http.MethodPost, "/api/v1/auth/validate", map[string]string{"token": good.AccessToken})
	var v struct {
		Valid   bool           `json:"valid"`
		Error   string         `json:"error"`
		Payload map[string]any `json:"payload"`
	}
	r.JSON(t, &v)
	_, claims := jwtParts(t, good.AccessToken)
	if r.Status != http.StatusOK || !v.Valid || v.Error != "" || v.Payload["sub"] != u.ID.String() ||
		v.Payload["sid"] != claims["sid"] || v.Payload["jti"] != claims["jti"] || v.Payload["did"] != "tab" ||
		v.Payload["email"] != email || v.Payload["exp"] != claims["exp"] {
		t.Errorf("validate good token = %d %s, want valid with its claims %v", r.Status, r.Body, claims)
	}

	for _, tok := range []string{"garbage", "", good.RefreshToken, good.AccessToken + "x"} {
		r := s.c.Do(http.MethodPost, "/api/v1/auth/validate", map[string]string{"token": tok})
		if r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != `{"error":"TOKEN_INVALID","valid":false}` {
			t.Errorf("validate %q = %d %s, want valid:false TOKEN_INVALID", tok, r.Status, r.Body)
		}
	}

	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/logout", nil), http.StatusUnauthorized, "UNAUTHORIZED")

	for _, tc := range []struct {
		name string
		body func(authPair) any
	}{
		{"with refresh token", func(p authPair) any { return map[string]string{"refreshToken": p.RefreshToken} }},
		{"empty body", func(authPair) any { return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := s.login(t, email, "logout password", "")
			r := s.c.Do(http.MethodPost, "/api/v1/auth/logout", tc.body(p), authBearer(p.AccessToken))
			if r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != `{"success":true}` {
				t.Fatalf("logout = %d %s", r.Status, r.Body)
			}
			wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, authBearer(p.AccessToken)), http.StatusUnauthorized, "SESSION_REVOKED")
			wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/logout", nil, authBearer(p.AccessToken)), http.StatusUnauthorized, "SESSION_REVOKED")
			r = s.c.Do(http.MethodPost, "/api/v1/auth/validate", map[string]string{"token": p.AccessToken})
			if r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != `{"error":"SESSION_REVOKED","valid":false}` {
				t.Errorf("validate after logout = %d %s", r.Status, r.Body)
			}
			wantAuthError(t, s.refresh(t, p.RefreshToken), http.StatusUnauthorized, "SESSION_REVOKED")
		})
	}
	// The other session is untouched.
	if r := s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, authBearer(good.AccessToken)); r.Status != http.StatusOK {
		t.Errorf("another session after logout = %d %s", r.Status, r.Body)
	}
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/logout", `{"refreshToken":"x","more":1}`, authBearer(good.AccessToken)),
		http.StatusBadRequest, "VALIDATION_FAILED")
}

func testSessions(t *testing.T, s *authServer) {
	email := authEmail("sessions")
	s.register(t, email, "sessions password", "")
	a := s.login(t, email, "sessions password", "laptop")
	b := s.login(t, email, "sessions password", "")
	_, ca := jwtParts(t, a.AccessToken)
	_, cb := jwtParts(t, b.AccessToken)

	list := s.sessions(t, a.AccessToken)
	if len(list) != 2 {
		t.Fatalf("sessions = %+v, want 2", list)
	}
	// Newest first: b, then a.
	if list[0].ID.String() != cb["sid"] || list[0].Current || list[1].ID.String() != ca["sid"] || !list[1].Current {
		t.Errorf("sessions = %+v, want b then a (current), ids the sids %v %v", list, cb["sid"], ca["sid"])
	}
	cur := list[1]
	if cur.DeviceID == nil || *cur.DeviceID != "laptop" || cur.DeviceName == nil || *cur.DeviceName != "Device laptop" ||
		cur.IPAddress == nil || cur.UserAgent == nil || cur.CreatedAt.IsZero() || cur.LastActivityAt.Before(cur.CreatedAt) ||
		cur.ExpiresAt.Sub(cur.CreatedAt) < 6*24*time.Hour {
		t.Errorf("current session %+v lacks its device, client or times", cur)
	}
	if list[0].DeviceID != nil || list[0].DeviceName != nil {
		t.Errorf("session without a device = %+v, want null device fields", list[0])
	}

	// Another user's session and unknown ids are NOT_FOUND.
	other := authEmail("other")
	s.register(t, other, "other password 1", "")
	o := s.login(t, other, "other password 1", "")
	_, co := jwtParts(t, o.AccessToken)
	for _, id := range []string{co["sid"].(string), uuid.NewString(), "not-a-uuid"} {
		wantAuthError(t, s.c.Do(http.MethodDelete, "/api/v1/auth/sessions/"+id, nil, authBearer(a.AccessToken)), http.StatusNotFound, "NOT_FOUND")
	}
	if r := s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, authBearer(o.AccessToken)); r.Status != http.StatusOK {
		t.Errorf("the other user's session after a foreign DELETE = %d", r.Status)
	}

	r := s.c.Do(http.MethodDelete, "/api/v1/auth/sessions/"+cb["sid"].(string), nil, authBearer(a.AccessToken))
	if r.Status != http.StatusNoContent || len(r.Body) != 0 {
		t.Fatalf("DELETE the other session = %d %s", r.Status, r.Body)
	}
	// Refused on the very next request, and gone from the list at once.
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, authBearer(b.AccessToken)), http.StatusUnauthorized, "SESSION_REVOKED")
	list = s.sessions(t, a.AccessToken)
	if len(list) != 1 || list[0].ID.String() != ca["sid"] || !list[0].Current {
		t.Errorf("sessions after DELETE = %+v, want only the current one", list)
	}
	// Deleting it again changes nothing.
	if r := s.c.Do(http.MethodDelete, "/api/v1/auth/sessions/"+cb["sid"].(string), nil, authBearer(a.AccessToken)); r.Status != http.StatusNoContent {
		t.Errorf("DELETE a revoked session again = %d %s", r.Status, r.Body)
	}

	// The security log of the user shows the logins and the revocation.
	r = s.c.Do(http.MethodGet, "/api/v1/auth/security-events?limit=10", nil, authBearer(a.AccessToken))
	var evs []struct {
		Type   string `json:"type"`
		Detail string `json:"detail"`
	}
	r.JSON(t, &evs)
	types := map[string]int{}
	for _, e := range evs {
		types[e.Type]++
	}
	if r.Status != http.StatusOK || types["registered"] != 1 || types["login_succeeded"] != 2 || types["session_revoked"] != 1 {
		t.Errorf("security events = %d %s", r.Status, r.Body)
	}
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/auth/security-events?limit=0", nil, authBearer(a.AccessToken)), http.StatusBadRequest, "VALIDATION_FAILED")
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/auth/sessions?minPosition=bogus", nil, authBearer(a.AccessToken)), http.StatusBadRequest, "VALIDATION_FAILED")
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/auth/security-events", nil), http.StatusUnauthorized, "UNAUTHORIZED")
}

func testLockout(t *testing.T, s *authServer) {
	email := authEmail("lock")
	const password = "lockout password"
	s.register(t, email, password, "")
	s.remember("lockout wrong 1")
	for i := 1; i <= 5; i++ {
		r := s.c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": email, "password": "lockout wrong 1"})
		wantAuthError(t, r, http.StatusUnauthorized, "INVALID_CREDENTIALS")
	}
	for _, pw := range []string{"lockout wrong 1", password} {
		r := s.c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": email, "password": pw})
		wantAuthError(t, r, http.StatusTooManyRequests, "ACCOUNT_LOCKED")
		secs, err := strconv.Atoi(r.Header.Get("Retry-After"))
		if err != nil || secs < 29*60 || secs > 30*60 {
			t.Errorf("Retry-After = %q, want about 1800 seconds", r.Header.Get("Retry-After"))
		}
	}
	// An unknown address locks the same way, without a user to record.
	unknown := authEmail("lock-unknown")
	s.remember(unknown)
	for i := 1; i <= 6; i++ {
		r := s.c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": unknown, "password": "lockout wrong 1"})
		if i <= 5 {
			wantAuthError(t, r, http.StatusUnauthorized, "INVALID_CREDENTIALS")
		} else {
			wantAuthError(t, r, http.StatusTooManyRequests, "ACCOUNT_LOCKED")
		}
	}
}

func testTokenAttacks(t *testing.T, s *authServer) {
	email := authEmail("attack")
	s.register(t, email, "attack password", "")
	p := s.login(t, email, "attack password", "")
	header, claims := jwtParts(t, p.AccessToken)
	parts := strings.Split(p.AccessToken, ".")

	r := s.c.Do(http.MethodGet, "/.well-known/jwks.json", nil)
	var set jose.JSONWebKeySet
	r.JSON(t, &set)
	kid, _ := header["kid"].(string)
	keys := set.Key(kid)
	if len(keys) != 1 {
		t.Fatalf("the JWKS has %d keys for the token's kid %q", len(keys), kid)
	}
	pub, ok := keys[0].Key.(*rsa.PublicKey)
	if !ok {
		t.Fatal("the token's key is not RSA")
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	attacker, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rs256 := func(key *rsa.PrivateKey) func([]byte) []byte {
		return func(in []byte) []byte {
			sum := sha256.Sum256(in)
			sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
			if err != nil {
				t.Fatal(err)
			}
			return sig
		}
	}
	hs256 := func(key []byte) func([]byte) []byte {
		return func(in []byte) []byte { m := hmac.New(sha256.New, key); m.Write(in); return m.Sum(nil) }
	}
	with := func(m map[string]any, kv ...any) map[string]any {
		out := cloneClaims(m)
		for i := 0; i < len(kv); i += 2 {
			out[kv[i].(string)] = kv[i+1]
		}
		return out
	}
	admin := with(claims, "role", "admin")
	// The genuine header and signature around an elevated payload.
	tampered := strings.Split(craftJWT(t, header, admin, nil), ".")
	tampered[0], tampered[2] = parts[0], parts[2]
	past := time.Now().Add(-time.Hour).Unix()

	for _, tc := range []struct {
		name  string
		token string
		code  string
	}{
		{"no token", "", "UNAUTHORIZED"},
		{"garbage", "garbage", "TOKEN_INVALID"},
		{"refresh token as bearer", p.RefreshToken, "TOKEN_INVALID"},
		{"alg none", craftJWT(t, with(header, "alg", "none"), claims, nil), "TOKEN_INVALID"},
		{"alg none, no kid", craftJWT(t, map[string]any{"alg": "none", "typ": "JWT"}, admin, nil), "TOKEN_INVALID"},
		{"HS256 with the public key", craftJWT(t, with(header, "alg", "HS256"), admin, hs256(pubPEM)), "TOKEN_INVALID"},
		{"HS256 with the modulus", craftJWT(t, with(header, "alg", "HS256"), admin, hs256(pub.N.Bytes())), "TOKEN_INVALID"},
		{"unknown kid", craftJWT(t, with(header, "kid", "attacker"), admin, rs256(attacker)), "TOKEN_INVALID"},
		{"known kid, wrong key", craftJWT(t, header, admin, rs256(attacker)), "TOKEN_INVALID"},
		{"tampered payload", strings.Join(tampered, "."), "TOKEN_INVALID"},
		{"wrong audience", craftJWT(t, header, with(claims, "aud", []string{"other"}), rs256(attacker)), "TOKEN_INVALID"},
		{"expired, forged", craftJWT(t, header, with(claims, "iat", past-900, "exp", past), rs256(attacker)), "TOKEN_INVALID"},
		{"crit header", craftJWT(t, with(header, "crit", []string{"exp"}), claims, rs256(attacker)), "TOKEN_INVALID"},
		{"signature stripped", parts[0] + "." + parts[1] + ".", "TOKEN_INVALID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h []http.Header
			if tc.token != "" {
				h = append(h, authBearer(tc.token))
			}
			r := s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, h...)
			env := wantAuthError(t, r, http.StatusUnauthorized, tc.code)
			if strings.Contains(env.Message, tc.token) && tc.token != "" {
				t.Errorf("the error repeats the token: %s", r.Body)
			}
		})
	}
	// The real token still works: nothing above disturbed the session.
	if r := s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, authBearer(p.AccessToken)); r.Status != http.StatusOK {
		t.Errorf("the genuine token = %d %s", r.Status, r.Body)
	}
}

// TestAuthRefreshReuseAfterWindow runs a server with a one-second reuse
// window: the previous refresh token answers the rotation's pair until the
// window has passed, then revokes the session.
func TestAuthRefreshReuseAfterWindow(t *testing.T) {
	t.Parallel()
	s := startAuthServer(t, map[string]string{"REFRESH_REUSE_WINDOW": "1s"})
	email := authEmail("window")
	s.register(t, email, "window password", "")
	p0 := s.login(t, email, "window password", "")
	r := s.refresh(t, p0.RefreshToken)
	if r.Status != http.StatusOK {
		t.Fatalf("refresh = %d %s", r.Status, r.Body)
	}
	var p1 authPair
	r.JSON(t, &p1)

	// Each reuse inside the window is harmless and answers p1; poll until
	// the window has passed and the reuse is treated as theft.
	deadline := time.Now().Add(authWait)
	graces := 0
	for {
		r = s.refresh(t, p0.RefreshToken)
		if r.Status != http.StatusOK {
			break
		}
		var again authPair
		r.JSON(t, &again)
		if again != p1 {
			t.Fatalf("reuse in the window got another pair: %s", r.Body)
		}
		graces++
		if time.Now().After(deadline) {
			t.Fatalf("the old token was still accepted after %v", authWait)
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}
	wantAuthError(t, r, http.StatusUnauthorized, "REFRESH_TOKEN_REUSED")
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/auth/sessions", nil, authBearer(p1.AccessToken)), http.StatusUnauthorized, "SESSION_REVOKED")
	wantAuthError(t, s.refresh(t, p1.RefreshToken), http.StatusUnauthorized, "SESSION_REVOKED")
	wantAuthError(t, s.refresh(t, p0.RefreshToken), http.StatusUnauthorized, "SESSION_REVOKED")
	t.Logf("%d reuses were inside the window", graces)

	// The user sees the theft in their security log, from a new session.
	p2 := s.login(t, email, "window password", "")
	r = s.c.Do(http.MethodGet, "/api/v1/auth/security-events", nil, authBearer(p2.AccessToken))
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), `"refresh_token_reused"`) {
		t.Errorf("security events = %d %s, want a refresh_token_reused entry", r.Status, r.Body)
	}
}
