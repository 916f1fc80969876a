// Package mailpit runs a real mailpit (github.com/axllent/mailpit, pinned by
// MAILPIT_VERSION in the Makefile and installed into bin/ by `make deps`)
// for tests: an SMTP server on a free loopback port whose mails the test
// reads back through mailpit's REST API (/api/v1/…). It is a test helper;
// the service never imports it.
package mailpit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// startTimeout bounds mailpit's start.
const startTimeout = time.Minute

// Server is one mailpit process, stopped when its test ends.
type Server struct {
	// SMTPAddr is host:port of its SMTP server (no TLS, any or no
	// authentication accepted).
	SMTPAddr string
	// API is the base URL of its HTTP API.
	API string
	t   testing.TB
}

// SMTPURL is the SMTP_URL that delivers to this mailpit.
func (s *Server) SMTPURL() string { return "smtp://" + s.SMTPAddr }

// moduleRoot finds the directory of go.mod above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// install returns bin/mailpit, installing the Makefile's pinned version
// when `make deps` has not (once per test binary).
var install = sync.OnceValues(func() (string, error) {
	if p := os.Getenv("MAILPIT_BIN"); p != "" {
		return p, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, "bin", "mailpit")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`(?m)^MAILPIT_VERSION := (\S+)$`).FindSubmatch(mk)
	if m == nil {
		return "", fmt.Errorf("no MAILPIT_VERSION in the Makefile")
	}
	cmd := exec.Command("go", "install", "github.com/axllent/mailpit@"+string(m[1]))
	cmd.Env = append(os.Environ(), "GOBIN="+filepath.Join(root, "bin"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install mailpit: %v\n%s", err, out)
	}
	return bin, nil
})

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Start runs a mailpit on free loopback ports for t and waits until its API
// answers. It fails t when mailpit cannot be installed or started: the
// mail tests never skip.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := install()
	if err != nil {
		t.Fatalf("mailpit: %v", err)
	}
	var lastErr string
	// A port picked free may be taken before mailpit binds it: retry.
	for attempt := 0; attempt < 5; attempt++ {
		s, errText := start(t, bin)
		if s != nil {
			return s
		}
		lastErr = errText
	}
	t.Fatalf("mailpit did not start: %s", lastErr)
	return nil
}

func start(t testing.TB, bin string) (*Server, string) {
	smtpPort, err := freePort()
	if err != nil {
		return nil, err.Error()
	}
	httpPort, err := freePort()
	if err != nil {
		return nil, err.Error()
	}
	s := &Server{
		SMTPAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(smtpPort)),
		API:      "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort)),
		t:        t,
	}
	var out bytes.Buffer
	cmd := exec.Command(bin,
		"--listen", net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort)),
		"--smtp", s.SMTPAddr,
		"--disable-version-check",
		"--smtp-auth-accept-any", "--smtp-auth-allow-insecure",
		"--database", filepath.Join(t.TempDir(), "mailpit.db"),
		"--max", "5000",
	)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, "start: " + err.Error()
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return nil, "exited: " + out.String()
		default:
		}
		if resp, err := http.Get(s.API + "/api/v1/messages?limit=1"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Cleanup(stop)
				return s, ""
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	return nil, "no answer within " + startTimeout.String() + ": " + out.String()
}

// Address is a mail address as mailpit reports it.
type Address struct {
	Name    string `json:"Name"`
	Address string `json:"Address"`
}

// Summary is one entry of mailpit's message lists.
type Summary struct {
	ID      string    `json:"ID"`
	From    Address   `json:"From"`
	To      []Address `json:"To"`
	Subject string    `json:"Subject"`
	Created time.Time `json:"Created"`
}

// Message is one mail in full.
type Message struct {
	ID        string    `json:"ID"`
	MessageID string    `json:"MessageID"`
	From      Address   `json:"From"`
	To        []Address `json:"To"`
	Subject   string    `json:"Subject"`
	Text      string    `json:"Text"`
	HTML      string    `json:"HTML"`
}

func (s *Server) get(path string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.API+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// To lists the mails received for address, newest first, in full.
func (s *Server) To(address string) []Message {
	s.t.Helper()
	var list struct {
		Messages []Summary `json:"messages"`
	}
	q := url.Values{"query": {"to:" + strconv.Quote(address)}, "limit": {"500"}}
	if err := s.get("/api/v1/search?"+q.Encode(), &list); err != nil {
		s.t.Fatalf("mailpit search: %v", err)
	}
	var out []Message
	for _, m := range list.Messages {
		// The search matches substrings; keep exact recipients.
		exact := false
		for _, a := range m.To {
			exact = exact || strings.EqualFold(a.Address, address)
		}
		if !exact {
			continue
		}
		var full Message
		if err := s.get("/api/v1/message/"+url.PathEscape(m.ID), &full); err != nil {
			s.t.Fatalf("mailpit message %s: %v", m.ID, err)
		}
		out = append(out, full)
	}
	return out
}

// Count is how many mails address has received.
func (s *Server) Count(address string) int { return len(s.To(address)) }

// Wait polls until address has received at least n mails and returns them,
// newest first; it fails the test after timeout.
func (s *Server) Wait(address string, n int, timeout time.Duration) []Message {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msgs := s.To(address)
		if len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("mailpit: %d mails for %s after %v, want %d", len(msgs), address, timeout, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// DeleteAll removes every stored mail.
func (s *Server) DeleteAll() {
	s.t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, s.API+"/api/v1/messages", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("mailpit delete: %v", err)
	}
	resp.Body.Close()
}
