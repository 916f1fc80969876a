package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/internal/pgtest"
)

// The rate-limit tests of SPEC §7 run a real `mana serve`. envOf switches
// rate limits off for every other test; these set RATE_LIMITS themselves
// ("" is the built-in defaults).
//
// Servers trust 127.0.0.1 as a proxy, and each scenario claims its own
// client address in X-Forwarded-For, so that the scenarios of one server
// (run one after the other) never share a budget: few servers, few
// PostgreSQL connections.

// forwardingClient is an OpenAPI-validating client of s that passes the
// test's X-Forwarded-For on, as a proxy in front of the service would,
// connecting from the loopback address peer (127.0.0.1 or another
// 127.x.y.z), which the service sees as its peer. (The client of
// startAuthServer drops X-Forwarded-For, as httputil.ReverseProxy does.)
func forwardingClient(t *testing.T, s *authServer, peer string) *apitest.Client {
	t.Helper()
	var addr string
	for _, l := range lines(s.log.String()) {
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal([]byte(l), &rec) == nil && rec.Msg == "listening" {
			addr = rec.Addr
			break
		}
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("no listening address in the log: %v", err)
	}
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", port)}
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(peer)}, Timeout: 10 * time.Second}
	transport := &http.Transport{DialContext: dialer.DialContext}
	t.Cleanup(transport.CloseIdleConnections)
	return apitest.New(t, &httputil.ReverseProxy{
		Transport: transport,
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Header["X-Forwarded-For"] = r.In.Header["X-Forwarded-For"]
		},
	})
}

func from(ip string) http.Header { return http.Header{"X-Forwarded-For": {ip}} }

// registerAs sends a registration with a fresh email.
func registerAs(c *apitest.Client, headers ...http.Header) *apitest.Response {
	return c.Do(http.MethodPost, "/api/v1/auth/register",
		map[string]string{"email": authEmail("rl"), "password": "rate limit password"}, headers...)
}

func loginAs(c *apitest.Client, email, password string, headers ...http.Header) *apitest.Response {
	return c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": email, "password": password}, headers...)
}

func wantCreated(t *testing.T, r *apitest.Response) {
	t.Helper()
	if r.Status != http.StatusCreated {
		t.Fatalf("status %d %s, want 201", r.Status, r.Body)
	}
}

// wantRateLimited checks a 429 RATE_LIMITED with Retry-After and the
// RateLimit headers of a used-up budget of size limit.
func wantRateLimited(t *testing.T, r *apitest.Response, limit string) {
	t.Helper()
	wantAuthError(t, r, http.StatusTooManyRequests, "RATE_LIMITED")
	if n, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || n < 1 {
		t.Errorf("Retry-After = %q, want whole seconds ≥ 1", r.Header.Get("Retry-After"))
	}
	if got := r.Header.Get("RateLimit-Limit"); got != limit {
		t.Errorf("RateLimit-Limit = %q, want %s", got, limit)
	}
	if got := r.Header.Get("RateLimit-Remaining"); got != "0" {
		t.Errorf("RateLimit-Remaining = %q, want 0", got)
	}
	if n, err := strconv.Atoi(r.Header.Get("RateLimit-Reset")); err != nil || n < 1 {
		t.Errorf("RateLimit-Reset = %q, want whole seconds ≥ 1", r.Header.Get("RateLimit-Reset"))
	}
}

// metricsText returns what /metrics serves.
func metricsText(t *testing.T, s *authServer) string {
	t.Helper()
	r := s.c.Do(http.MethodGet, "/metrics", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET /metrics = %d", r.Status)
	}
	return string(r.Body)
}

// sessionIP registers a user, logs in through c with headers and returns
// the address the service recorded for the session.
func sessionIP(t *testing.T, s *authServer, c *apitest.Client, headers http.Header) string {
	t.Helper()
	email, password := authEmail("ip"), "rate limit password"
	if r := c.Do(http.MethodPost, "/api/v1/auth/register", map[string]string{"email": email, "password": password}, headers); r.Status != http.StatusCreated {
		t.Fatalf("register = %d %s", r.Status, r.Body)
	}
	r := loginAs(c, email, password, headers)
	if r.Status != http.StatusOK {
		t.Fatalf("login = %d %s", r.Status, r.Body)
	}
	var p authPair
	r.JSON(t, &p)
	for _, sess := range s.sessions(t, p.AccessToken) {
		if sess.Current && sess.IPAddress != nil {
			return *sess.IPAddress
		}
	}
	return ""
}

// TestRateLimitDefaults holds the built-in policies of SPEC §7 and
// TRUSTED_PROXIES to their word.
func TestRateLimitDefaults(t *testing.T) {
	t.Parallel()
	s := startAuthServer(t, map[string]string{"RATE_LIMITS": "", "TRUSTED_PROXIES": "127.0.0.1/32"})
	c := forwardingClient(t, s, "127.0.0.1")

	t.Run("11th registration from one address in a minute", func(t *testing.T) {
		client := from("198.51.100.10")
		before := countEvents(t, s.vars["DATABASE_URL"], "user.registered")
		for i := range 10 {
			r := registerAs(c, client)
			wantCreated(t, r)
			for h, want := range map[string]string{"RateLimit-Limit": "10", "RateLimit-Remaining": strconv.Itoa(9 - i), "RateLimit-Policy": "10;w=60"} {
				if got := r.Header.Get(h); got != want {
					t.Errorf("registration %d: %s = %q, want %q", i+1, h, got, want)
				}
			}
		}
		r := registerAs(c, client)
		wantRateLimited(t, r, "10")
		if n, _ := strconv.Atoi(r.Header.Get("Retry-After")); n > 6 {
			t.Errorf("Retry-After = %d, want at most one interval (6s)", n)
		}
		if n := countEvents(t, s.vars["DATABASE_URL"], "user.registered") - before; n != 10 {
			t.Errorf("%d registrations recorded, want 10", n)
		}
		// Another address is not affected.
		wantCreated(t, registerAs(c, from("198.51.100.11")))
	})

	t.Run("login per address", func(t *testing.T) {
		client := from("198.51.100.20")
		for i := range 10 {
			r := loginAs(c, authEmail("nobody"), "wrong password", client)
			wantAuthError(t, r, http.StatusUnauthorized, "INVALID_CREDENTIALS")
			if got := r.Header.Get("RateLimit-Remaining"); got != strconv.Itoa(9-i) {
				t.Errorf("login %d: RateLimit-Remaining = %q, want %d", i+1, got, 9-i)
			}
		}
		r := loginAs(c, authEmail("nobody"), "wrong password", client)
		wantRateLimited(t, r, "10")
		if got := r.Header.Get("RateLimit-Policy"); got != "10;w=30" {
			t.Errorf("RateLimit-Policy = %q, want 10;w=30 (burst 10 refilling at 20 a minute)", got)
		}
		// Registration has a budget of its own.
		wantCreated(t, registerAs(c, client))
	})

	t.Run("login per account", func(t *testing.T) {
		// login_account (10 a minute) counts per account, by its blind
		// index, so spelling variants count together, from any address.
		// The lockout (5 failures) answers first; the limit still counts.
		email := authEmail("target")
		variants := []string{email, strings.ToUpper(email), " " + email + " "}
		for i := range 10 {
			r := loginAs(c, variants[i%3], "wrong password", from("198.51.100."+strconv.Itoa(60+i)))
			if i < 5 {
				wantAuthError(t, r, http.StatusUnauthorized, "INVALID_CREDENTIALS")
			} else {
				wantAuthError(t, r, http.StatusTooManyRequests, "ACCOUNT_LOCKED")
			}
		}
		wantRateLimited(t, loginAs(c, email, "wrong password", from("198.51.100.70")), "10")
		r := loginAs(c, authEmail("other"), "wrong password", from("198.51.100.70"))
		wantAuthError(t, r, http.StatusUnauthorized, "INVALID_CREDENTIALS")
		if strings.Contains(s.log.String(), email) {
			t.Error("the log contains the email address")
		}
	})

	t.Run("X-Forwarded-For from a trusted proxy", func(t *testing.T) {
		// Two addresses, one budget of 10 each.
		for range 10 {
			wantCreated(t, registerAs(c, from("198.51.100.30")))
		}
		wantRateLimited(t, registerAs(c, from("198.51.100.30")), "10")
		wantCreated(t, registerAs(c, from("198.51.100.31")))
		// Prepending a made-up address does not help: the proxy appends
		// the real client, the nearest untrusted address.
		wantRateLimited(t, registerAs(c, from("203.0.113.77, 198.51.100.30")), "10")
		if ip := sessionIP(t, s, c, from("198.51.100.32")); ip != "198.51.100.32" {
			t.Errorf("session ipAddress = %q, want the forwarded client 198.51.100.32", ip)
		}
	})

	t.Run("X-Forwarded-For from an untrusted peer", func(t *testing.T) {
		// 127.0.0.2 is not in TRUSTED_PROXIES: whatever it forwards, the
		// client is 127.0.0.2.
		u := forwardingClient(t, s, "127.0.0.2")
		if ip := sessionIP(t, s, u, from("198.51.100.40")); ip != "127.0.0.2" {
			t.Errorf("session ipAddress = %q, want the peer 127.0.0.2", ip)
		}
		for i := range 9 { // sessionIP registered once
			wantCreated(t, registerAs(u, from("198.51.100."+strconv.Itoa(41+i))))
		}
		wantRateLimited(t, registerAs(u, from("198.51.100.99")), "10")
	})

	m := metricsText(t, s)
	for _, want := range []string{
		`mana_rate_limited_total{policy="register_ip"} 4`, `mana_rate_limited_total{policy="login_ip"} 1`,
		`mana_rate_limited_total{policy="login_account"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !strings.Contains(s.log.String(), "rate limits kept in memory") {
		t.Error("the log does not say where rate limits are kept")
	}
}

// TestRateLimitOverrides runs with RATE_LIMITS overrides: changed limits
// apply, the others keep their defaults.
func TestRateLimitOverrides(t *testing.T) {
	t.Parallel()
	s := startAuthServer(t, map[string]string{
		"TRUSTED_PROXIES": "127.0.0.1/32",
		"RATE_LIMITS": `{"register_ip": {"limit": 2, "period": "1h"}, "login_ip": {"limit": 6, "period": "1h"},
			"refresh_ip": "off",
			"credits_user": {"limit": 1, "period": "1h", "burst": 2}, "credits_app": {"limit": 1, "period": "1h", "burst": 1}}`,
	})
	c := forwardingClient(t, s, "127.0.0.1")

	t.Run("an override changes a limit", func(t *testing.T) {
		client := from("198.51.100.1")
		wantCreated(t, registerAs(c, client))
		wantCreated(t, registerAs(c, client))
		r := registerAs(c, client)
		wantRateLimited(t, r, "2")
		if got := r.Header.Get("RateLimit-Policy"); got != "2;w=3600" {
			t.Errorf("RateLimit-Policy = %q, want 2;w=3600", got)
		}
		if n, _ := strconv.Atoi(r.Header.Get("Retry-After")); n < 1700 || n > 1800 {
			t.Errorf("Retry-After = %d, want about 1800 (one interval of 30 min)", n)
		}
		// refresh_ip is off: no headers there.
		r = c.Do(http.MethodPost, "/api/v1/auth/refresh", map[string]string{"refreshToken": "nonsense"}, client)
		if h := r.Header.Get("RateLimit-Limit"); h != "" {
			t.Errorf("refresh has RateLimit-Limit %q although refresh_ip is off", h)
		}
	})

	t.Run("per-IP limit before lock and password", func(t *testing.T) {
		// SPEC §7's order is per-IP limit → lock → password. A locked
		// account asked from an address over its limit answers
		// RATE_LIMITED, not ACCOUNT_LOCKED, and the login never reaches
		// the account: no lockout bookkeeping, no password verification.
		victim, other := authEmail("victim"), authEmail("bystander")
		const password = "the right password"
		for _, e := range []string{victim, other} {
			r := c.Do(http.MethodPost, "/api/v1/auth/register", map[string]string{"email": e, "password": password}, from("198.51.100.21"))
			wantCreated(t, r)
		}
		client := from("198.51.100.20")
		// Five failures lock the account; the sixth attempt, the last of
		// the address's budget of 6, is told so.
		for range 5 {
			wantAuthError(t, loginAs(c, victim, "wrong password", client), http.StatusUnauthorized, "INVALID_CREDENTIALS")
		}
		wantAuthError(t, loginAs(c, victim, password, client), http.StatusTooManyRequests, "ACCOUNT_LOCKED")

		conn := connect(t, s.vars["DATABASE_URL"])
		snapshot := func() (rows int, xmins string) {
			t.Helper()
			if err := conn.QueryRow(t.Context(),
				`SELECT count(*), coalesce(string_agg(xmin::text, ',' ORDER BY email_hmac), '') FROM login_attempts`).Scan(&rows, &xmins); err != nil {
				t.Fatal(err)
			}
			return rows, xmins
		}
		rowsBefore, xminsBefore := snapshot()
		failedBefore := countEvents(t, s.vars["DATABASE_URL"], "user.login_failed")

		// Over the address's limit: RATE_LIMITED, for the locked account
		// with the right password and for another account too.
		wantRateLimited(t, loginAs(c, victim, password, client), "6")
		wantRateLimited(t, loginAs(c, other, password, client), "6")
		wantRateLimited(t, loginAs(c, victim, "wrong password", client), "6")

		// Login never ran: it would have taken a verification slot (an
		// upsert that rewrites the victim's row and creates the
		// bystander's), and a wrong password would be a failure event.
		if rows, xmins := snapshot(); rows != rowsBefore || xmins != xminsBefore {
			t.Errorf("login_attempts changed (%d rows → %d): a rate-limited login reached the account", rowsBefore, rows)
		}
		if n := countEvents(t, s.vars["DATABASE_URL"], "user.login_failed"); n != failedBefore {
			t.Errorf("user.login_failed events went from %d to %d", failedBefore, n)
		}
		// Another address logs the bystander in.
		if r := loginAs(c, other, password, from("198.51.100.22")); r.Status != http.StatusOK {
			t.Errorf("bystander from another address = %d %s", r.Status, r.Body)
		}
	})

	t.Run("credit writes per user and per app", func(t *testing.T) {
		newUser := func(name, ip string) creditUser {
			u := creditUser{email: authEmail(name), password: "credits password 1"}
			r := c.Do(http.MethodPost, "/api/v1/auth/register", map[string]string{"email": u.email, "password": u.password}, from(ip))
			wantCreated(t, r)
			var reg authUser
			r.JSON(t, &reg)
			u.id = reg.ID
			r = loginAs(c, u.email, u.password, from(ip))
			var p authPair
			r.JSON(t, &p)
			u.token = p.AccessToken
			return u
		}
		u, v := newUser("limited", "198.51.100.30"), newUser("unlimited", "198.51.100.31")
		use := func(u creditUser) *apitest.Response {
			return s.c.Do(http.MethodPost, "/api/v1/credits/use", map[string]any{"amount": 1, "appId": "chat"}, u.auth())
		}
		wantCreated(t, use(u))
		wantCreated(t, use(u))
		wantRateLimited(t, use(u), "2")
		wantCreated(t, use(v))
		if b := getBalance(t, s, u); b.Balance != fresh.Balance-2 {
			t.Errorf("balance %d after two spends and a refused one, want %d", b.Balance, fresh.Balance-2)
		}

		app := appHeaders(createServiceKey(t, s.vars, "chat"), "chat")
		base := "/api/v1/internal/credits"
		wantCreated(t, s.c.Do(http.MethodPost, base+"/use", map[string]any{"userId": v.id, "amount": 1}, app))
		wantRateLimited(t, s.c.Do(http.MethodPost, base+"/use", map[string]any{"userId": v.id, "amount": 1}, app), "1")
		// Reads are not limited.
		if r := s.c.Do(http.MethodGet, base+"/balance/"+v.id.String(), nil, app); r.Status != http.StatusOK {
			t.Errorf("an app's balance read after its write limit = %d %s", r.Status, r.Body)
		}
	})

	m := metricsText(t, s)
	for _, want := range []string{
		`mana_rate_limited_total{policy="register_ip"} 1`, `mana_rate_limited_total{policy="login_ip"} 3`, `mana_rate_limited_total{policy="credits_user"} 1`,
		`mana_rate_limited_total{policy="credits_app"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestRateLimitsOff: RATE_LIMITS=off disables every limit, and says so
// loudly at start.
func TestRateLimitsOff(t *testing.T) {
	t.Parallel()
	s := startAuthServer(t, map[string]string{"RATE_LIMITS": "off"})
	for i := range 15 {
		r := registerAs(s.c)
		if r.Status != http.StatusCreated {
			t.Fatalf("registration %d with RATE_LIMITS=off = %d %s", i+1, r.Status, r.Body)
		}
		if h := r.Header.Get("RateLimit-Limit"); h != "" {
			t.Fatalf("RateLimit-Limit %q with RATE_LIMITS=off", h)
		}
	}
	var warned bool
	for _, l := range lines(s.log.String()) {
		var rec struct {
			Level, Msg string
		}
		if json.Unmarshal([]byte(l), &rec) == nil && rec.Level == "WARN" && strings.Contains(rec.Msg, "RATE LIMITS ARE OFF") {
			warned = true
		}
	}
	if !warned {
		t.Error("RATE_LIMITS=off was not logged as a warning at start")
	}
}

// TestRateLimitsInvalidStopsStartup: a bad RATE_LIMITS stops start-up with
// a message naming the variable and the policy.
func TestRateLimitsInvalidStopsStartup(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ value, policy string }{
		{`{"login_ip": {"limit": 0, "period": "1m"}}`, "login_ip"},
		{`{"register_ip": {"limit": 5, "period": "often"}}`, "register_ip"},
		{`{"logins": {"limit": 5, "period": "1m"}}`, "logins"},
		{`{"credits_user": {"limit": 5, "period": "1s", "burst": 5, "extra": 1}}`, "credits_user"},
		{`slow`, "off"},
	} {
		r := runCmd(t, map[string]string{
			// Were the value wrongly accepted, serve would fail on this
			// database instead, without naming RATE_LIMITS.
			"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none?connect_timeout=1&sslmode=disable",
			"DATA_DIR":     t.TempDir(),
			"RATE_LIMITS":  tc.value,
		}, "serve", "--port", "0")
		if r.code == 0 || !strings.Contains(r.stderr, "RATE_LIMITS") || !strings.Contains(r.stderr, tc.policy) {
			t.Errorf("RATE_LIMITS=%s: exit %d, stderr %q; want a failure naming RATE_LIMITS and %s", tc.value, r.code, r.stderr, tc.policy)
		}
		if n := len(lines(r.stderr)); n != 1 {
			t.Errorf("RATE_LIMITS=%s: %d lines on stderr, want one", tc.value, n)
		}
	}
}

// TestRedisUnreachableStopsStartup: with REDIS_URL set, a Redis that does
// not answer stops start-up, naming REDIS_URL but not its password.
func TestRedisUnreachableStopsStartup(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), commandTimeout)
	defer cancel()
	code := run(ctx, []string{"serve", "--port", "0"}, envOf(map[string]string{
		"DATABASE_URL":      pgtest.NewDB(t),
		"DATA_DIR":          t.TempDir(),
		"ARGON2_MEMORY_KIB": "1024",
		"REDIS_URL":         "redis://:hunter2secret@127.0.0.1:1/0",
		"RATE_LIMITS":       "",
	}), &stdout, &stderr)
	last := lines(stderr.String())
	if code == 0 || len(last) == 0 || !strings.Contains(last[len(last)-1], "REDIS_URL") {
		t.Fatalf("serve with an unreachable Redis: exit %d, stderr:\n%s", code, stderr.String())
	}
	if strings.Contains(stderr.String(), "hunter2secret") {
		t.Error("the Redis password reached the log")
	}
}

// testRedisURL is the Redis of the tests (TEST_REDIS_URL, or the local one
// .ci/services.sh starts); it fails the test when Redis does not answer.
func testRedisURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv("TEST_REDIS_URL")
	if u == "" {
		u = "redis://127.0.0.1:6379/0"
	}
	opt, err := redis.ParseURL(u)
	if err != nil {
		t.Fatalf("TEST_REDIS_URL: %v", err)
	}
	client := redis.NewClient(opt)
	defer client.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		t.Fatalf("Redis at %s does not answer (run .ci/services.sh, or set TEST_REDIS_URL): %v", opt.Addr, err)
	}
	return u
}

// randomClient returns an IPv6 address in 2001:db8::/32 with a random /64
// (the key of an IPv6 client's budget), so that runs of the test sharing
// one Redis never share a budget.
func randomClient() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("2001:db8:%x:%x::1", binary.BigEndian.Uint16(b[:2]), binary.BigEndian.Uint16(b[2:]))
}

// TestRateLimitSharedThroughRedis: two servers with the same REDIS_URL
// draw on one budget per client.
func TestRateLimitSharedThroughRedis(t *testing.T) {
	t.Parallel()
	vars := map[string]string{
		"REDIS_URL":       testRedisURL(t),
		"TRUSTED_PROXIES": "127.0.0.1/32",
		"RATE_LIMITS":     `{"register_ip": {"limit": 3, "period": "1h"}}`,
	}
	a, b := startAuthServer(t, vars), startAuthServer(t, vars)
	ca, cb := forwardingClient(t, a, "127.0.0.1"), forwardingClient(t, b, "127.0.0.1")
	client := from(randomClient())

	r := registerAs(ca, client)
	wantCreated(t, r)
	if got := r.Header.Get("RateLimit-Remaining"); got != "2" {
		t.Errorf("first registration: RateLimit-Remaining = %q, want 2", got)
	}
	wantCreated(t, registerAs(cb, client))
	r = registerAs(ca, client)
	wantCreated(t, r)
	if got := r.Header.Get("RateLimit-Remaining"); got != "0" {
		t.Errorf("third registration (second on a): RateLimit-Remaining = %q, want 0 (b's counts too)", got)
	}
	wantRateLimited(t, registerAs(cb, client), "3")
	wantRateLimited(t, registerAs(ca, client), "3")
	// Another client has its own budget on both.
	wantCreated(t, registerAs(cb, from(randomClient())))
	for _, s := range []*authServer{a, b} {
		if !strings.Contains(s.log.String(), "rate limits kept in Redis") {
			t.Error("a server does not log that its rate limits are in Redis")
		}
	}
}
