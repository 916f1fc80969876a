package console

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
)

// The handler tests run the console behind a real api.Server (its
// middleware, security headers and error handler) over stub ports.

const rightPassword = "right password"

// stubIdentity signs in anyone with rightPassword; the role is the part
// of the address before "@" when it names one. Access tokens listed in
// expired answer TOKEN_EXPIRED, as after 15 minutes.
type stubIdentity struct {
	domain.Identity // methods not stubbed panic

	mu       sync.Mutex
	sessions map[string]domain.Principal // access token → principal
	refresh  map[string]string           // refresh token → email
	expired  map[string]bool
}

func newStubIdentity() *stubIdentity {
	return &stubIdentity{sessions: map[string]domain.Principal{}, refresh: map[string]string{}, expired: map[string]bool{}}
}

func (s *stubIdentity) issue(email string) domain.TokenPair {
	s.mu.Lock()
	defer s.mu.Unlock()
	role := domain.RoleUser
	if r, _, _ := strings.Cut(email, "@"); domain.ValidRole(r) {
		role = r
	}
	p := domain.Principal{UserID: uuid.NewSHA1(uuid.Nil, []byte(email)), SessionID: uuid.New(), Email: email, Role: role}
	at, rt := "at-"+uuid.NewString(), "rt-"+uuid.NewString()
	s.sessions[at] = p
	s.refresh[rt] = email
	return domain.TokenPair{User: domain.UserView{ID: p.UserID, Email: email, Role: role}, AccessToken: at, RefreshToken: rt}
}

func (s *stubIdentity) Register(_ context.Context, in domain.RegisterInput, _ domain.RequestMeta) (domain.RegisteredUser, domain.Written, error) {
	if strings.HasPrefix(in.Email, "taken") {
		return domain.RegisteredUser{}, domain.Written{}, domain.Errorf(domain.CodeEmailAlreadyRegistered, "This email is already registered.")
	}
	return domain.RegisteredUser{Email: in.Email}, domain.Written{}, nil
}

func (s *stubIdentity) Login(_ context.Context, in domain.LoginInput, _ domain.RequestMeta) (domain.TokenPair, domain.Written, error) {
	if in.Password != rightPassword {
		return domain.TokenPair{}, domain.Written{}, domain.Errorf(domain.CodeInvalidCredentials, "Invalid email or password.")
	}
	return s.issue(in.Email), domain.Written{}, nil
}

func (s *stubIdentity) Refresh(_ context.Context, rt string, _ domain.RequestMeta) (domain.TokenPair, domain.Written, error) {
	s.mu.Lock()
	email, ok := s.refresh[rt]
	delete(s.refresh, rt)
	s.mu.Unlock()
	if !ok {
		return domain.TokenPair{}, domain.Written{}, domain.Errorf(domain.CodeTokenInvalid, "Invalid token.")
	}
	return s.issue(email), domain.Written{}, nil
}

func (s *stubIdentity) Authenticate(_ context.Context, at string) (domain.Principal, domain.Claims, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.sessions[at]
	switch {
	case !ok:
		return domain.Principal{}, domain.Claims{}, domain.Errorf(domain.CodeTokenInvalid, "Invalid token.")
	case s.expired[at]:
		return domain.Principal{}, domain.Claims{}, domain.Errorf(domain.CodeTokenExpired, "Expired token.")
	}
	return p, domain.Claims{}, nil
}

func (s *stubIdentity) Logout(context.Context, domain.Principal, domain.RequestMeta) (domain.Written, error) {
	return domain.Written{}, nil
}

func (s *stubIdentity) Sessions(_ context.Context, p domain.Principal, _ string) ([]domain.SessionView, error) {
	return []domain.SessionView{{ID: p.SessionID, Current: true}}, nil
}

// stubCredits serves a fixed balance and records admin writes.
type stubCredits struct {
	domain.CreditsService

	mu     sync.Mutex
	grants []domain.AdminCreditInput
}

func (s *stubCredits) Balance(context.Context, uuid.UUID, string) (domain.Balance, error) {
	return domain.Balance{Balance: 150, FreeCreditsRemaining: 150, TotalEarned: 150, DailyFreeCredits: 5}, nil
}

func (s *stubCredits) Transactions(context.Context, uuid.UUID, int, int, string) ([]domain.Transaction, error) {
	return nil, nil
}

func (s *stubCredits) Usage(context.Context, uuid.UUID, time.Time, time.Time, string) ([]domain.UsageDay, error) {
	return []domain.UsageDay{{Day: "2026-01-02", AppID: "chat", Credits: 12, Count: 3}}, nil
}

func (s *stubCredits) Grant(_ context.Context, _ domain.Caller, in domain.AdminCreditInput) (domain.Receipt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.grants = append(s.grants, in)
	return domain.Receipt{Status: http.StatusCreated}, nil
}

func (s *stubCredits) granted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.grants)
}

type fixture struct {
	id      *stubIdentity
	credits *stubCredits
	srv     *httptest.Server
}

func newFixture(t *testing.T, secure bool) *fixture {
	t.Helper()
	f := &fixture{id: newStubIdentity(), credits: &stubCredits{}}
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
	con, err := New(Config{Identity: f.id, Credits: f.credits, Key: bytes.Repeat([]byte{7}, 32), SecureCookies: secure, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	s := api.New(api.Config{Logger: logger})
	s.SetConsole(con)
	f.srv = httptest.NewServer(s.Handler())
	t.Cleanup(f.srv.Close)
	return f
}

// client is a browser without JavaScript: cookies, no redirects followed.
type client struct {
	t   *testing.T
	f   *fixture
	hc  *http.Client
	jar *cookiejar.Jar
}

func (f *fixture) client(t *testing.T) *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: t, f: f, jar: jar, hc: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

// get fetches path and returns the response with its body read.
func (c *client) get(path string) (*http.Response, string) {
	c.t.Helper()
	res, err := c.hc.Get(c.f.srv.URL + path)
	if err != nil {
		c.t.Fatal(err)
	}
	return res, readBody(c.t, res)
}

func (c *client) post(path string, form url.Values) (*http.Response, string) {
	c.t.Helper()
	res, err := c.hc.PostForm(c.f.srv.URL+path, form)
	if err != nil {
		c.t.Fatal(err)
	}
	return res, readBody(c.t, res)
}

func readBody(t *testing.T, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf returns the token of the first form of page.
func csrf(t *testing.T, page string) string {
	t.Helper()
	m := csrfField.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF field in:\n%s", page)
	}
	return m[1]
}

// signIn signs email in and returns the account page's CSRF token.
func (c *client) signIn(email string) string {
	c.t.Helper()
	_, page := c.get("/console/login")
	res, _ := c.post("/console/login", url.Values{"csrf": {csrf(c.t, page)}, "email": {email}, "password": {rightPassword}})
	if res.StatusCode != http.StatusSeeOther {
		c.t.Fatalf("sign-in = %d, want 303", res.StatusCode)
	}
	_, page = c.get(res.Header.Get("Location"))
	return csrf(c.t, page)
}

func TestAnonymousVisitorsAreSentToSignIn(t *testing.T) {
	t.Parallel()
	c := newFixture(t, false).client(t)
	for _, path := range []string{"/console", "/console/", "/console/account", "/console/admin/events"} {
		res, _ := c.get(path)
		if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/console/login" {
			t.Errorf("GET %s = %d → %q, want 303 → /console/login", path, res.StatusCode, res.Header.Get("Location"))
		}
	}
	res, page := c.get("/console/login")
	if res.StatusCode != http.StatusOK || !strings.Contains(page, `<label for="password">`) {
		t.Errorf("GET /console/login = %d, want the sign-in form", res.StatusCode)
	}
}

func TestPagesCarryTheHTMLPolicyAndNoInlineCode(t *testing.T) {
	t.Parallel()
	c := newFixture(t, false).client(t)
	c.signIn("admin@example.com")
	inline := regexp.MustCompile(`(?i)<script(\s[^>]*)?>[^<]|\son[a-z]+=|\sstyle=|javascript:`)
	for _, path := range []string{"/console/login", "/console/signup", "/console/account", "/console/account/sessions",
		"/console/admin", "/console/admin/users", "/console/nope"} {
		res, page := c.get(path)
		if got := res.Header.Get("Content-Security-Policy"); got != api.HTMLContentSecurityPolicy {
			t.Errorf("%s: CSP = %q", path, got)
		}
		for _, directive := range []string{"script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "form-action 'self'"} {
			if !strings.Contains(res.Header.Get("Content-Security-Policy"), directive) {
				t.Errorf("%s: the CSP lacks %s", path, directive)
			}
		}
		if got := res.Header.Get("Cache-Control"); got != "no-store" {
			t.Errorf("%s: Cache-Control = %q, want no-store", path, got)
		}
		if !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
			t.Errorf("%s: Content-Type = %q", path, res.Header.Get("Content-Type"))
		}
		if m := inline.FindString(page); m != "" {
			t.Errorf("%s: inline code %q", path, m)
		}
	}
	if res, _ := c.get("/console/nope"); res.StatusCode != http.StatusNotFound {
		t.Errorf("unknown console page = %d, want 404", res.StatusCode)
	}
}

func TestCookieAttributes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		secure     bool
		tls        bool
		wantSecure bool
	}{
		{"plain HTTP in development", false, false, false},
		{"TLS", false, true, true},
		{"production behind a proxy", true, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, tc.secure)
			c := f.client(t)
			_, page := c.get("/console/login")
			form := url.Values{"csrf": {csrf(t, page)}, "email": {"user@example.com"}, "password": {rightPassword}}
			req := httptest.NewRequest(http.MethodPost, f.srv.URL+"/console/login", strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			for _, ck := range c.jar.Cookies(req.URL) {
				req.AddCookie(ck)
			}
			if tc.tls {
				req.TLS = &tls.ConnectionState{}
			}
			rec := httptest.NewRecorder()
			f.srv.Config.Handler.ServeHTTP(rec, req)
			if rec.Code != http.StatusSeeOther {
				t.Fatalf("sign-in = %d %s", rec.Code, rec.Body)
			}
			names := map[string]bool{}
			for _, ck := range rec.Result().Cookies() {
				names[ck.Name] = true
				if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/console/" || ck.Secure != tc.wantSecure {
					t.Errorf("cookie %s: HttpOnly=%v SameSite=%v Path=%q Secure=%v, want true Strict /console/ %v",
						ck.Name, ck.HttpOnly, ck.SameSite, ck.Path, ck.Secure, tc.wantSecure)
				}
			}
			if !names[cookieAccess] || !names[cookieRefresh] {
				t.Errorf("cookies set: %v, want the access and refresh cookies", names)
			}
		})
	}
}

func TestFormsWithoutTheRightCSRFTokenAreRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	c := f.client(t)
	_, page := c.get("/console/login")
	token := csrf(t, page)
	for _, tc := range []struct {
		name string
		csrf []string
	}{{"missing", nil}, {"wrong", []string{"x" + token[1:]}}, {"from another visitor", []string{csrf(t, mustGet(t, f.client(t), "/console/login"))}}} {
		res, body := c.post("/console/login", url.Values{"csrf": tc.csrf, "email": {"user@example.com"}, "password": {rightPassword}})
		if res.StatusCode != http.StatusForbidden || !strings.Contains(body, "did not come from this site") {
			t.Errorf("sign-in with a %s token = %d, want 403", tc.name, res.StatusCode)
		}
	}

	// Behind sign-in the token is bound to the session: the pre-session
	// token of the sign-in page does not work there.
	own := c.signIn("user@example.com")
	if res, _ := c.post("/console/logout", url.Values{"csrf": {token}}); res.StatusCode != http.StatusForbidden {
		t.Errorf("sign-out with the pre-session token = %d, want 403", res.StatusCode)
	}
	if res, _ := c.post("/console/logout", url.Values{"csrf": {own}}); res.StatusCode != http.StatusSeeOther {
		t.Errorf("sign-out with the session's token = %d, want 303", res.StatusCode)
	}
}

func mustGet(t *testing.T, c *client, path string) string {
	t.Helper()
	_, page := c.get(path)
	return page
}

func TestAuditorsCannotMoveCredits(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	user := uuid.New()
	form := func(token string) url.Values {
		return url.Values{"csrf": {token}, "amount": {"10"}, "bucket": {"free"}, "reason": {"goodwill"}, "idempotencyKey": {"k1"}}
	}

	aud := f.client(t)
	token := aud.signIn("auditor@example.com")
	res, page := aud.get("/console/admin/users/" + user.String())
	if res.StatusCode != http.StatusOK || strings.Contains(page, `id="grant"`) {
		t.Errorf("an auditor's ledger page = %d, want 200 without the grant form", res.StatusCode)
	}
	if res, _ := aud.post("/console/admin/users/"+user.String()+"/grant", form(token)); res.StatusCode != http.StatusForbidden {
		t.Errorf("an auditor's grant = %d, want 403", res.StatusCode)
	}

	plain := f.client(t)
	token = plain.signIn("user@example.com")
	if res, _ := plain.get("/console/admin/users/" + user.String()); res.StatusCode != http.StatusForbidden {
		t.Errorf("a user's GET of an admin page = %d, want 403", res.StatusCode)
	}
	if res, _ := plain.post("/console/admin/users/"+user.String()+"/grant", form(token)); res.StatusCode != http.StatusForbidden {
		t.Errorf("a user's grant = %d, want 403", res.StatusCode)
	}
	if n := f.credits.granted(); n != 0 {
		t.Fatalf("%d grants went through", n)
	}

	adm := f.client(t)
	token = adm.signIn("admin@example.com")
	noReason := form(token)
	noReason.Set("reason", " ")
	if res, page := adm.post("/console/admin/users/"+user.String()+"/grant", noReason); res.StatusCode != http.StatusBadRequest ||
		!strings.Contains(page, "A reason is required") {
		t.Errorf("a grant without a reason = %d, want 400 with the message", res.StatusCode)
	}
	if res, _ := adm.post("/console/admin/users/"+user.String()+"/grant", form(token)); res.StatusCode != http.StatusSeeOther {
		t.Errorf("an admin's grant = %d, want 303", res.StatusCode)
	}
	if n := f.credits.granted(); n != 1 {
		t.Errorf("%d grants, want 1", n)
	}
}

func TestExpiredAccessTokensAreRefreshed(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	c := f.client(t)
	c.signIn("user@example.com")
	u, _ := url.Parse(f.srv.URL + "/console/")
	var old string
	for _, ck := range c.jar.Cookies(u) {
		if ck.Name == cookieAccess {
			old = ck.Value
		}
	}
	f.id.mu.Lock()
	f.id.expired[old] = true
	f.id.mu.Unlock()

	res, page := c.get("/console/account")
	if res.StatusCode != http.StatusOK || !strings.Contains(page, `id="balance">150<`) {
		t.Fatalf("account with an expired access token = %d, want the page", res.StatusCode)
	}
	for _, ck := range c.jar.Cookies(u) {
		if ck.Name == cookieAccess && ck.Value == old {
			t.Error("the access cookie was not replaced")
		}
	}
}

func TestBadInputReRendersTheForm(t *testing.T) {
	t.Parallel()
	c := newFixture(t, false).client(t)
	_, page := c.get("/console/signup")
	token := csrf(t, page)
	for _, tc := range []struct {
		form   url.Values
		status int
		text   string
	}{
		{url.Values{"email": {"a@example.com"}, "password": {"password 1"}, "password2": {"password 2"}}, 400, "The two passwords differ."},
		{url.Values{"email": {"taken@example.com"}, "password": {"password 1"}, "password2": {"password 1"}}, 409, "already registered"},
	} {
		tc.form.Set("csrf", token)
		res, page := c.post("/console/signup", tc.form)
		if res.StatusCode != tc.status || !strings.Contains(page, tc.text) || !strings.Contains(page, `value="`+tc.form.Get("email")+`"`) {
			t.Errorf("sign-up %v = %d, want %d with %q and the address kept", tc.form.Get("email"), res.StatusCode, tc.status, tc.text)
		}
	}
	res, page := c.post("/console/login", url.Values{"csrf": {token}, "email": {"a@example.com"}, "password": {"wrong"}})
	if res.StatusCode != http.StatusUnauthorized || !strings.Contains(page, `role="alert"`) {
		t.Errorf("a wrong password = %d, want 401 with the message", res.StatusCode)
	}
}

func TestAssetsAreServedAndVersioned(t *testing.T) {
	t.Parallel()
	c := newFixture(t, false).client(t)
	for _, name := range []string{"console.css", "console.js"} {
		res, body := c.get("/console/static/" + name + "?v=" + assetVersion)
		if res.StatusCode != http.StatusOK || body == "" || !strings.Contains(res.Header.Get("Cache-Control"), "immutable") {
			t.Errorf("%s = %d, Cache-Control %q", name, res.StatusCode, res.Header.Get("Cache-Control"))
		}
	}
	if res, _ := c.get("/console/static/nope.js"); res.StatusCode != http.StatusNotFound {
		t.Errorf("unknown asset = %d, want 404", res.StatusCode)
	}
}
