package api_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
)

const (
	allowedOrigin = "https://app.example.com"
	refusedOrigin = "https://evil.example.net"
)

// corsHeaders returns the response's Access-Control-* headers.
func corsHeaders(h http.Header) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		if strings.HasPrefix(k, "Access-Control-") {
			out[k] = strings.Join(v, ",")
		}
	}
	return out
}

func TestCORSAllowList(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{CORSOrigins: []string{allowedOrigin, "http://localhost:5173/"}})
	s.API().POST("/test/echo", func(c *echo.Context) error { return c.JSON(http.StatusOK, map[string]bool{"ok": true}) })
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	send := func(method, path, origin string, extra http.Header) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		for k, v := range extra {
			req.Header[k] = v
		}
		resp, _ := do(t, srv.Client(), req)
		return resp
	}
	preflight := http.Header{
		"Access-Control-Request-Method":  {"POST"},
		"Access-Control-Request-Headers": {"authorization,content-type,idempotency-key"},
	}

	t.Run("allowed preflight", func(t *testing.T) {
		for _, origin := range []string{allowedOrigin, "http://localhost:5173"} {
			r := send(http.MethodOptions, "/api/v1/test/echo", origin, preflight)
			if r.StatusCode != http.StatusNoContent {
				t.Errorf("%s: preflight status %d, want 204", origin, r.StatusCode)
			}
			h := r.Header
			if h.Get("Access-Control-Allow-Origin") != origin || h.Get("Access-Control-Allow-Credentials") != "true" {
				t.Errorf("%s: preflight CORS headers %v", origin, corsHeaders(h))
			}
			if m := h.Get("Access-Control-Allow-Methods"); !strings.Contains(m, "POST") {
				t.Errorf("%s: Allow-Methods %q lacks POST", origin, m)
			}
			for _, want := range []string{"Authorization", "Content-Type", "Idempotency-Key"} {
				if !strings.Contains(h.Get("Access-Control-Allow-Headers"), want) {
					t.Errorf("%s: Allow-Headers %q lacks %s", origin, h.Get("Access-Control-Allow-Headers"), want)
				}
			}
			if strings.Contains(h.Get("Access-Control-Allow-Headers"), "X-Service-Key") {
				t.Errorf("browsers must not be invited to send service keys")
			}
			if h.Get("Access-Control-Max-Age") == "" {
				t.Error("preflight answer has no Max-Age")
			}
			if !strings.Contains(strings.Join(h.Values("Vary"), ","), "Origin") {
				t.Errorf("Vary = %v, want Origin", h.Values("Vary"))
			}
		}
	})
	t.Run("allowed request", func(t *testing.T) {
		r := send(http.MethodPost, "/api/v1/test/echo", allowedOrigin, nil)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("status %d", r.StatusCode)
		}
		h := r.Header
		if h.Get("Access-Control-Allow-Origin") != allowedOrigin || h.Get("Access-Control-Allow-Credentials") != "true" {
			t.Errorf("CORS headers %v", corsHeaders(h))
		}
		if !strings.Contains(h.Get("Access-Control-Expose-Headers"), "X-Request-Id") {
			t.Errorf("Expose-Headers %q lacks X-Request-Id", h.Get("Access-Control-Expose-Headers"))
		}
		// Errors are readable by the page too.
		r = send(http.MethodGet, "/api/v1/nope", allowedOrigin, nil)
		if r.StatusCode != http.StatusNotFound || r.Header.Get("Access-Control-Allow-Origin") != allowedOrigin {
			t.Errorf("404 for an allowed origin: %d %v", r.StatusCode, corsHeaders(r.Header))
		}
	})
	t.Run("refused origin", func(t *testing.T) {
		for _, r := range []*http.Response{
			send(http.MethodOptions, "/api/v1/test/echo", refusedOrigin, preflight),
			send(http.MethodPost, "/api/v1/test/echo", refusedOrigin, nil),
			// A listed origin's look-alikes are other origins.
			send(http.MethodPost, "/api/v1/test/echo", "http://app.example.com", nil),
			send(http.MethodPost, "/api/v1/test/echo", allowedOrigin+".evil.net", nil),
			send(http.MethodPost, "/api/v1/test/echo", "null", nil),
		} {
			if h := corsHeaders(r.Header); len(h) != 0 {
				t.Errorf("%s %s: refused origin got %v", r.Request.Method, r.Request.Header.Get("Origin"), h)
			}
			if !strings.Contains(strings.Join(r.Header.Values("Vary"), ","), "Origin") {
				t.Errorf("Vary = %v, want Origin", r.Header.Values("Vary"))
			}
		}
	})
	t.Run("no origin", func(t *testing.T) {
		r := send(http.MethodPost, "/api/v1/test/echo", "", nil)
		if r.StatusCode != http.StatusOK || len(corsHeaders(r.Header)) != 0 {
			t.Errorf("same-origin request: %d %v", r.StatusCode, corsHeaders(r.Header))
		}
	})
}

func TestCORSWithoutAllowListAllowsNoOrigin(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest(http.MethodOptions, srv.URL+"/api/v1/openapi.json", nil)
	req.Header.Set("Origin", allowedOrigin)
	req.Header.Set("Access-Control-Request-Method", "GET")
	resp, _ := do(t, srv.Client(), req)
	if h := corsHeaders(resp.Header); len(h) != 0 {
		t.Errorf("without CORS_ORIGINS a preflight got %v", h)
	}
}

func TestValidateCORSOrigins(t *testing.T) {
	t.Parallel()
	for _, ok := range [][]string{nil, {"https://app.example.com"}, {"http://localhost:5173", "https://a.example:8443/"}} {
		if err := api.ValidateCORSOrigins(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"*", "app.example.com", "https://", "https://a.example/path", "https://a.example?q=1",
		"https://user@a.example", "ftp://a.example", "javascript:alert(1)"} {
		if err := api.ValidateCORSOrigins([]string{bad}); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("New accepted an invalid origin")
		}
	}()
	api.New(api.Config{CORSOrigins: []string{"*"}})
}

func TestContentSecurityPolicy(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	s.Echo().GET("/test/page", func(c *echo.Context) error { return c.HTML(http.StatusOK, "<p>hi</p>") })
	s.Echo().GET("/test/own", func(c *echo.Context) error {
		c.Response().Header().Set("Content-Security-Policy", "default-src 'self'")
		return c.HTML(http.StatusOK, "<p>own</p>")
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	get := func(path string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		resp, _ := do(t, srv.Client(), req)
		return resp
	}
	for _, path := range []string{"/health/live", "/api/v1/openapi.json", "/api/v1/nope", "/metrics"} {
		if got := get(path).Header.Get("Content-Security-Policy"); got != api.APIContentSecurityPolicy {
			t.Errorf("%s: CSP %q, want %q", path, got, api.APIContentSecurityPolicy)
		}
	}
	csp := get("/test/page").Header.Get("Content-Security-Policy")
	if csp != api.HTMLContentSecurityPolicy || !strings.Contains(csp, "script-src 'self'") ||
		strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("HTML CSP = %q", csp)
	}
	if got := get("/test/own").Header.Get("Content-Security-Policy"); got != "default-src 'self'" {
		t.Errorf("a handler's own CSP was replaced: %q", got)
	}
}

func TestRequestTimeoutAnswersUnavailable(t *testing.T) {
	t.Parallel()
	s, logs := newServer(t, api.Config{RequestTimeout: 50 * time.Millisecond})
	s.API().GET("/test/slow", func(c *echo.Context) error {
		select {
		case <-c.Request().Context().Done():
			return errors.Join(errors.New("query balances"), c.Request().Context().Err())
		case <-time.After(10 * time.Second):
			return c.NoContent(http.StatusNoContent)
		}
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/test/slow", nil)
	start := time.Now()
	resp, body := do(t, srv.Client(), req)
	if time.Since(start) > 5*time.Second {
		t.Fatalf("the request took %v", time.Since(start))
	}
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d Retry-After %q, want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	env := checkEnvelope(t, body, http.StatusServiceUnavailable, domain.CodeUnavailable, "/api/v1/test/slow")
	if strings.Contains(env.Message, "query") || strings.Contains(env.Message, "deadline") {
		t.Errorf("the message leaks the cause: %q", env.Message)
	}
	if len(logs.lines(t, "request failed")) != 1 {
		t.Errorf("the timeout was not logged once:\n%s", logs)
	}
	// Without a bound the context has no deadline.
	s2, _ := newServer(t, api.Config{RequestTimeout: -1})
	s2.API().GET("/test/deadline", func(c *echo.Context) error {
		if _, ok := c.Request().Context().Deadline(); ok {
			return errors.New("unexpected deadline")
		}
		return c.NoContent(http.StatusNoContent)
	})
	srv2 := httptest.NewServer(s2.Handler())
	t.Cleanup(srv2.Close)
	req, _ = http.NewRequestWithContext(context.Background(), http.MethodGet, srv2.URL+"/api/v1/test/deadline", nil)
	if resp, body := do(t, srv2.Client(), req); resp.StatusCode != http.StatusNoContent {
		t.Errorf("RequestTimeout -1: %d %s", resp.StatusCode, body)
	}
}

func TestRateLimitedCounter(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	s.RateLimited("login_ip")
	s.RateLimited("login_ip")
	s.RateLimited("register_ip")
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
	_, body := do(t, srv.Client(), req)
	for _, want := range []string{
		`mana_rate_limited_total{policy="login_ip"} 2`,
		`mana_rate_limited_total{policy="register_ip"} 1`,
		// The login and spend counters exist from the start, at zero.
		`mana_logins_total{code="",result="succeeded"} 0`,
		`mana_logins_total{code="INVALID_CREDENTIALS",result="failed"} 0`,
		`mana_credits_spent_total{app="other"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
