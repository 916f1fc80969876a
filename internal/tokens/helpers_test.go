package tokens

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/pgtest"
)

const (
	testIssuer   = "manacore"
	testAudience = "manacore"
)

// t0 is where every test clock starts.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testClock is a settable clock, safe for concurrent use.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *testClock { return &testClock{now: t0} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *testClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// fixture is one test database with the keyring and clock its services
// share, as the nodes of one deployment do.
type fixture struct {
	pool  *pgxpool.Pool
	kr    *keyring.Keyring
	clock *testClock
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	return &fixture{pool: pgtest.NewPool(t), kr: newKeyring(t), clock: newClock()}
}

func newKeyring(t testing.TB) *keyring.Keyring {
	t.Helper()
	kek, idx := make([]byte, keyring.KeySize), make([]byte, keyring.KeySize)
	_, _ = rand.Read(kek)
	_, _ = rand.Read(idx)
	kr, err := keyring.New(kek, idx)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

// service returns a new Service (a "node") over the fixture's database.
func (f *fixture) service(t testing.TB) *Service {
	t.Helper()
	s, err := New(ctx(t), Options{
		Pool: f.pool, Keyring: f.kr, Issuer: testIssuer, Audience: testAudience, Clock: f.clock,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// serviceWithKey returns a Service whose first key EnsureKey generated.
func (f *fixture) serviceWithKey(t testing.TB) *Service {
	t.Helper()
	s := f.service(t)
	if err := s.EnsureKey(ctx(t), ""); err != nil {
		t.Fatalf("EnsureKey: %v", err)
	}
	return s
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// sampleClaims are what a login would pass to Sign.
func sampleClaims(deviceID string) domain.Claims {
	return domain.Claims{
		Subject:   uuid.New(),
		Email:     "ada@example.com",
		Role:      domain.RoleUser,
		SessionID: uuid.New(),
		DeviceID:  deviceID,
	}
}

func mustSign(t testing.TB, s *Service, c domain.Claims) string {
	t.Helper()
	tok, err := s.Sign(c)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return tok
}

// signer returns the key s signs with now (test access to the private
// half, to forge tokens with the right key and a wrong header or claim).
func signer(t testing.TB, s *Service) *signingKey {
	t.Helper()
	k := s.keys.Load().signer(s.clock.Now())
	if k == nil {
		t.Fatal("no signing key")
	}
	return k
}

func kids(t testing.TB, s *Service) []string {
	t.Helper()
	infos, err := s.List(ctx(t))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var out []string
	for _, k := range infos {
		out = append(out, k.KID)
	}
	return out
}

// wantCode checks that err is a *domain.Error with code and that its
// message does not repeat the token.
func wantCode(t testing.TB, err error, code domain.Code, token string) {
	t.Helper()
	var de *domain.Error
	if !errors.As(err, &de) {
		t.Fatalf("error %v (%T), want *domain.Error %s", err, err, code)
	}
	if de.Code != code {
		t.Fatalf("code %s (%s), want %s", de.Code, de.Message, code)
	}
	if len(token) > 8 && strings.Contains(err.Error(), token) {
		t.Fatalf("error message repeats the token: %q", err.Error())
	}
}

// foreignKey is an RSA key the service never stored, made once per test
// binary: RSA generation is slow.
var foreignKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})
