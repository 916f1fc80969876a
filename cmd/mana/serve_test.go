package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/internal/pgtest"
	"github.com/manacore/mana/projections"
)

// startupTimeout bounds how long serve may take to listen, and shutdown
// how long it may take to return once cancelled.
const (
	startupTimeout  = time.Minute
	shutdownTimeout = 30 * time.Second
)

// TestServeEndToEnd runs `mana serve --port 0` against a cloned database,
// talks to it over TCP through an OpenAPI-validating client, and stops it
// by cancelling the context.
func TestServeEndToEnd(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)
	dataDir := t.TempDir()
	vars := map[string]string{
		"DATABASE_URL": dsn,
		"DATA_DIR":     dataDir,
		"LOG_LEVEL":    "debug",
	}

	ctx, cancel := context.WithCancel(context.Background())
	stderr := newLogWriter()
	var stdout bytes.Buffer // only run's goroutine writes it until done
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"serve", "--port", "0"}, envOf(vars), &stdout, stderr) }()
	stopped := false
	t.Cleanup(func() {
		// On an early failure, stop the server before the database goes.
		cancel()
		if !stopped {
			select {
			case <-done:
			case <-time.After(shutdownTimeout):
				t.Errorf("serve did not return within %v of cancellation", shutdownTimeout)
			}
		}
	})

	var addr string
	startup := time.NewTimer(startupTimeout)
	defer startup.Stop()
	select {
	case addr = <-stderr.addr:
	case code := <-done:
		stopped = true
		t.Fatalf("serve exited with %d before listening; stderr:\n%s", code, stderr)
	case <-startup.C:
		t.Fatalf("serve did not log \"listening\" within %v; stderr:\n%s", startupTimeout, stderr)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listening addr %q: %v", addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p == 0 {
		t.Fatalf("listening addr %q has no real port", addr)
	}
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", port)}

	// A reverse proxy to the real server lets apitest validate every
	// response it sends against the OpenAPI document.
	c := apitest.New(t, &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }})

	if r := c.Do(http.MethodGet, "/health/live", nil); r.Status != http.StatusOK {
		t.Errorf("GET /health/live = %d %s", r.Status, r.Body)
	}

	r := c.Do(http.MethodGet, "/health/ready", nil)
	var ready map[string]string
	r.JSON(t, &ready)
	if r.Status != http.StatusOK || ready["status"] != "ready" {
		t.Errorf("GET /health/ready = %d %s, want 200 {\"status\":\"ready\"}", r.Status, r.Body)
	}

	r = c.Do(http.MethodGet, "/health", nil)
	var report struct {
		Status string               `json:"status"`
		Checks map[string]api.Check `json:"checks"`
	}
	r.JSON(t, &report)
	if r.Status != http.StatusOK || report.Status != api.CheckOK {
		t.Errorf("GET /health = %d %s, want 200 status ok", r.Status, r.Body)
	}
	want := []string{"postgres", "migrations", "feed", "nats", "relay"}
	for _, p := range projections.All() {
		want = append(want, "projection:"+p.Name())
	}
	for _, name := range want {
		if got := report.Checks[name]; got.Status != api.CheckOK {
			t.Errorf("/health check %s = %+v, want ok (body %s)", name, got, r.Body)
		}
	}
	if len(report.Checks) != len(want) {
		t.Errorf("/health checks = %v, want exactly %v", report.Checks, want)
	}

	r = c.Do(http.MethodGet, "/api/v1/openapi.json", nil)
	var doc map[string]any
	r.JSON(t, &doc)
	if r.Status != http.StatusOK || doc["openapi"] != "3.1.0" {
		t.Errorf("GET /api/v1/openapi.json = %d, openapi %v; want 200 and 3.1.0", r.Status, doc["openapi"])
	}

	r = c.Do(http.MethodGet, "/api/v1/no-such-route", nil)
	var env api.Envelope
	r.JSON(t, &env)
	if r.Status != http.StatusNotFound || env.StatusCode != http.StatusNotFound || env.Code != "NOT_FOUND" ||
		env.Path != "/api/v1/no-such-route" || env.Message == "" || env.Timestamp == "" {
		t.Errorf("GET unknown route = %d %s, want the 404 NOT_FOUND envelope", r.Status, r.Body)
	}

	// Scraped last, so the requests above are counted.
	r = c.Do(http.MethodGet, "/metrics", nil)
	metrics := string(r.Body)
	if r.Status != http.StatusOK {
		t.Errorf("GET /metrics = %d", r.Status)
	}
	for _, name := range []string{"mana_http_requests_total", "mana_feed_stall_seconds"} {
		if !strings.Contains(metrics, "\n"+name) {
			t.Errorf("/metrics lacks %s:\n%s", name, metrics)
		}
	}
	// -1 would mean the gauge could not read the stall.
	if stall, ok := metricValue(metrics, "mana_feed_stall_seconds"); !ok || stall < 0 {
		t.Errorf("mana_feed_stall_seconds = %v (found %v), want a non-negative age", stall, ok)
	}
	for _, sample := range []string{
		`mana_http_requests_total{method="GET",route="/health/ready",status="200"} 1`,
		`mana_http_requests_total{method="GET",route="unmatched",status="404"} 1`,
	} {
		if !strings.Contains(metrics, sample) {
			t.Errorf("/metrics lacks %s:\n%s", sample, metrics)
		}
	}

	// serve seeded the default packages.
	if n := countEvents(t, dsn, "package.created"); n != 4 {
		t.Errorf("package.created events = %d, want 4", n)
	}

	// Dev secrets were generated in DATA_DIR/secrets, private to the owner.
	secrets := filepath.Join(dataDir, "secrets")
	if fi, err := os.Stat(secrets); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("secrets directory: %v, mode %v; want 0700", err, fi)
	}
	for _, name := range []string{"data_kek", "email_index_key", "ledger_signing_key"} {
		path := filepath.Join(secrets, name)
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("dev secret %s: %v", name, err)
			continue
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("dev secret %s has mode %v, want 0600", name, fi.Mode().Perm())
		}
		raw, _ := os.ReadFile(path)
		if key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw))); err != nil || len(key) != 32 {
			t.Errorf("dev secret %s is not 32 bytes of base64 (%d bytes, %v)", name, len(key), err)
		}
	}
	if entries, err := os.ReadDir(secrets); err != nil || len(entries) != 3 {
		t.Errorf("secrets directory holds %d entries (%v), want exactly the 3 keys (no temp files)", len(entries), err)
	}

	// Cancelling the context is SIGTERM: run returns 0 and logs "stopped".
	cancel()
	select {
	case code := <-done:
		stopped = true
		if code != 0 {
			t.Errorf("serve exited with %d after cancellation, want 0; stderr:\n%s", code, stderr)
		}
	case <-time.After(shutdownTimeout):
		t.Fatalf("serve did not return within %v of cancellation", shutdownTimeout)
	}
	msgs := logMessages(stderr.String())
	for _, want := range []string{"listening", "shutting down", "stopped"} {
		if !slices.Contains(msgs, want) {
			t.Errorf("log lacks %q; messages %q", want, msgs)
		}
	}
	if stdout.Len() != 0 {
		t.Errorf("serve wrote to stdout: %q", stdout.String())
	}
	// The listener is closed.
	resp, err := http.Get(target.String() + "/health/live")
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		t.Errorf("server still answers after run returned: %d", resp.StatusCode)
	}
}

// metricValue returns the value of an unlabelled sample in a Prometheus
// text exposition.
func metricValue(text, name string) (float64, bool) {
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// TestServeRefusesBusyPort proves a listen failure ends serve with exit 1
// and a one-line reason, instead of hanging or logging "listening".
func TestServeRefusesBusyPort(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	res := runCmd(t, map[string]string{"DATABASE_URL": pgtest.NewDB(t), "DATA_DIR": t.TempDir()}, "serve", "--port", port)
	if res.code != 1 {
		t.Fatalf("serve on a busy port exited %d, want 1; stderr %q", res.code, res.stderr)
	}
	last := lines(res.stderr)
	if len(last) == 0 || !strings.HasPrefix(last[len(last)-1], "mana serve: listen on port "+port) {
		t.Errorf("stderr %q, want a last line naming the port", res.stderr)
	}
	if slices.Contains(logMessages(res.stderr), "listening") {
		t.Errorf("serve logged listening on a busy port")
	}
}
