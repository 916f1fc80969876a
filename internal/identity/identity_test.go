package identity_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/identity"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/password"
	"github.com/manacore/mana/internal/pgtest"
	"github.com/manacore/mana/internal/tokens"
	"github.com/manacore/mana/projections"
)

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fixture is one database with its keyring and token service; each test
// case builds its own identity service on it, with a clock of its own.
type fixture struct {
	pool   *pgxpool.Pool
	kr     *keyring.Keyring
	tokens *tokens.Service
	hasher *password.Hasher
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	pool := pgtest.NewPool(t)
	kek, idx := make([]byte, keyring.KeySize), make([]byte, keyring.KeySize)
	_, _ = rand.Read(kek)
	_, _ = rand.Read(idx)
	kr, err := keyring.New(kek, idx)
	if err != nil {
		t.Fatal(err)
	}
	// Tokens keep the wall clock: only the session and lockout decisions
	// are under the test's clock.
	ts, err := tokens.New(ctxT(t), tokens.Options{Pool: pool, Keyring: kr, Issuer: "manacore", Audience: "manacore"})
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.EnsureKey(ctxT(t), ""); err != nil {
		t.Fatal(err)
	}
	return &fixture{pool: pool, kr: kr, tokens: ts, hasher: password.New(password.Params{MemoryKiB: 1024, Time: 1, Threads: 1}, 0)}
}

// service returns an identity service whose store and decisions read clock.
func (f *fixture) service(t *testing.T, clock domain.Clock) (*identity.Service, *eventstore.Store) {
	t.Helper()
	store, err := eventstore.New(f.pool, eventstore.Options{Keyring: f.kr, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := identity.New(identity.Config{
		Store: store, Tokens: f.tokens, Hasher: f.hasher, Clock: clock,
		Freshness:   projections.NewFreshness(f.pool, nil, time.Second),
		SignupBonus: 150, ReuseWindow: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc, store
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func code(err error) domain.Code {
	var de *domain.Error
	if errors.As(err, &de) {
		return de.Code
	}
	if err != nil {
		return "unexpected: " + domain.Code(err.Error())
	}
	return ""
}

func retryAfter(err error) int {
	var de *domain.Error
	if errors.As(err, &de) {
		return de.RetryAfterSeconds
	}
	return 0
}

const (
	goodPassword  = "the right password"
	wrongPassword = "a wrong password"
)

// step is one action of a lockout scenario: advance the clock, then log in.
type step struct {
	advance    time.Duration
	password   string
	want       domain.Code // "" for success
	retryAfter int         // checked when non-zero
}

func wrong(n int, want domain.Code) []step {
	out := make([]step, n)
	for i := range out {
		out[i] = step{password: wrongPassword, want: want}
	}
	return out
}

func concat(parts ...[]step) []step {
	var out []step
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// TestLockout walks the lockout policy with a fixed clock: given an
// account, when these logins happen at these times, then each gets this
// answer.
func TestLockout(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const (
		invalid = domain.CodeInvalidCredentials
		locked  = domain.CodeAccountLocked
	)
	for _, tc := range []struct {
		name     string
		register bool
		steps    []step
	}{
		{"five failures lock for 30 minutes, the right password included", true, concat(wrong(5, invalid),
			[]step{{password: wrongPassword, want: locked, retryAfter: 1800}, {password: goodPassword, want: locked, retryAfter: 1800}})},
		{"the lock ends after 30 minutes", true, concat(wrong(5, invalid), []step{
			{advance: 30*time.Minute - time.Second, password: goodPassword, want: locked, retryAfter: 1},
			{advance: time.Second, password: goodPassword}})},
		{"after a lock the count starts over", true, concat(wrong(5, invalid),
			[]step{{advance: 30 * time.Minute, password: wrongPassword, want: invalid}},
			wrong(3, invalid), wrong(1, invalid), wrong(1, locked))},
		{"failures older than the 15 minute window are forgotten", true, concat(wrong(4, invalid),
			[]step{{advance: 15*time.Minute + time.Second, password: wrongPassword, want: invalid}},
			wrong(3, invalid), []step{{password: goodPassword}})},
		{"failures within the window add up", true, concat(wrong(4, invalid),
			[]step{{advance: 14 * time.Minute, password: wrongPassword, want: invalid}},
			[]step{{password: goodPassword, want: locked}})},
		{"a success resets the count", true, concat(wrong(4, invalid), []step{{password: goodPassword}},
			wrong(4, invalid), []step{{password: goodPassword}})},
		{"an unknown email locks the same way", false, concat(wrong(5, invalid),
			[]step{{password: goodPassword, want: locked, retryAfter: 1800},
				{advance: 30 * time.Minute, password: wrongPassword, want: invalid}})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := &fakeClock{now: time.Now().UTC().Truncate(time.Second)}
			svc, _ := f.service(t, clock)
			email := "lock." + randomSuffix() + "@example.com"
			if tc.register {
				if _, _, err := svc.Register(ctxT(t), domain.RegisterInput{Email: email, Password: goodPassword}, domain.RequestMeta{}); err != nil {
					t.Fatal(err)
				}
			}
			for i, s := range tc.steps {
				clock.Advance(s.advance)
				_, _, err := svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: s.password}, domain.RequestMeta{})
				if got := code(err); got != s.want {
					t.Fatalf("step %d (+%v, %q): got %q, want %q", i, s.advance, s.password, got, s.want)
				}
				if s.retryAfter != 0 && retryAfter(err) != s.retryAfter {
					t.Errorf("step %d: Retry-After %d, want %d", i, retryAfter(err), s.retryAfter)
				}
			}
		})
	}
}

// TestParallelGuessesVerifyAtMostFive sends ten wrong passwords for one
// address at once: only five may reach the password hasher; the others are
// refused as locked without a verification.
func TestParallelGuessesVerifyAtMostFive(t *testing.T) {
	t.Parallel()
	for _, known := range []bool{true, false} {
		name := map[bool]string{true: "known email", false: "unknown email"}[known]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t) // a database of its own, so the event counts are this case's
			svc, _ := f.service(t, &fakeClock{now: time.Now().UTC()})
			email := "par." + randomSuffix() + "@example.com"
			if known {
				if _, _, err := svc.Register(ctxT(t), domain.RegisterInput{Email: email, Password: goodPassword}, domain.RequestMeta{}); err != nil {
					t.Fatal(err)
				}
			}
			const guesses = 10
			start := make(chan struct{})
			errs := make([]error, guesses)
			var wg sync.WaitGroup
			for i := range guesses {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					_, _, errs[i] = svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: wrongPassword}, domain.RequestMeta{})
				}()
			}
			close(start)
			wg.Wait()

			// Every verified guess is answered INVALID_CREDENTIALS and
			// every refused one ACCOUNT_LOCKED, so the former count the
			// verifications.
			counts := map[domain.Code]int{}
			for _, err := range errs {
				counts[code(err)]++
			}
			if counts[domain.CodeInvalidCredentials] != identity.LockoutThreshold ||
				counts[domain.CodeAccountLocked] != guesses-identity.LockoutThreshold || len(counts) != 2 {
				t.Errorf("answers %v, want %d INVALID_CREDENTIALS and the rest ACCOUNT_LOCKED", counts, identity.LockoutThreshold)
			}
			// login_attempts.verifications counts reservations, refused
			// ones included; failures counts verified wrong passwords.
			var failures int
			if err := f.pool.QueryRow(ctxT(t), `SELECT failures FROM login_attempts WHERE email_hmac = $1`,
				f.kr.EmailIndex(email)).Scan(&failures); err != nil {
				t.Fatal(err)
			}
			if failures != identity.LockoutThreshold {
				t.Errorf("login_attempts.failures = %d, want %d", failures, identity.LockoutThreshold)
			}
			var failed, lockedEvents int
			if err := f.pool.QueryRow(ctxT(t), `SELECT count(*) FILTER (WHERE event_type = 'user.login_failed'),
    count(*) FILTER (WHERE event_type = 'user.locked') FROM events`).Scan(&failed, &lockedEvents); err != nil {
				t.Fatal(err)
			}
			wantFailed, wantLocked := identity.LockoutThreshold, 1
			if !known {
				wantFailed, wantLocked = 0, 0 // unknown emails are counted, never recorded
			}
			if failed != wantFailed || lockedEvents != wantLocked {
				t.Errorf("%d user.login_failed and %d user.locked events, want %d and %d", failed, lockedEvents, wantFailed, wantLocked)
			}
		})
	}
}

// TestSessionClock covers what only a moved clock reaches: the end of the
// refresh reuse window and the end of an idle session.
func TestSessionClock(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		// then runs after a login and one rotation (old → current).
		then func(t *testing.T, svc *identity.Service, clock *fakeClock, old, current domain.TokenPair)
	}{
		{"the previous token at the end of the window still gets the current pair", func(t *testing.T, svc *identity.Service, clock *fakeClock, old, current domain.TokenPair) {
			clock.Advance(10 * time.Second)
			got, _, err := svc.Refresh(ctxT(t), old.RefreshToken, domain.RequestMeta{})
			if err != nil || got != current {
				t.Fatalf("reuse at the window's end = %v, %v; want the current pair", got, err)
			}
		}},
		{"the previous token after the window revokes the session", func(t *testing.T, svc *identity.Service, clock *fakeClock, old, current domain.TokenPair) {
			clock.Advance(10*time.Second + time.Microsecond)
			_, _, err := svc.Refresh(ctxT(t), old.RefreshToken, domain.RequestMeta{})
			if code(err) != domain.CodeRefreshTokenReused {
				t.Fatalf("reuse after the window = %v, want REFRESH_TOKEN_REUSED", err)
			}
			if _, _, err := svc.Authenticate(ctxT(t), current.AccessToken); code(err) != domain.CodeSessionRevoked {
				t.Errorf("access token after the reuse = %v, want SESSION_REVOKED", err)
			}
			if _, _, err := svc.Refresh(ctxT(t), current.RefreshToken, domain.RequestMeta{}); code(err) != domain.CodeSessionRevoked {
				t.Errorf("current refresh token after the reuse = %v, want SESSION_REVOKED", err)
			}
		}},
		{"a session idle for seven days expires", func(t *testing.T, svc *identity.Service, clock *fakeClock, old, current domain.TokenPair) {
			clock.Advance(domain.SessionTTL - time.Second)
			if _, _, err := svc.Authenticate(ctxT(t), current.AccessToken); err != nil {
				t.Fatalf("just before the expiry: %v", err)
			}
			clock.Advance(time.Second)
			if _, _, err := svc.Authenticate(ctxT(t), current.AccessToken); code(err) != domain.CodeSessionExpired {
				t.Errorf("access token at the expiry = %v, want SESSION_EXPIRED", err)
			}
			if _, _, err := svc.Refresh(ctxT(t), current.RefreshToken, domain.RequestMeta{}); code(err) != domain.CodeSessionExpired {
				t.Errorf("refresh at the expiry = %v, want SESSION_EXPIRED", err)
			}
		}},
		{"each refresh extends the session by seven days", func(t *testing.T, svc *identity.Service, clock *fakeClock, old, current domain.TokenPair) {
			clock.Advance(domain.SessionTTL - time.Second)
			next, _, err := svc.Refresh(ctxT(t), current.RefreshToken, domain.RequestMeta{})
			if err != nil {
				t.Fatal(err)
			}
			clock.Advance(domain.SessionTTL - time.Second)
			if _, _, err := svc.Authenticate(ctxT(t), next.AccessToken); err != nil {
				t.Errorf("a session refreshed within its life: %v", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := &fakeClock{now: time.Now().UTC().Truncate(time.Second)}
			svc, _ := f.service(t, clock)
			email := "clock." + randomSuffix() + "@example.com"
			if _, _, err := svc.Register(ctxT(t), domain.RegisterInput{Email: email, Password: goodPassword}, domain.RequestMeta{}); err != nil {
				t.Fatal(err)
			}
			old, _, err := svc.Login(ctxT(t), domain.LoginInput{Email: email, Password: goodPassword}, domain.RequestMeta{})
			if err != nil {
				t.Fatal(err)
			}
			current, _, err := svc.Refresh(ctxT(t), old.RefreshToken, domain.RequestMeta{})
			if err != nil {
				t.Fatal(err)
			}
			tc.then(t, svc, clock, old, current)
		})
	}
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
