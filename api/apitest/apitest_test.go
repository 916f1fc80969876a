package apitest_test

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/apitest"
)

// recorder is a testing.TB that records failures instead of failing, so a
// test can assert that apitest complains. Everything else, Cleanup
// included, goes to the real test.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recorder) Fatalf(format string, args ...any) { r.Errorf(format, args...) }

func (r *recorder) failures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errors...)
}

// fixed answers every request with the given status, headers and body.
func fixed(status int, headers map[string]string, body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range headers {
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	})
}

var jsonWithID = map[string]string{"Content-Type": "application/json", "X-Request-Id": "req-1"}

const envelope404 = `{"statusCode":404,"error":"NOT_FOUND","message":"No.","timestamp":"2026-01-02T03:04:05.678Z","path":"/x"}`

func TestClientReportsResponsesThatBreakTheDocument(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler http.Handler
		method  string
		path    string
		want    string // a fragment of the expected failure
	}{
		{"wrong value", fixed(200, jsonWithID, `{"status":"nope"}`), "GET", "/health/live", "does not match"},
		{"extra property", fixed(200, jsonWithID, `{"status":"ok","extra":1}`), "GET", "/health/live", "does not match"},
		{"missing property", fixed(200, jsonWithID, `{}`), "GET", "/health/ready", "does not match"},
		{"not JSON", fixed(200, jsonWithID, `status: ok`), "GET", "/health/live", "does not match"},
		{"wrong content type", fixed(200, map[string]string{"Content-Type": "text/html", "X-Request-Id": "r"}, `{"status":"ok"}`), "GET", "/health/live", "does not match"},
		{"missing declared header", fixed(200, map[string]string{"Content-Type": "application/json"}, `{"status":"ok"}`), "GET", "/health/live", "X-Request-Id"},
		{"undocumented status", fixed(418, jsonWithID, `{"status":"ok"}`), "GET", "/health/live", "status is not supported"},
		{"undocumented route served", fixed(200, jsonWithID, `{}`), "GET", "/api/v1/secret-admin", "not in the document"},
		{"undocumented method served", fixed(200, jsonWithID, `{}`), "POST", "/health/live", "not in the document"},
		{"404 without envelope", fixed(404, jsonWithID, `{"message":"Not Found"}`), "GET", "/nope", "Error schema"},
		{"error envelope with a bad code", fixed(503, jsonWithID, strings.Replace(envelope404, "NOT_FOUND", "OOPS", 1)), "GET", "/health/ready", "does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{TB: t}
			c := apitest.New(rec, tt.handler)
			c.Do(tt.method, tt.path, nil)
			got := rec.failures()
			if len(got) != 1 {
				t.Fatalf("recorded %d failures, want 1: %q", len(got), got)
			}
			if !strings.Contains(got[0], tt.want) || !strings.Contains(got[0], tt.path) {
				t.Errorf("failure %q does not mention %q and the path", got[0], tt.want)
			}
		})
	}
}

func TestClientAcceptsResponsesThatMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler http.Handler
		method  string
		path    string
	}{
		{"documented", fixed(200, jsonWithID, `{"status":"ok"}`), "GET", "/health/live"},
		{"documented error", fixed(503, jsonWithID, strings.Replace(envelope404, "404", "503", 1)), "GET", "/health/ready"},
		{"unknown route answered 404", fixed(404, jsonWithID, envelope404), "GET", "/nope"},
		{"unknown method answered 405", fixed(405, jsonWithID, strings.Replace(envelope404, "404", "405", 1)), "DELETE", "/health"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{TB: t}
			apitest.New(rec, tt.handler).Do(tt.method, tt.path, nil)
			if got := rec.failures(); len(got) != 0 {
				t.Errorf("unexpected failures: %q", got)
			}
		})
	}
}

// TestRealServerMatchesTheDocument drives every route the api package
// serves through the validating client.
func TestRealServerMatchesTheDocument(t *testing.T) {
	t.Parallel()
	s := api.New(api.Config{Version: "test", Logger: slog.New(slog.DiscardHandler)})
	rec := &recorder{TB: t}
	c := apitest.New(rec, s.Handler())
	for _, path := range []string{"/health/live", "/health/ready", "/health", "/metrics", "/api/v1/openapi.json", "/nope"} {
		c.Do(http.MethodGet, path, nil)
	}
	c.Do(http.MethodPost, "/health", map[string]string{"a": "b"})
	s.SetReady(false)
	if r := c.Do(http.MethodGet, "/health/ready", nil); r.Status != http.StatusServiceUnavailable {
		t.Errorf("status %d, want 503", r.Status)
	}
	if got := rec.failures(); len(got) != 0 {
		t.Errorf("the server breaks its own document: %q", got)
	}
}

func TestDoSendsBodyAndHeaders(t *testing.T) {
	t.Parallel()
	seen := make(chan http.Header, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Request-Id", "r")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	c := apitest.New(t, h)
	r := c.Do(http.MethodGet, "/health/live", map[string]int{"n": 1},
		http.Header{"Content-Type": {"application/json; charset=utf-8"}, "X-Request-Id": {"mine"}})
	got := <-seen
	if got.Get("Content-Type") != "application/json; charset=utf-8" || got.Get("X-Request-Id") != "mine" {
		t.Errorf("request headers = %v", got)
	}
	var body struct{ Status string }
	r.JSON(t, &body)
	if body.Status != "ok" {
		t.Errorf("JSON decoded %+v", body)
	}
}
