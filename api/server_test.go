package api_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/labstack/echo/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/domain"
)

func TestUnknownRouteAnswersNotFoundEnvelope(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	c := apitest.New(t, s.Handler())

	for _, path := range []string{"/nope", "/api/v1/nope"} {
		r := c.Do(http.MethodGet, path+"?token=secret", nil)
		if r.Status != http.StatusNotFound {
			t.Fatalf("GET %s: status %d, want 404", path, r.Status)
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("GET %s: Content-Type %q", path, ct)
		}
		env := checkEnvelope(t, r.Body, http.StatusNotFound, domain.CodeNotFound, path)
		if env.Details != nil {
			t.Errorf("details = %v, want none", env.Details)
		}
		if strings.Contains(string(r.Body), "details") {
			t.Errorf("an envelope without details must omit the field: %s", r.Body)
		}
	}
}

func TestWrongMethodAnswersMethodNotAllowedEnvelope(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	c := apitest.New(t, s.Handler())

	r := c.Do(http.MethodDelete, "/health/live", nil)
	if r.Status != http.StatusMethodNotAllowed {
		t.Fatalf("status %d, want 405", r.Status)
	}
	checkEnvelope(t, r.Body, http.StatusMethodNotAllowed, domain.CodeMethodNotAllowed, "/health/live")
	if allow := r.Header.Get("Allow"); !strings.Contains(allow, http.MethodGet) {
		t.Errorf("Allow = %q, want it to list GET", allow)
	}
}

func TestPanicAnswersInternalWithoutStack(t *testing.T) {
	t.Parallel()
	s, logs := newServer(t, api.Config{})
	s.API().GET("/test/boom", func(c *echo.Context) error {
		panic("the database password is hunter2")
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/test/boom", nil)
	req.Header.Set("X-Request-Id", "req-panic-1")
	resp, body := do(t, srv.Client(), req)

	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("status %d, want 500", resp.StatusCode)
	}
	env := checkEnvelope(t, body, http.StatusInternalServerError, domain.CodeInternal, "/api/v1/test/boom")
	if env.Message != "An internal error occurred." {
		t.Errorf("message = %q, want the generic one", env.Message)
	}
	for _, leak := range []string{"hunter2", "goroutine", "panic", ".go:"} {
		if strings.Contains(string(body), leak) {
			t.Errorf("response leaks %q: %s", leak, body)
		}
	}

	failed := logs.lines(t, "request failed")
	if len(failed) != 1 {
		t.Fatalf("logged %d 'request failed' lines, want exactly 1:\n%s", len(failed), logs)
	}
	rec := failed[0]
	if rec["request_id"] != "req-panic-1" || !strings.Contains(fmt.Sprint(rec["error"]), "hunter2") {
		t.Errorf("log record lacks request id or cause: %v", rec)
	}
	if stack, _ := rec["stack"].(string); !strings.Contains(stack, "goroutine") {
		t.Errorf("log record has no stack: %v", rec)
	}
}

func TestUnexpectedErrorIsHiddenAndLoggedOnce(t *testing.T) {
	t.Parallel()
	s, logs := newServer(t, api.Config{})
	s.API().GET("/test/fail", func(c *echo.Context) error {
		return fmt.Errorf("query balances: %w", errors.New(`pq: relation "secret_table" does not exist`))
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/test/fail", nil)
	resp, body := do(t, srv.Client(), req)
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("status %d, want 500", resp.StatusCode)
	}
	checkEnvelope(t, body, http.StatusInternalServerError, domain.CodeInternal, "/api/v1/test/fail")
	if strings.Contains(string(body), "secret_table") {
		t.Errorf("response leaks the cause: %s", body)
	}
	failed := logs.lines(t, "request failed")
	if len(failed) != 1 || !strings.Contains(fmt.Sprint(failed[0]["error"]), "secret_table") {
		t.Fatalf("want the cause logged exactly once, got %v", failed)
	}
	if failed[0]["request_id"] != resp.Header.Get("X-Request-Id") {
		t.Errorf("logged request id %v, response says %q", failed[0]["request_id"], resp.Header.Get("X-Request-Id"))
	}
}

func TestDomainErrorsMapToStatusAndEnvelope(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err        error
		status     int
		retryAfter string
	}{
		{domain.Errorf(domain.CodeValidationFailed, "Bad email."), 400, ""},
		{domain.Errorf(domain.CodeInvalidCredentials, "Invalid email or password."), 401, ""},
		{domain.Errorf(domain.CodeInsufficientCredits, "Not enough credits."), 402, ""},
		{domain.Errorf(domain.CodeAppMismatch, "Wrong app."), 403, ""},
		{domain.Errorf(domain.CodeHoldNotFound, "No such hold."), 404, ""},
		{domain.Errorf(domain.CodeIdempotencyKeyReused, "Key reused."), 409, ""},
		{domain.Errorf(domain.CodePayloadTooLarge, "Too big."), 413, ""},
		{domain.Errorf(domain.CodeUnsupportedMediaType, "JSON only."), 415, ""},
		{&domain.Error{Code: domain.CodeAccountLocked, Message: "Locked.", RetryAfterSeconds: 42}, 429, "42"},
		{fmt.Errorf("wrapped: %w", domain.Errorf(domain.CodeBusy, "Busy.")), 503, ""},
		{&domain.Error{Code: "NOT_A_CODE", Message: "made up"}, 500, ""},
	}
	s, logs := newServer(t, api.Config{})
	s.API().POST("/test/err/:i", func(c *echo.Context) error {
		i, err := strconv.Atoi(c.Param("i"))
		if err != nil {
			return err
		}
		return tests[i].err
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	for i, tt := range tests {
		path := fmt.Sprintf("/api/v1/test/err/%d", i)
		req, _ := http.NewRequest(http.MethodPost, srv.URL+path, nil)
		resp, body := do(t, srv.Client(), req)
		wantCode := domain.ErrorCode(tt.err)
		wantMsg := domain.ErrorMessage(tt.err)
		if tt.status == 500 {
			wantCode, wantMsg = domain.CodeInternal, "An internal error occurred."
		}
		if resp.StatusCode != tt.status {
			t.Errorf("%v: status %d, want %d", tt.err, resp.StatusCode, tt.status)
			continue
		}
		env := checkEnvelope(t, body, tt.status, wantCode, path)
		if env.Message != wantMsg {
			t.Errorf("%v: message %q, want %q", tt.err, env.Message, wantMsg)
		}
		if got := resp.Header.Get("Retry-After"); got != tt.retryAfter {
			t.Errorf("%v: Retry-After %q, want %q", tt.err, got, tt.retryAfter)
		}
	}
	// An unknown code is a programming error: it must reach the log.
	if n := len(logs.lines(t, "request failed")); n != 1 {
		t.Errorf("logged %d failures, want 1 (the unknown code)", n)
	}
}

func TestDomainErrorDetailsReachTheEnvelope(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	s.API().POST("/test/details", func(c *echo.Context) error {
		return &domain.Error{Code: domain.CodeValidationFailed, Message: "Invalid.",
			Details: []domain.FieldError{{Field: "email", Message: "must be an e-mail address"}}}
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/v1/test/details", nil)
	_, body := do(t, srv.Client(), req)
	env := checkEnvelope(t, body, 400, domain.CodeValidationFailed, "/api/v1/test/details")
	if len(env.Details) != 1 || env.Details[0].Field != "email" {
		t.Errorf("details = %+v", env.Details)
	}
}

func TestWriteErrorWritesEnvelopeFromHandler(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	s.API().GET("/test/write", func(c *echo.Context) error {
		return api.WriteError(c, domain.Errorf(domain.CodeForbidden, "Admins only."))
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/test/write", nil)
	resp, body := do(t, srv.Client(), req)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %d, want 403", resp.StatusCode)
	}
	checkEnvelope(t, body, 403, domain.CodeForbidden, "/api/v1/test/write")
}

func TestRequestID(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	seen := make(chan string, 1)
	s.API().GET("/test/id", func(c *echo.Context) error {
		seen <- api.RequestIDFromContext(c.Request().Context())
		return c.NoContent(http.StatusNoContent)
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	uuidRE := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

	tests := []struct {
		name, sent string
		echoed     bool
	}{
		{"absent", "", false},
		{"plausible", "trace-01:abc.DEF_9", true},
		{"log injection", "abc\",\"level\":\"ERROR", false},
		{"too long", strings.Repeat("a", 129), false},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/test/id", nil)
		if tt.sent != "" {
			req.Header.Set("X-Request-Id", tt.sent)
		}
		resp, _ := do(t, srv.Client(), req)
		got := resp.Header.Get("X-Request-Id")
		switch {
		case tt.echoed && got != tt.sent:
			t.Errorf("%s: X-Request-Id %q, want the client's %q", tt.name, got, tt.sent)
		case !tt.echoed && !uuidRE.MatchString(got):
			t.Errorf("%s: X-Request-Id %q, want a generated UUID", tt.name, got)
		}
		if ctxID := <-seen; ctxID != got {
			t.Errorf("%s: request context carries %q, response says %q", tt.name, ctxID, got)
		}
	}
}

func TestSecurityHeadersOnEveryResponse(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	c := apitest.New(t, s.Handler())

	for _, tt := range []struct {
		path    string
		noStore bool
	}{
		{"/health/live", false},
		{"/health", false},
		{"/metrics", false},
		{"/nope", false},
		{"/api/v1/openapi.json", true},
		{"/api/v1/nope", true},
	} {
		r := c.Do(http.MethodGet, tt.path, nil)
		for k, want := range map[string]string{
			"X-Content-Type-Options":  "nosniff",
			"X-Frame-Options":         "DENY",
			"Referrer-Policy":         "no-referrer",
			"Content-Security-Policy": api.APIContentSecurityPolicy,
		} {
			if got := r.Header.Get(k); got != want {
				t.Errorf("%s (%d): %s = %q, want %q", tt.path, r.Status, k, got, want)
			}
		}
		if r.Header.Get("X-Request-Id") == "" {
			t.Errorf("%s: no X-Request-Id", tt.path)
		}
		if got := r.Header.Get("Cache-Control") == "no-store"; got != tt.noStore {
			t.Errorf("%s: Cache-Control %q, want no-store: %v", tt.path, r.Header.Get("Cache-Control"), tt.noStore)
		}
		if r.Header.Get("Strict-Transport-Security") != "" {
			t.Errorf("%s: HSTS sent over plain HTTP", tt.path)
		}
	}
	// Behind a TLS-terminating proxy on a private address (Traefik in the
	// compose stack), HSTS is sent.
	r := c.Do(http.MethodGet, "/health/live", nil, http.Header{"X-Forwarded-Proto": {"https"}})
	if got := r.Header.Get("Strict-Transport-Security"); !strings.HasPrefix(got, "max-age=") {
		t.Errorf("HSTS over proxied TLS = %q, want max-age", got)
	}
}

func TestMetricsCountRequestsByRouteTemplate(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{Version: "1.2.3"})
	s.API().GET("/test/users/:id", func(c *echo.Context) error { return c.NoContent(http.StatusNoContent) })
	c := apitest.New(t, s.Handler())
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	c.Do(http.MethodGet, "/health/live", nil)
	c.Do(http.MethodGet, "/scanner/probe/1", nil)
	for _, id := range []string{"a", "b"} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/test/users/"+id, nil)
		do(t, srv.Client(), req)
	}

	r := c.Do(http.MethodGet, "/metrics", nil)
	body := string(r.Body)
	for _, want := range []string{
		`mana_http_requests_total{method="GET",route="/health/live",status="200"} 1`,
		`mana_http_requests_total{method="GET",route="unmatched",status="404"} 1`,
		`mana_http_requests_total{method="GET",route="/api/v1/test/users/:id",status="204"} 2`,
		`mana_http_request_duration_seconds_count{method="GET",route="/health/live"} 1`,
		`mana_build_info{version="1.2.3"} 1`,
		"go_goroutines", // the server's own registry has the Go collector
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, "scanner") {
		t.Error("an unmatched path leaked into a metric label")
	}
}

func TestMetricsUseTheGivenRegistry(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	// Two servers on one registry (tests, or an in-process restart) must
	// not panic on duplicate registration.
	newServer(t, api.Config{Registry: reg})
	s, _ := newServer(t, api.Config{Registry: reg})
	if s.Registry() != reg {
		t.Fatal("Registry() is not the registry passed in")
	}
	c := apitest.New(t, s.Handler())
	c.Do(http.MethodGet, "/health/live", nil)

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range families {
		if f.GetName() == "go_goroutines" {
			t.Error("the Go collector was added to a registry passed in")
		}
		if f.GetName() == "mana_http_requests_total" {
			found = true
		}
	}
	if !found {
		t.Error("mana_http_requests_total is not on the given registry")
	}
}

func TestRequestLogHasNoQueryPathOrBody(t *testing.T) {
	t.Parallel()
	s, logs := newServer(t, api.Config{})
	s.API().POST("/test/users/:email", func(c *echo.Context) error {
		_, _ = io.Copy(io.Discard, c.Request().Body)
		return c.NoContent(http.StatusNoContent)
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/v1/test/users/alice@example.com?token=tok-SECRET",
		strings.NewReader(`{"password":"pw-SECRET"}`))
	req.Header.Set("Authorization", "Bearer bearer-SECRET")
	req.Header.Set("X-Request-Id", "req-log-1")
	do(t, srv.Client(), req)

	recs := logs.lines(t, "http request")
	if len(recs) != 1 {
		t.Fatalf("got %d request log lines, want 1:\n%s", len(recs), logs)
	}
	rec := recs[0]
	if rec["method"] != "POST" || rec["route"] != "/api/v1/test/users/:email" ||
		rec["status"] != float64(204) || rec["request_id"] != "req-log-1" {
		t.Errorf("request log = %v", rec)
	}
	if _, ok := rec["duration_ms"].(float64); !ok {
		t.Errorf("request log has no duration: %v", rec)
	}
	for _, leak := range []string{"SECRET", "alice"} {
		if strings.Contains(logs.String(), leak) {
			t.Errorf("log leaks %q:\n%s", leak, logs)
		}
	}
}

func TestEchoErrorsMapToDomainCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err    error
		status int
		code   domain.Code
	}{
		{echo.ErrBadRequest, 400, domain.CodeValidationFailed},
		{echo.NewHTTPError(http.StatusBadRequest, "Unmarshal type error: offset=17 internal detail"), 400, domain.CodeValidationFailed},
		{echo.ErrUnauthorized, 401, domain.CodeUnauthorized},
		{echo.ErrNotFound, 404, domain.CodeNotFound},
		{echo.ErrStatusRequestEntityTooLarge, 413, domain.CodePayloadTooLarge},
		{echo.ErrUnsupportedMediaType, 415, domain.CodeUnsupportedMediaType},
		{echo.ErrTooManyRequests, 429, domain.CodeRateLimited},
		{echo.NewHTTPError(http.StatusTeapot, "internal detail"), 400, domain.CodeValidationFailed},
		{echo.ErrBadGateway, 500, domain.CodeInternal},
		{&http.MaxBytesError{Limit: 10}, 413, domain.CodePayloadTooLarge},
	}
	s, _ := newServer(t, api.Config{})
	s.API().GET("/test/echo-err/:i", func(c *echo.Context) error {
		i, err := strconv.Atoi(c.Param("i"))
		if err != nil {
			return err
		}
		return tests[i].err
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	for i, tt := range tests {
		path := fmt.Sprintf("/api/v1/test/echo-err/%d", i)
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		resp, body := do(t, srv.Client(), req)
		if resp.StatusCode != tt.status {
			t.Errorf("%v: status %d, want %d", tt.err, resp.StatusCode, tt.status)
			continue
		}
		checkEnvelope(t, body, tt.status, tt.code, path)
		if strings.Contains(string(body), "internal detail") {
			t.Errorf("%v: Echo's message reached the client: %s", tt.err, body)
		}
	}
}

// TestUnavailableDependency: an error marked domain.ErrUnavailable (the
// database down) is 503 UNAVAILABLE with Retry-After, never 500, and is
// logged for operators without its cause reaching the client.
func TestUnavailableDependency(t *testing.T) {
	t.Parallel()
	s, logs := newServer(t, api.Config{})
	cause := errors.New("dial tcp 10.1.2.3:5432: connection refused")
	s.API().POST("/test/down", func(c *echo.Context) error {
		return fmt.Errorf("begin: %w", fmt.Errorf("%w: %w", domain.ErrUnavailable, cause))
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/v1/test/down", nil)
	resp, body := do(t, srv.Client(), req)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("status %d Retry-After %q, want 503 with Retry-After 1", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	env := checkEnvelope(t, body, http.StatusServiceUnavailable, domain.CodeUnavailable, "/api/v1/test/down")
	if strings.Contains(string(body), "10.1.2.3") {
		t.Errorf("the cause reached the client: %s (%s)", body, env.Message)
	}
	if n := len(logs.lines(t, "request failed")); n != 1 {
		t.Errorf("logged %d failures, want 1", n)
	}
}
