package api_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/domain"
)

// fakeHealth is a HealthChecker whose answers the test sets.
type fakeHealth struct {
	readyErr atomic.Pointer[error]
	checks   map[string]api.Check
	sawCtx   atomic.Bool
}

func (f *fakeHealth) Ready(ctx context.Context) error {
	if _, ok := ctx.Deadline(); ok {
		f.sawCtx.Store(true)
	}
	if p := f.readyErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (f *fakeHealth) Checks(context.Context) map[string]api.Check { return f.checks }

func (f *fakeHealth) failReady(err error) { f.readyErr.Store(&err) }

func TestLive(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	s.SetReady(false) // liveness does not depend on readiness
	r := apitest.New(t, s.Handler()).Do(http.MethodGet, "/health/live", nil)
	if r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != `{"status":"ok"}` {
		t.Errorf("got %d %s", r.Status, r.Body)
	}
}

func TestReadyFollowsCheckerAndSetReady(t *testing.T) {
	t.Parallel()
	h := &fakeHealth{}
	s, logs := newServer(t, api.Config{Health: h})
	c := apitest.New(t, s.Handler())

	r := c.Do(http.MethodGet, "/health/ready", nil)
	if r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != `{"status":"ready"}` {
		t.Fatalf("ready checker: got %d %s", r.Status, r.Body)
	}
	if !h.sawCtx.Load() {
		t.Error("Ready got a context without a deadline")
	}

	h.failReady(errors.New("dial postgres://db.internal:5432: refused"))
	r = c.Do(http.MethodGet, "/health/ready", nil)
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("failing checker: status %d, want 503", r.Status)
	}
	checkEnvelope(t, r.Body, http.StatusServiceUnavailable, domain.CodeUnavailable, "/health/ready")
	if strings.Contains(string(r.Body), "db.internal") {
		t.Errorf("503 leaks the cause: %s", r.Body)
	}
	if !strings.Contains(logs.String(), "db.internal") {
		t.Error("the cause of unreadiness was not logged")
	}

	h.readyErr.Store(nil)
	s.SetReady(false)
	r = c.Do(http.MethodGet, "/health/ready", nil)
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("SetReady(false): status %d, want 503", r.Status)
	}
	checkEnvelope(t, r.Body, http.StatusServiceUnavailable, domain.CodeUnavailable, "/health/ready")

	s.SetReady(true)
	if r = c.Do(http.MethodGet, "/health/ready", nil); r.Status != http.StatusOK {
		t.Errorf("SetReady(true): status %d, want 200", r.Status)
	}
}

func TestReadyWithoutChecker(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	if r := apitest.New(t, s.Handler()).Do(http.MethodGet, "/health/ready", nil); r.Status != http.StatusOK {
		t.Errorf("status %d, want 200", r.Status)
	}
}

func TestHealthReport(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		checks map[string]api.Check
		status string
	}{
		{"no checker", nil, "ok"},
		{"all ok", map[string]api.Check{"nats": {Status: "ok"}, "relay": {Status: "ok"}}, "ok"},
		{"one degraded", map[string]api.Check{"nats": {Status: "ok"}, "projection:balances": {Status: "degraded", Detail: "lag 12s"}}, "degraded"},
		{"one down", map[string]api.Check{"nats": {Status: "down", Detail: "no connection"}}, "degraded"},
	}
	for _, tt := range tests {
		cfg := api.Config{Version: "1.2.3"}
		if tt.checks != nil {
			h := &fakeHealth{checks: tt.checks}
			h.failReady(errors.New("not ready")) // /health answers 200 regardless
			cfg.Health = h
		}
		s, _ := newServer(t, cfg)
		r := apitest.New(t, s.Handler()).Do(http.MethodGet, "/health", nil)
		if r.Status != http.StatusOK {
			t.Errorf("%s: status %d, want 200", tt.name, r.Status)
			continue
		}
		var got struct {
			Status  string               `json:"status"`
			Version string               `json:"version"`
			Checks  map[string]api.Check `json:"checks"`
		}
		r.JSON(t, &got)
		if got.Status != tt.status || got.Version != "1.2.3" || len(got.Checks) != len(tt.checks) {
			t.Errorf("%s: got %+v, want status %s with %d checks", tt.name, got, tt.status, len(tt.checks))
		}
		for name, want := range tt.checks {
			if got.Checks[name] != want {
				t.Errorf("%s: check %s = %+v, want %+v", tt.name, name, got.Checks[name], want)
			}
		}
	}
}
