package identity_test

import (
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/identity"
	"github.com/manacore/mana/projections"
)

// announced records what the service announces on mana.sessions.revoked.
type announced struct {
	mu   sync.Mutex
	sids []uuid.UUID
}

func (a *announced) SessionRevoked(sid, user uuid.UUID, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sids = append(a.sids, sid)
}

func (a *announced) has(sid uuid.UUID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.sids {
		if s == sid {
			return true
		}
	}
	return false
}

// TestRevocationsAreAnnounced: logout, revoking a session, a refresh-token
// reuse and a role change each announce the ended sessions, after commit.
func TestRevocationsAreAnnounced(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	store, err := eventstore.New(f.pool, eventstore.Options{Keyring: f.kr})
	if err != nil {
		t.Fatal(err)
	}
	ann := &announced{}
	svc, err := identity.New(identity.Config{
		Store: store, Tokens: f.tokens, Hasher: f.hasher, Revocations: ann,
		Freshness: projections.NewFreshness(f.pool, nil, time.Second), ReuseWindow: time.Nanosecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	email := "announce-" + randomSuffix() + "@example.com"
	if _, _, err := svc.Register(ctxT(t), domain.RegisterInput{Email: email, Password: "password123"}, domain.RequestMeta{}); err != nil {
		t.Fatal(err)
	}
	login := func() (domain.TokenPair, domain.Principal) {
		t.Helper()
		pair, _, err := svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: "password123"}, domain.RequestMeta{})
		if err != nil {
			t.Fatal(err)
		}
		p, _, err := svc.Authenticate(ctxT(t), pair.AccessToken)
		if err != nil {
			t.Fatal(err)
		}
		return pair, p
	}

	_, p1 := login()
	if _, err := svc.Logout(ctxT(t), p1, domain.RequestMeta{}); err != nil || !ann.has(p1.SessionID) {
		t.Fatalf("logout: %v, announced %v", err, ann.has(p1.SessionID))
	}
	_, p2 := login()
	_, p3 := login()
	if _, err := svc.RevokeSession(ctxT(t), p3, p2.SessionID, domain.RequestMeta{}); err != nil || !ann.has(p2.SessionID) {
		t.Fatalf("revoke: %v, announced %v", err, ann.has(p2.SessionID))
	}
	pair4, p4 := login()
	if _, _, err := svc.Refresh(ctxT(t), pair4.RefreshToken, domain.RequestMeta{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := svc.Refresh(ctxT(t), pair4.RefreshToken, domain.RequestMeta{}); domain.ErrorCode(err) != domain.CodeRefreshTokenReused || !ann.has(p4.SessionID) {
		t.Fatalf("reuse: %v, announced %v", err, ann.has(p4.SessionID))
	}
	if changed, err := svc.SetRole(ctxT(t), email, domain.RoleAdmin, domain.RequestMeta{}); err != nil || !changed || !ann.has(p3.SessionID) {
		t.Fatalf("set-role: %v %v, announced %v", changed, err, ann.has(p3.SessionID))
	}
	if _, _, err := svc.Authenticate(ctxT(t), pair4.AccessToken); domain.ErrorCode(err) != domain.CodeSessionRevoked {
		t.Fatalf("a revoked session still authenticates: %v", err)
	}
	// The new role is what the next login carries.
	if _, p := login(); p.Role != domain.RoleAdmin {
		t.Fatalf("role after set-role: %s", p.Role)
	}
}
