package api_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
)

// fixedNow is the clock of every test server, so envelopes are predictable.
var fixedNow = time.Date(2026, 1, 2, 3, 4, 5, 678_000_000, time.UTC)

const fixedTimestamp = "2026-01-02T03:04:05.678Z"

// logBuffer collects a server's JSON log lines; the server writes to it from
// its request goroutines while the test reads it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the decoded log records whose msg is msg.
func (b *logBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// newServer builds a Server with a fixed clock and a captured debug log.
// cfg's zero fields get those defaults.
func newServer(t *testing.T, cfg api.Config) (*api.Server, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if cfg.Clock == nil {
		cfg.Clock = domain.ClockFunc(func() time.Time { return fixedNow })
	}
	return api.New(cfg), logs
}

// decodeEnvelope decodes an error body strictly: an unexpected field in the
// envelope is as much a failure as a missing one.
func decodeEnvelope(t *testing.T, body []byte) api.Envelope {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var env api.Envelope
	if err := dec.Decode(&env); err != nil {
		t.Fatalf("body is not an error envelope: %v\n%s", err, body)
	}
	return env
}

// checkEnvelope asserts the parts of an envelope every error shares.
func checkEnvelope(t *testing.T, body []byte, status int, code domain.Code, path string) api.Envelope {
	t.Helper()
	env := decodeEnvelope(t, body)
	if env.StatusCode != status || env.Code != string(code) || env.Path != path || env.Timestamp != fixedTimestamp {
		t.Errorf("envelope = %+v, want statusCode %d, error %s, path %s, timestamp %s",
			env, status, code, path, fixedTimestamp)
	}
	if env.Message == "" {
		t.Errorf("envelope has no message: %s", body)
	}
	return env
}

// do sends a request to h in-process through a real HTTP server and returns
// the response with its body read.
func do(t *testing.T, client *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, buf.Bytes()
}
