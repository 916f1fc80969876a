package api_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/ratelimit"
)

// countingIdentity answers register and login and counts the calls, so a
// test can tell whether a request got past the rate limits.
type countingIdentity struct {
	domain.Identity
	registers, logins atomic.Int64
}

func (f *countingIdentity) Register(_ context.Context, in domain.RegisterInput, _ domain.RequestMeta) (domain.RegisteredUser, domain.Written, error) {
	f.registers.Add(1)
	return domain.RegisteredUser{ID: uuid.New(), Email: in.Email, CreatedAt: fixedNow}, domain.Written{Position: "1-1"}, nil
}

func (f *countingIdentity) Login(context.Context, domain.LoginInput, domain.RequestMeta) (domain.TokenPair, domain.Written, error) {
	f.logins.Add(1)
	return domain.TokenPair{}, domain.Written{}, domain.Errorf(domain.CodeInvalidCredentials, "Invalid email or password.")
}

// limitedServer is a server with the auth routes of id and the given
// policies kept in memory on a fake clock.
func limitedServer(t *testing.T, id domain.Identity, policies ratelimit.Policies, accountKey func(string) string) (*api.Server, *apitest.Client, *logBuffer) {
	t.Helper()
	s, logs := newServer(t, api.Config{Identity: id})
	s.SetRateLimits(api.RateLimits{
		Limiter:    ratelimit.NewMemory(ratelimit.MemoryOptions{Clock: func() time.Time { return fixedNow }}),
		Policies:   policies,
		AccountKey: accountKey,
	})
	return s, apitest.New(t, s.Handler()), logs
}

func register(c *apitest.Client, email string) *apitest.Response {
	return c.Do(http.MethodPost, "/api/v1/auth/register", map[string]string{"email": email, "password": "long enough"})
}

func login(c *apitest.Client, email string) *apitest.Response {
	return c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": email, "password": "long enough"})
}

// wantRateHeaders checks the RateLimit headers of r.
func wantRateHeaders(t *testing.T, r *apitest.Response, limit, remaining, policy string) {
	t.Helper()
	for h, want := range map[string]string{
		api.HeaderRateLimitLimit: limit, api.HeaderRateLimitRemaining: remaining, api.HeaderRateLimitPolicy: policy,
	} {
		if got := r.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	if r.Header.Get(api.HeaderRateLimitReset) == "" {
		t.Errorf("%s is missing", api.HeaderRateLimitReset)
	}
}

func TestRateLimitAnswersRateLimitedWithHeaders(t *testing.T) {
	t.Parallel()
	id := &countingIdentity{}
	s, c, _ := limitedServer(t, id, ratelimit.Policies{
		ratelimit.RegisterIP: {Name: ratelimit.RegisterIP, Limit: 3, Period: time.Minute, Burst: 3},
	}, nil)
	for i, remaining := range []string{"2", "1", "0"} {
		r := register(c, "a@example.com")
		if r.Status != http.StatusCreated {
			t.Fatalf("register %d = %d %s", i+1, r.Status, r.Body)
		}
		wantRateHeaders(t, r, "3", remaining, "3;w=60")
	}
	r := register(c, "a@example.com")
	env := checkEnvelope(t, r.Body, http.StatusTooManyRequests, domain.CodeRateLimited, "/api/v1/auth/register")
	if env.Message == "" {
		t.Error("no message")
	}
	if got := r.Header.Get("Retry-After"); got != "20" {
		t.Errorf("Retry-After = %q, want 20 (one interval of 20s)", got)
	}
	wantRateHeaders(t, r, "3", "0", "3;w=60")
	if got := r.Header.Get(api.HeaderRateLimitReset); got != "60" {
		t.Errorf("RateLimit-Reset = %q, want 60", got)
	}
	if n := id.registers.Load(); n != 3 {
		t.Errorf("Register ran %d times, want 3: the limited request must not reach it", n)
	}

	// The rejection is counted by policy.
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
	if _, body := do(t, srv.Client(), req); !strings.Contains(string(body), `mana_rate_limited_total{policy="register_ip"} 1`) {
		t.Error(`metrics lack mana_rate_limited_total{policy="register_ip"} 1`)
	}

	// Routes without a policy carry no rate headers; neither do routes
	// whose policy is not in force (refresh here).
	r = c.Do(http.MethodPost, "/api/v1/auth/refresh", map[string]string{})
	if h := r.Header.Get(api.HeaderRateLimitLimit); h != "" {
		t.Errorf("refresh without its policy has RateLimit-Limit %q", h)
	}
}

// TestLoginLimitsComeBeforeTheAccount: a client over its per-IP limit, or
// over an account's limit, never reaches Login (where the lock and the
// password are checked).
func TestLoginLimitsComeBeforeTheAccount(t *testing.T) {
	t.Parallel()
	id := &countingIdentity{}
	var keysMu sync.Mutex
	var keys []string
	accountKey := func(email string) string {
		keysMu.Lock()
		defer keysMu.Unlock()
		keys = append(keys, email)
		return "hmac-of-" + strings.ToLower(strings.TrimSpace(email))
	}
	_, c, _ := limitedServer(t, id, ratelimit.Policies{
		ratelimit.LoginIP:      {Name: ratelimit.LoginIP, Limit: 4, Period: time.Minute, Burst: 4},
		ratelimit.LoginAccount: {Name: ratelimit.LoginAccount, Limit: 2, Period: time.Hour, Burst: 2},
	}, accountKey)

	for i := range 2 {
		r := login(c, "victim@example.com")
		wantStatus(t, r, http.StatusUnauthorized)
		// The account's budget (1, then 0 left) is tighter than the
		// address's (3, then 2 left): the headers show it.
		wantRateHeaders(t, r, "2", []string{"1", "0"}[i], "2;w=3600")
	}
	r := login(c, " Victim@Example.com")
	checkEnvelope(t, r.Body, http.StatusTooManyRequests, domain.CodeRateLimited, "/api/v1/auth/login")
	wantRateHeaders(t, r, "2", "0", "2;w=3600")
	if n := id.logins.Load(); n != 2 {
		t.Errorf("Login ran %d times, want 2: the account's limit comes first", n)
	}
	// Another account from the same address still works, up to the
	// address's limit of 4 (three taken so far).
	wantStatus(t, login(c, "other@example.com"), http.StatusUnauthorized)
	r = login(c, "third@example.com")
	checkEnvelope(t, r.Body, http.StatusTooManyRequests, domain.CodeRateLimited, "/api/v1/auth/login")
	wantRateHeaders(t, r, "4", "0", "4;w=60")
	if n := id.logins.Load(); n != 3 {
		t.Errorf("Login ran %d times, want 3", n)
	}
	keysMu.Lock()
	defer keysMu.Unlock()
	// The per-IP check comes first: the last request never derived an
	// account key.
	if len(keys) != 4 {
		t.Errorf("AccountKey called for %v, want the four requests within the address's limit", keys)
	}
}

func wantStatus(t *testing.T, r *apitest.Response, status int) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, r.Body)
	}
}

// failingLimiter stands in for an unreachable Redis.
type failingLimiter struct{ calls atomic.Int64 }

func (f *failingLimiter) Allow(context.Context, ratelimit.Policy, string) (ratelimit.Decision, error) {
	f.calls.Add(1)
	return ratelimit.Decision{}, errors.New("dial tcp 127.0.0.1:6379: connection refused")
}

// TestRateLimiterFailureFailsOpen: an unreachable limiter lets requests
// through and says so in the log, once per interval rather than per request.
func TestRateLimiterFailureFailsOpen(t *testing.T) {
	t.Parallel()
	id := &countingIdentity{}
	s, logs := newServer(t, api.Config{Identity: id})
	lim := &failingLimiter{}
	s.SetRateLimits(api.RateLimits{Limiter: lim, Policies: ratelimit.Defaults()})
	c := apitest.New(t, s.Handler())
	for range 15 {
		wantStatus(t, register(c, "a@example.com"), http.StatusCreated)
	}
	if lim.calls.Load() != 15 || id.registers.Load() != 15 {
		t.Errorf("limiter asked %d times, Register ran %d times; want 15 each", lim.calls.Load(), id.registers.Load())
	}
	lines := logs.lines(t, "rate limiter unavailable; requests pass unlimited")
	if len(lines) != 1 {
		t.Fatalf("%d log lines about the failing limiter, want 1", len(lines))
	}
	if lines[0]["policy"] != ratelimit.RegisterIP || lines[0]["level"] != "ERROR" {
		t.Errorf("log line = %v", lines[0])
	}
}

// TestSetRateLimitsOff: without a limiter, nothing is limited and no
// header is sent.
func TestSetRateLimitsOff(t *testing.T) {
	t.Parallel()
	id := &countingIdentity{}
	s, _ := newServer(t, api.Config{Identity: id})
	s.SetRateLimits(api.RateLimits{Limiter: ratelimit.NewMemory(ratelimit.MemoryOptions{}), Policies: ratelimit.Defaults()})
	s.SetRateLimits(api.RateLimits{})
	c := apitest.New(t, s.Handler())
	for range 15 {
		r := register(c, "a@example.com")
		wantStatus(t, r, http.StatusCreated)
		if h := r.Header.Get(api.HeaderRateLimitLimit); h != "" {
			t.Fatalf("RateLimit-Limit %q with rate limits off", h)
		}
	}
}

func TestTrustedProxies(t *testing.T) {
	t.Parallel()
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48")}
	for _, tc := range []struct {
		name    string
		trusted []netip.Prefix
		peer    string
		xff     []string
		want    string
	}{
		{"no proxies: the peer", nil, "203.0.113.5:4000", []string{"198.51.100.1"}, "203.0.113.5"},
		{"untrusted peer: XFF ignored", trusted, "203.0.113.5:4000", []string{"198.51.100.1"}, "203.0.113.5"},
		{"loopback is not trusted unless listed", trusted, "127.0.0.1:4000", []string{"198.51.100.1"}, "127.0.0.1"},
		{"private is not trusted unless listed", trusted, "192.168.1.1:4000", []string{"198.51.100.1"}, "192.168.1.1"},
		{"trusted peer: XFF believed", trusted, "10.1.2.3:4000", []string{"198.51.100.1"}, "198.51.100.1"},
		{"trusted peer without XFF", trusted, "10.1.2.3:4000", nil, "10.1.2.3"},
		{"forged entries before the nearest untrusted one are ignored", trusted, "10.1.2.3:4000",
			[]string{"1.1.1.1, 198.51.100.1"}, "198.51.100.1"},
		{"a chain of trusted proxies", trusted, "10.1.2.3:4000", []string{"198.51.100.1, 10.9.9.9", "10.8.8.8"}, "198.51.100.1"},
		{"IPv6 proxy", trusted, "[2001:db8:ffff::1]:4000", []string{"2001:db8:1:2::3"}, "2001:db8:1:2::3"},
		{"garbage in XFF: the peer", trusted, "10.1.2.3:4000", []string{"not an address"}, "10.1.2.3"},
	} {
		extract := api.TrustedProxies(tc.trusted)
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.RemoteAddr = tc.peer
		for _, v := range tc.xff {
			req.Header.Add("X-Forwarded-For", v)
		}
		if got := extract(req); got != tc.want {
			t.Errorf("%s: client %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestPerIPKeys: IPv6 clients share a budget per /64, IPv4 clients have
// one each; the budget follows the address TrustedProxies extracts.
func TestPerIPKeys(t *testing.T) {
	t.Parallel()
	id := &countingIdentity{}
	s, _ := newServer(t, api.Config{Identity: id})
	s.Echo().IPExtractor = api.TrustedProxies([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	s.SetRateLimits(api.RateLimits{
		Limiter: ratelimit.NewMemory(ratelimit.MemoryOptions{Clock: func() time.Time { return fixedNow }}),
		Policies: ratelimit.Policies{
			ratelimit.RegisterIP: {Name: ratelimit.RegisterIP, Limit: 1, Period: time.Hour, Burst: 1},
		},
	})
	c := apitest.New(t, s.Handler())
	from := func(ip string) int {
		return c.Do(http.MethodPost, "/api/v1/auth/register", map[string]string{"email": "a@example.com", "password": "long enough"},
			http.Header{"X-Forwarded-For": {ip}}).Status
	}
	for _, step := range []struct {
		ip   string
		want int
	}{
		{"2001:db8:1:2::1", http.StatusCreated},
		{"2001:db8:1:2:ffff::9", http.StatusTooManyRequests}, // same /64
		{"2001:db8:1:3::1", http.StatusCreated},              // next /64
		{"198.51.100.1", http.StatusCreated},
		{"198.51.100.2", http.StatusCreated},
		{"198.51.100.1", http.StatusTooManyRequests},
		{"::ffff:198.51.100.2", http.StatusTooManyRequests}, // the same IPv4 client
	} {
		if got := from(step.ip); got != step.want {
			t.Errorf("register from %s = %d, want %d", step.ip, got, step.want)
		}
	}
}
