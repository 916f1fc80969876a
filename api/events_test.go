package api_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
)

// roleIdentity authenticates the token "role:<role>" as a user of that role.
type roleIdentity struct{ domain.Identity }

func (roleIdentity) Authenticate(_ context.Context, token string) (domain.Principal, domain.Claims, error) {
	role, ok := strings.CutPrefix(token, "role:")
	if !ok {
		return domain.Principal{}, domain.Claims{}, domain.Errorf(domain.CodeTokenInvalid, "bad token")
	}
	return domain.Principal{UserID: uuid.New(), Role: role}, domain.Claims{}, nil
}

// fakeLog serves n events "1-1" … "1-n"; with failAt > 0, Lines fails
// after emitting failAt lines; with short, it emits one line fewer than
// Page counted.
type fakeLog struct {
	n, failAt int
	short     bool

	mu    sync.Mutex
	pages []string // after|types|limit of each Page call
}

func (f *fakeLog) Page(_ context.Context, after string, types []string, limit int) (string, int, error) {
	f.mu.Lock()
	f.pages = append(f.pages, fmt.Sprintf("%s|%s|%d", after, strings.Join(types, ","), limit))
	f.mu.Unlock()
	if after == "" || after == "0" {
		after = "0-0"
	}
	n := min(f.n, limit)
	if n == 0 {
		return after, 0, nil
	}
	return fmt.Sprintf("1-%d", n), n, nil
}

func (f *fakeLog) Lines(_ context.Context, _, end string, _ []string, emit func([]byte) error) error {
	var n int
	fmt.Sscanf(end, "1-%d", &n)
	if f.short {
		n--
	}
	for i := 1; i <= n; i++ {
		if f.failAt > 0 && i > f.failAt {
			return errors.New("database went away")
		}
		if err := emit([]byte(fmt.Sprintf(`{"cursor":"1-%d"}`, i))); err != nil {
			return err
		}
	}
	return nil
}

func eventsServer(t *testing.T, log *fakeLog) (*httptest.Server, *logBuffer) {
	t.Helper()
	s, logs := newServer(t, api.Config{})
	s.SetEvents(log, roleIdentity{})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv, logs
}

func getAs(t *testing.T, srv *httptest.Server, role, query string) (*http.Response, []byte, error) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/events"+query, nil)
	if role != "" {
		req.Header.Set("Authorization", "Bearer role:"+role)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func TestEventsRolesAndParameters(t *testing.T) {
	t.Parallel()
	log := &fakeLog{n: 3}
	srv, _ := eventsServer(t, log)

	for _, tc := range []struct {
		role, query string
		status      int
		code        domain.Code
	}{
		{"", "", http.StatusUnauthorized, domain.CodeUnauthorized},
		{"user", "", http.StatusForbidden, domain.CodeForbidden},
		{"admin", "?limit=0", http.StatusBadRequest, domain.CodeValidationFailed},
		{"admin", "?limit=10001", http.StatusBadRequest, domain.CodeValidationFailed},
		{"admin", "?limit=", http.StatusBadRequest, domain.CodeValidationFailed},
		{"admin", "?after=1", http.StatusBadRequest, domain.CodeValidationFailed},
		{"admin", "?after=x-1", http.StatusBadRequest, domain.CodeValidationFailed},
		{"auditor", "?types=credit.spent,nope.nope", http.StatusBadRequest, domain.CodeValidationFailed},
	} {
		resp, body, err := getAs(t, srv, tc.role, tc.query)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s: %d %s", tc.role, tc.query, resp.StatusCode, body)
			continue
		}
		checkEnvelope(t, body, tc.status, tc.code, "/api/v1/events")
	}

	for _, role := range []string{"admin", "auditor"} {
		resp, body, err := getAs(t, srv, role, "?after=7-9&types=credit.spent,user.registered,credit.spent&limit=2")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" ||
			resp.Header.Get(api.HeaderNextCursor) != "1-2" || string(body) != "{\"cursor\":\"1-1\"}\n{\"cursor\":\"1-2\"}\n" {
			t.Errorf("%s: %d %v %q", role, resp.StatusCode, resp.Header, body)
		}
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	// Bad requests never reach the port; types come sorted and once.
	if got := strings.Join(log.pages, " "); got != "7-9|credit.spent,user.registered|2 7-9|credit.spent,user.registered|2" {
		t.Errorf("Page calls %s", got)
	}
}

func TestEventsEmptyPageAndDefaults(t *testing.T) {
	t.Parallel()
	log := &fakeLog{n: 0}
	srv, _ := eventsServer(t, log)
	resp, body, err := getAs(t, srv, "admin", "")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.Header.Get(api.HeaderNextCursor) != "0-0" {
		t.Errorf("empty page: %d %q %q", resp.StatusCode, resp.Header.Get(api.HeaderNextCursor), body)
	}
	if log.pages[0] != "||1000" {
		t.Errorf("default page call %q", log.pages[0])
	}
}

// TestEventsCutsAFailedStream: once the status line is out, a failure must
// not look like a complete short page: the connection is cut.
func TestEventsCutsAFailedStream(t *testing.T) {
	t.Parallel()
	for _, log := range []*fakeLog{{n: 1000, failAt: 600}, {n: 5, short: true}} {
		srv, logs := eventsServer(t, log)
		_, body, err := getAs(t, srv, "admin", "")
		if err == nil {
			t.Errorf("%+v: the response ended normally after %d bytes", log, len(body))
		}
		if len(logs.lines(t, "request failed")) != 1 {
			t.Errorf("%+v: the failure was not logged:\n%s", log, logs)
		}
	}
}
