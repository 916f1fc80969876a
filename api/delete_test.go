package api_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/ratelimit"
)

// erasingIdentity authenticates the token "user:<uuid>:<email>" and
// deletes accounts whose password is "the password".
type erasingIdentity struct {
	countingIdentity
	mu      sync.Mutex
	deleted []domain.Principal
	codes   []string
}

func (f *erasingIdentity) Authenticate(_ context.Context, token string) (domain.Principal, domain.Claims, error) {
	parts := strings.SplitN(token, ":", 3)
	if len(parts) != 3 || parts[0] != "user" {
		return domain.Principal{}, domain.Claims{}, domain.Errorf(domain.CodeTokenInvalid, "bad token")
	}
	id, err := uuid.Parse(parts[1])
	if err != nil {
		return domain.Principal{}, domain.Claims{}, domain.Errorf(domain.CodeTokenInvalid, "bad token")
	}
	return domain.Principal{UserID: id, Email: parts[2], Role: domain.RoleUser}, domain.Claims{}, nil
}

func (f *erasingIdentity) DeleteAccount(_ context.Context, p domain.Principal, password, code string, _ domain.RequestMeta) (domain.Written, error) {
	if password != "the password" {
		return domain.Written{}, domain.Errorf(domain.CodeInvalidCredentials, "The password is incorrect.")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, p)
	f.codes = append(f.codes, code)
	return domain.Written{Position: "7-42"}, nil
}

func deletionServer(t *testing.T, lim ratelimit.Limiter, policies ratelimit.Policies) (*erasingIdentity, *apitest.Client) {
	t.Helper()
	id := &erasingIdentity{}
	s, _ := newServer(t, api.Config{Identity: id})
	s.SetAccountDeletion(id, id)
	if lim != nil {
		s.SetRateLimits(api.RateLimits{Limiter: lim, Policies: policies, AccountKey: func(email string) string { return "acct:" + email }})
	}
	return id, apitest.New(t, s.Handler())
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// TestDeleteAccountRoute: the body is {password, code?}, strictly; the
// answer 204 with X-Mana-Position; errors pass through.
func TestDeleteAccountRoute(t *testing.T) {
	t.Parallel()
	id, c := deletionServer(t, nil, nil)
	user := uuid.New()
	tok := bearer("user:" + user.String() + ":gone@example.com")
	del := func(body any, hs ...http.Header) *apitest.Response {
		return c.Do(http.MethodDelete, "/api/v1/auth/account", body, hs...)
	}
	for name, tc := range map[string]struct {
		body    any
		headers []http.Header
		status  int
		code    string
	}{
		"no token":         {map[string]any{"password": "the password"}, nil, http.StatusUnauthorized, "UNAUTHORIZED"},
		"no password":      {map[string]any{"code": "123456"}, []http.Header{tok}, http.StatusBadRequest, "VALIDATION_FAILED"},
		"an unknown field": {map[string]any{"password": "the password", "force": true}, []http.Header{tok}, http.StatusBadRequest, "VALIDATION_FAILED"},
		"a wrong password": {map[string]any{"password": "nope"}, []http.Header{tok}, http.StatusUnauthorized, "INVALID_CREDENTIALS"},
	} {
		r := del(tc.body, tc.headers...)
		if r.Status != tc.status || !strings.Contains(string(r.Body), `"`+tc.code+`"`) {
			t.Errorf("%s: %d %s, want %d %s", name, r.Status, r.Body, tc.status, tc.code)
		}
	}
	if r := c.Do(http.MethodDelete, "/api/v1/auth/account", nil, tok); r.Status != http.StatusUnsupportedMediaType {
		t.Errorf("no body: %d %s", r.Status, r.Body)
	}
	if len(id.deleted) != 0 {
		t.Fatalf("refused requests deleted %v", id.deleted)
	}

	r := del(map[string]any{"password": "the password", "code": "654321"}, tok)
	if r.Status != http.StatusNoContent || len(r.Body) != 0 || r.Header.Get(api.HeaderPosition) != "7-42" {
		t.Fatalf("delete: %d %q, position %q", r.Status, r.Body, r.Header.Get(api.HeaderPosition))
	}
	if len(id.deleted) != 1 || id.deleted[0].UserID != user || id.codes[0] != "654321" {
		t.Errorf("deleted %v with codes %v", id.deleted, id.codes)
	}
}

// TestDeleteAccountForgetsBudgets: the deletion draws on the account's
// login budget, and a successful one deletes the account's budgets (login,
// recovery, credit writes) but no one else's; a refused one keeps them.
func TestDeleteAccountForgetsBudgets(t *testing.T) {
	t.Parallel()
	mem := ratelimit.NewMemory(ratelimit.MemoryOptions{Clock: func() time.Time { return fixedNow }})
	pol := func(name string) ratelimit.Policy {
		return ratelimit.Policy{Name: name, Limit: 1, Period: time.Hour, Burst: 3}
	}
	policies := ratelimit.Policies{}
	for _, name := range []string{ratelimit.LoginAccount, ratelimit.RecoveryAccount, ratelimit.CreditsUser} {
		policies[name] = pol(name)
	}
	_, c := deletionServer(t, mem, policies)
	user, other := uuid.New(), uuid.New()
	email := "leaving@example.com"
	tok := bearer("user:" + user.String() + ":" + email)
	ctx := context.Background()
	take := func(policy, key string) ratelimit.Decision {
		t.Helper()
		d, err := mem.Allow(ctx, policies[policy], key)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	// Spend the budgets down to one request left.
	take(ratelimit.LoginAccount, "acct:"+email)
	take(ratelimit.RecoveryAccount, "acct:"+email)
	take(ratelimit.RecoveryAccount, "acct:"+email)
	take(ratelimit.CreditsUser, user.String())
	take(ratelimit.CreditsUser, user.String())
	take(ratelimit.CreditsUser, other.String())
	take(ratelimit.CreditsUser, other.String())

	// A wrong password takes the login budget's second request and
	// forgets nothing.
	if r := c.Do(http.MethodDelete, "/api/v1/auth/account", map[string]any{"password": "nope"}, tok); r.Status != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d %s", r.Status, r.Body)
	}
	// The deletion takes the last one, and succeeds.
	r := c.Do(http.MethodDelete, "/api/v1/auth/account", map[string]any{"password": "the password"}, tok)
	if r.Status != http.StatusNoContent || r.Header.Get(api.HeaderRateLimitRemaining) != "0" {
		t.Fatalf("delete: %d %s, RateLimit-Remaining %q", r.Status, r.Body, r.Header.Get(api.HeaderRateLimitRemaining))
	}
	for _, b := range []struct{ policy, key string }{
		{ratelimit.LoginAccount, "acct:" + email},
		{ratelimit.RecoveryAccount, "acct:" + email},
		{ratelimit.CreditsUser, user.String()},
	} {
		if d := take(b.policy, b.key); !d.Allowed || d.Remaining != 2 {
			t.Errorf("%s of the erased account after deletion: %+v, want a full budget", b.policy, d)
		}
	}
	if d := take(ratelimit.CreditsUser, other.String()); d.Remaining != 0 {
		t.Errorf("another user's budget was forgotten: %+v", d)
	}
	// With the login budget used up, a deletion is refused before the
	// password.
	for range 3 {
		take(ratelimit.LoginAccount, "acct:"+email)
	}
	if r := c.Do(http.MethodDelete, "/api/v1/auth/account", map[string]any{"password": "the password"}, tok); r.Status != http.StatusTooManyRequests {
		t.Errorf("over the login budget: %d %s", r.Status, r.Body)
	}
}
