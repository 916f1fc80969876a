package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/api"
)

// The security and operations tests of SPEC §7 against a real `mana serve`:
// security headers, CORS, the body limit, metrics under traffic and a scan
// of the debug log for secrets and personal data.

const (
	corsAllowed = "https://app.example.com"
	corsRefused = "https://evil.example.net"
)

// serveAddr returns host:port of the server s started, from its
// "listening" log line.
func serveAddr(t *testing.T, s *authServer) string {
	t.Helper()
	for _, l := range lines(s.log.String()) {
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal([]byte(l), &rec) == nil && rec.Msg == "listening" {
			_, port, err := net.SplitHostPort(rec.Addr)
			if err != nil {
				t.Fatalf("listening addr %q: %v", rec.Addr, err)
			}
			return net.JoinHostPort("127.0.0.1", port)
		}
	}
	t.Fatal("no listening line in the log")
	return ""
}

// rawResponse is a response read straight from the server, not through the
// validating proxy (which would drop hop-by-hop headers).
type rawResponse struct {
	status int
	header http.Header
	body   []byte
}

// leakMarkers must never appear in a response body: stack traces, Go
// source positions, SQL errors and driver names.
var leakMarkers = []string{"goroutine ", ".go:", "SQLSTATE", "pgx", "pq:", "panic", "syntax error at", "relation \"", "-----BEGIN"}

func checkNoLeak(t *testing.T, what string, body []byte) {
	t.Helper()
	for _, m := range leakMarkers {
		if bytes.Contains(body, []byte(m)) {
			t.Errorf("%s: the response contains %q: %s", what, m, body)
		}
	}
}

func rawDo(t *testing.T, method, url string, body []byte, h http.Header) rawResponse {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, url, err)
	}
	r := rawResponse{status: resp.StatusCode, header: resp.Header, body: b}
	if r.status >= 400 {
		checkNoLeak(t, method+" "+url, b)
	}
	return r
}

// wantSecurityHeaders checks the headers every response carries.
func wantSecurityHeaders(t *testing.T, what string, h http.Header) {
	t.Helper()
	for k, want := range map[string]string{
		"X-Content-Type-Options":  "nosniff",
		"X-Frame-Options":         "DENY",
		"Referrer-Policy":         "no-referrer",
		"Content-Security-Policy": api.APIContentSecurityPolicy,
	} {
		if got := h.Get(k); got != want {
			t.Errorf("%s: %s = %q, want %q", what, k, got, want)
		}
	}
	if h.Get("X-Request-Id") == "" {
		t.Errorf("%s: no X-Request-Id", what)
	}
}

// TestSecurityAndOperationsOverHTTP runs one server with a CORS allow-list
// and a debug log and checks, in order, the security headers, CORS, the
// body limit and the metrics under traffic; finally it scans the whole log
// for every secret and address the run used.
func TestSecurityAndOperationsOverHTTP(t *testing.T) {
	t.Parallel()
	s := startServe(t, map[string]string{"CORS_ORIGINS": corsAllowed + ", http://localhost:5173", "LOG_LEVEL": "debug"})
	base := "http://" + serveAddr(t, s)

	// The subtests run one after another: the metrics test measures exact
	// differences, and the log scan needs every flow finished.
	t.Run("security headers", func(t *testing.T) { testSecurityHeaders(t, s, base) })
	t.Run("cors", func(t *testing.T) { testCORS(t, s, base) })
	t.Run("body limit", func(t *testing.T) { testBodyLimit(t, s, base) })
	t.Run("metrics under traffic", func(t *testing.T) { testMetricsUnderTraffic(t, s, base) })
	t.Run("log scan", func(t *testing.T) { testLogScan(t, s) })
}

func testSecurityHeaders(t *testing.T, s *authServer, base string) {
	u := newCreditUser(t, s, "headers")
	bearer := authBearer(u.token)
	for _, tc := range []struct {
		method, path string
		body         []byte
		h            http.Header
		status       int
	}{
		{http.MethodGet, "/health/live", nil, nil, http.StatusOK},
		{http.MethodGet, "/health/ready", nil, nil, http.StatusOK},
		{http.MethodGet, "/health", nil, nil, http.StatusOK},
		{http.MethodGet, "/metrics", nil, nil, http.StatusOK},
		{http.MethodGet, "/api/v1/openapi.json", nil, nil, http.StatusOK},
		{http.MethodGet, "/.well-known/jwks.json", nil, nil, http.StatusOK},
		{http.MethodGet, "/api/v1/credits/balance", nil, bearer, http.StatusOK},
		{http.MethodGet, "/api/v1/credits/balance", nil, nil, http.StatusUnauthorized},
		{http.MethodGet, "/api/v1/credits/balance", nil, authBearer("not.a.token"), http.StatusUnauthorized},
		{http.MethodPost, "/api/v1/auth/login", []byte(`{"email":`), nil, http.StatusBadRequest},
		{http.MethodPost, "/api/v1/credits/use", []byte(`{"amount":1000000,"appId":"chat"}`), bearer, http.StatusPaymentRequired},
		{http.MethodGet, "/api/v1/nope", nil, nil, http.StatusNotFound},
		{http.MethodDelete, "/health/live", nil, nil, http.StatusMethodNotAllowed},
		{http.MethodGet, "/nope", nil, nil, http.StatusNotFound},
	} {
		what := tc.method + " " + tc.path
		r := rawDo(t, tc.method, base+tc.path, tc.body, tc.h)
		if r.status != tc.status {
			t.Errorf("%s = %d %s, want %d", what, r.status, r.body, tc.status)
		}
		wantSecurityHeaders(t, what, r.header)
		if strings.HasPrefix(tc.path, "/api/") && r.header.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", what, r.header.Get("Cache-Control"))
		}
		if r.header.Get("Strict-Transport-Security") != "" {
			t.Errorf("%s: HSTS over plain HTTP", what)
		}
	}
	// Behind the TLS-terminating proxy (Traefik), HSTS is sent.
	r := rawDo(t, http.MethodGet, base+"/health/live", nil, http.Header{"X-Forwarded-Proto": {"https"}})
	if !strings.HasPrefix(r.header.Get("Strict-Transport-Security"), "max-age=") {
		t.Errorf("HSTS behind TLS = %q", r.header.Get("Strict-Transport-Security"))
	}
}

// accessControl returns the Access-Control-Allow-* headers of h.
func accessControl(h http.Header) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		if strings.HasPrefix(k, "Access-Control-Allow-") {
			out[k] = strings.Join(v, ",")
		}
	}
	return out
}

func testCORS(t *testing.T, s *authServer, base string) {
	u := newCreditUser(t, s, "cors")
	preflight := func(origin string) rawResponse {
		return rawDo(t, http.MethodOptions, base+"/api/v1/credits/use", nil, http.Header{
			"Origin":                         {origin},
			"Access-Control-Request-Method":  {"POST"},
			"Access-Control-Request-Headers": {"authorization,content-type,idempotency-key"},
		})
	}
	actual := func(origin string) rawResponse {
		return rawDo(t, http.MethodGet, base+"/api/v1/credits/balance", nil, merge(u.auth(), http.Header{"Origin": {origin}}))
	}

	for _, origin := range []string{corsAllowed, "http://localhost:5173"} {
		p := preflight(origin)
		if p.status != http.StatusNoContent || p.header.Get("Access-Control-Allow-Origin") != origin ||
			p.header.Get("Access-Control-Allow-Credentials") != "true" ||
			!strings.Contains(p.header.Get("Access-Control-Allow-Methods"), "POST") ||
			!strings.Contains(strings.ToLower(p.header.Get("Access-Control-Allow-Headers")), "authorization") {
			t.Errorf("preflight from %s = %d %v", origin, p.status, accessControl(p.header))
		}
		wantSecurityHeaders(t, "preflight", p.header)
		a := actual(origin)
		if a.status != http.StatusOK || a.header.Get("Access-Control-Allow-Origin") != origin ||
			a.header.Get("Access-Control-Allow-Credentials") != "true" {
			t.Errorf("request from %s = %d %v", origin, a.status, accessControl(a.header))
		}
		if !strings.Contains(a.header.Get("Access-Control-Expose-Headers"), "X-Request-Id") {
			t.Errorf("request from %s exposes %q", origin, a.header.Get("Access-Control-Expose-Headers"))
		}
		if !strings.Contains(strings.Join(a.header.Values("Vary"), ","), "Origin") {
			t.Errorf("request from %s: Vary %v", origin, a.header.Values("Vary"))
		}
	}
	for _, origin := range []string{corsRefused, "http://app.example.com", corsAllowed + ".evil.net", "null"} {
		p := preflight(origin)
		if ac := accessControl(p.header); len(ac) != 0 {
			t.Errorf("preflight from refused %s got %v", origin, ac)
		}
		a := actual(origin)
		if ac := accessControl(a.header); len(ac) != 0 {
			t.Errorf("request from refused %s got %v", origin, ac)
		}
		if !strings.Contains(strings.Join(a.header.Values("Vary"), ","), "Origin") {
			t.Errorf("request from %s: Vary %v", origin, a.header.Values("Vary"))
		}
	}
}

// tooLargeBody is larger than the 1 MiB default BODY_LIMIT and smaller than
// api.MaxDrain, so the server reads all of it before answering.
const tooLargeBody = 11 << 20

func testBodyLimit(t *testing.T, s *authServer, base string) {
	addr := strings.TrimPrefix(base, "http://")
	body := bytes.Repeat([]byte("a"), tooLargeBody)
	copy(body, `{"email":"`)

	for _, chunked := range []bool{false, true} {
		name := "content-length"
		if chunked {
			name = "chunked"
		}
		t.Run(name, func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))

			// Like curl or Python: the whole request goes out before the
			// first byte of the answer is read.
			var req bytes.Buffer
			req.WriteString("POST /api/v1/auth/register HTTP/1.1\r\nHost: mana.test\r\nContent-Type: application/json\r\n")
			if chunked {
				req.WriteString("Transfer-Encoding: chunked\r\n\r\n")
				for rest := body; len(rest) > 0; {
					n := min(len(rest), 1<<20)
					fmt.Fprintf(&req, "%x\r\n", n)
					req.Write(rest[:n])
					req.WriteString("\r\n")
					rest = rest[n:]
				}
				req.WriteString("0\r\n\r\n")
			} else {
				fmt.Fprintf(&req, "Content-Length: %d\r\n\r\n", len(body))
				req.Write(body)
			}
			if _, err := conn.Write(req.Bytes()); err != nil {
				t.Fatalf("writing the %d-byte request: %v (the server must read it all before answering)", req.Len(), err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("reading the answer: %v (a reset instead of a 413?)", err)
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("reading the body: %v", err)
			}
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("status %d %s, want 413", resp.StatusCode, b)
			}
			var env api.Envelope
			if err := json.Unmarshal(b, &env); err != nil || env.Code != "PAYLOAD_TOO_LARGE" || env.StatusCode != 413 ||
				env.Path != "/api/v1/auth/register" || env.Message == "" {
				t.Errorf("body %s is not the PAYLOAD_TOO_LARGE envelope (%v)", b, err)
			}
			if !resp.Close {
				t.Error("the connection is kept open after an oversized body")
			}
			wantSecurityHeaders(t, "413", resp.Header)
		})
	}
	// Within the limit the same endpoint answers normally.
	r := s.c.Do(http.MethodPost, "/api/v1/auth/register", map[string]string{"email": "not an email", "password": "x"})
	if r.Status != http.StatusBadRequest {
		t.Errorf("a small invalid body = %d %s, want 400", r.Status, r.Body)
	}
}

// metricLine is one sample line of the Prometheus text format.
var metricLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$`)

// scrapeMetrics reads /metrics into series → value, where series is the
// name and labels exactly as exposed.
func scrapeMetrics(t *testing.T, base string) map[string]float64 {
	t.Helper()
	r := rawDo(t, http.MethodGet, base+"/metrics", nil, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET /metrics = %d", r.status)
	}
	out := map[string]float64{}
	for _, l := range lines(string(r.body)) {
		if strings.HasPrefix(l, "#") {
			continue
		}
		m := metricLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("unparsable metrics line %q", l)
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", l, err)
		}
		out[m[1]+m[2]] = v
	}
	return out
}

// sumOf adds every series of the metric name.
func sumOf(m map[string]float64, name string) (float64, bool) {
	var sum float64
	found := false
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum += v
			found = true
		}
	}
	return sum, found
}

func testMetricsUnderTraffic(t *testing.T, s *authServer, base string) {
	const (
		loginOK     = `mana_logins_total{code="",result="succeeded"}`
		loginFailed = `mana_logins_total{code="INVALID_CREDENTIALS",result="failed"}`
		spentOther  = `mana_credits_spent_total{app="other"}`
		spentPhotos = `mana_credits_spent_total{app="photos"}`
		sessions    = `mana_active_sessions`
	)
	// A registered app: a service key exists for it.
	key := createServiceKey(t, s.vars, "photos")
	s.remember(key)

	// Every metric SPEC §7 names that exists before its first event. The
	// lease holders report relay and projection lag once they have measured
	// it, so wait for that.
	var before map[string]float64
	var missing []string
	for deadline := time.Now().Add(authWait); ; time.Sleep(50 * time.Millisecond) {
		before, missing = scrapeMetrics(t, base), nil
		for _, name := range []string{
			"mana_http_requests_total", "mana_http_request_duration_seconds_bucket",
			"mana_events_appended_total", "mana_command_duration_seconds_count",
			"mana_relay_lag_events", "mana_relay_lag_seconds", "mana_relay_published_total",
			"mana_projection_lag_events", "mana_projection_lag_seconds", "mana_projection_failures_total",
			"mana_projection_applied_total", "mana_feed_stall_seconds",
			"mana_credits_spent_total", "mana_active_sessions", "mana_logins_total",
		} {
			if _, ok := sumOf(before, name); !ok {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(missing) > 0 {
		t.Errorf("/metrics lacks %v", missing)
	}
	if v := before[`mana_projection_failures_total{projection="users"}`]; v != 0 {
		t.Errorf("projection failures before any failure = %v", v)
	}

	email := authEmail("metrics")
	password := "metrics password " + uuid.NewString()[:8]
	name := "Metrics User " + uuid.NewString()[:6]
	s.remember(name)
	user := s.register(t, email, password, name)
	pair := s.login(t, email, password, "metrics-device")
	afterLogin := scrapeMetrics(t, base)
	if got := afterLogin[sessions] - before[sessions]; got != 1 {
		t.Errorf("active sessions went from %v to %v after one login, want +1", before[sessions], afterLogin[sessions])
	}

	if r := s.refresh(t, pair.RefreshToken); r.Status != http.StatusOK {
		t.Fatalf("refresh = %d %s", r.Status, r.Body)
	}
	// A second device: a second session.
	second := s.login(t, email, password, "")
	u := creditUser{id: user.ID, email: email, password: password, token: second.AccessToken}

	use(t, s, u, 2, "photos", "user spend for a registered app")
	use(t, s, u, 3, "chat", "user spend for an unregistered app")
	use(t, s, u, 1, "photos", "replayed spend", idemKey("metrics-replay"))
	rr := s.c.Do(http.MethodPost, "/api/v1/credits/use", map[string]any{"amount": 1, "appId": "photos", "description": "replayed spend"},
		u.auth(), idemKey("metrics-replay"))
	if rr.Status != http.StatusCreated || rr.Header.Get(api.HeaderIdempotentReplayed) != "true" {
		t.Errorf("replayed spend = %d %s", rr.Status, rr.Body)
	}
	r := s.c.Do(http.MethodPost, "/api/v1/internal/credits/use", map[string]any{"userId": user.ID, "amount": 4}, appHeaders(key, "photos"))
	if r.Status != http.StatusCreated {
		t.Fatalf("app spend = %d %s", r.Status, r.Body)
	}
	wantAuthError(t, s.c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": email, "password": "wrong " + password}),
		http.StatusUnauthorized, "INVALID_CREDENTIALS")
	s.remember("wrong " + password)
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/credits/balance", nil, authBearer(pair.AccessToken+"tampered")),
		http.StatusUnauthorized, "TOKEN_INVALID")

	after := scrapeMetrics(t, base)
	reqBefore, _ := sumOf(before, "mana_http_requests_total")
	reqAfter, _ := sumOf(after, "mana_http_requests_total")
	if reqAfter < reqBefore+10 {
		t.Errorf("mana_http_requests_total went from %v to %v", reqBefore, reqAfter)
	}
	if v := after[`mana_http_requests_total{method="POST",route="/api/v1/credits/use",status="201"}`]; v < 4 {
		t.Errorf("spends by route = %v, want at least 4", v)
	}
	if v := after[`mana_http_requests_total{method="GET",route="/api/v1/credits/balance",status="401"}`]; v < 1 {
		t.Errorf("401s by route = %v", v)
	}
	for _, tc := range []struct {
		series string
		delta  float64
	}{
		{loginOK, 2},
		{loginFailed, 1},
		{spentOther, 3},
		{spentPhotos, 2 + 1 + 4}, // the replay moved nothing
		{sessions, 2},
	} {
		if got := after[tc.series] - before[tc.series]; got != tc.delta {
			t.Errorf("%s went from %v to %v, want +%v", tc.series, before[tc.series], after[tc.series], tc.delta)
		}
	}
	for _, name := range []string{"mana_events_appended_total", "mana_command_duration_seconds_count"} {
		b, _ := sumOf(before, name)
		a, _ := sumOf(after, name)
		if a <= b {
			t.Errorf("%s did not grow under traffic (%v → %v)", name, b, a)
		}
	}
	// The relay and the projectors follow asynchronously.
	for _, name := range []string{"mana_relay_published_total", "mana_projection_applied_total"} {
		b, _ := sumOf(before, name)
		deadline := time.Now().Add(authWait)
		for {
			a, _ := sumOf(scrapeMetrics(t, base), name)
			if a > b {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s did not grow within %v of the traffic (%v → %v)", name, authWait, b, a)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if strings.Contains(fmt.Sprint(after), "chat") {
		t.Error("an unregistered app id became a label")
	}

	// Logging out ends a session.
	r = s.c.Do(http.MethodPost, "/api/v1/auth/logout", nil, authBearer(second.AccessToken))
	if r.Status != http.StatusOK {
		t.Fatalf("logout = %d %s", r.Status, r.Body)
	}
	final := scrapeMetrics(t, base)
	if got := final[sessions] - after[sessions]; got != -1 {
		t.Errorf("active sessions went from %v to %v after a logout, want -1", after[sessions], final[sessions])
	}
}

// emailPattern finds anything shaped like an e-mail address.
var emailPattern = regexp.MustCompile(`[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}`)

func testLogScan(t *testing.T, s *authServer) {
	log := s.log.String()
	requests := 0
	for _, m := range logMessages(log) {
		if m == "http request" {
			requests++
		}
	}
	if requests < 40 {
		t.Fatalf("the log has only %d request lines; is LOG_LEVEL=debug in effect?", requests)
	}
	s.mu.Lock()
	seen := append([]string(nil), s.seen...)
	s.mu.Unlock()
	if len(seen) < 15 {
		t.Fatalf("only %d secrets were recorded; the flows did not run", len(seen))
	}
	for _, secret := range append(seen, "-----BEGIN", "Bearer ") {
		if len(secret) >= 4 && strings.Contains(log, secret) {
			t.Errorf("the server log contains %q", secret)
		}
	}
	if found := emailPattern.FindAllString(log, 5); len(found) > 0 {
		t.Errorf("the server log contains e-mail addresses: %v", found)
	}
	for _, m := range logMessages(log) {
		if m == "request failed" {
			t.Errorf("an unexpected error was logged during the flows:\n%s", log)
			break
		}
	}
}
