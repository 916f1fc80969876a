// Package identity implements domain.Identity on the event store:
// registration, login with lockout, sessions with rotating refresh tokens,
// and the bearer guard. Every decision reads write-side state kept in the
// same transactions as the events (auth_users, auth_sessions,
// login_attempts); read models only serve lists.
package identity

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/password"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/projections"
)

// Tokens signs and verifies access tokens (internal/tokens).
type Tokens interface {
	Sign(c domain.Claims) (string, error)
	Verify(token string) (domain.Claims, error)
	JWKS() []byte
}

// Revocations announces ended sessions to apps (core NATS
// mana.sessions.revoked) after the revocation has committed.
type Revocations interface {
	SessionRevoked(sessionID, userID uuid.UUID, at time.Time)
}

// Lockout policy (SPEC §5).
const (
	// LockoutWindow is how long failed logins count.
	LockoutWindow = 15 * time.Minute
	// LockoutThreshold failures within the window lock the account, and at
	// most this many passwords are verified per account per window.
	LockoutThreshold = 5
	// LockoutDuration is how long a lock lasts.
	LockoutDuration = 30 * time.Minute
	// RefreshWait bounds how long a refresh waits for a concurrent refresh
	// of the same session before answering REFRESH_IN_PROGRESS.
	RefreshWait = 5 * time.Second
)

// Config configures a Service.
type Config struct {
	Store     *eventstore.Store
	Tokens    Tokens
	Hasher    *password.Hasher
	Freshness domain.ReadYourWrites
	// Revocations may be nil.
	Revocations Revocations
	Clock       domain.Clock
	// SignupBonus is granted once per email address ever; 0 disables.
	SignupBonus int64
	// ReuseWindow is the grace for concurrent refreshes of one token.
	ReuseWindow time.Duration
	// RequireEmailVerification refuses logins with EMAIL_NOT_VERIFIED
	// until the address is verified (REQUIRE_EMAIL_VERIFICATION).
	RequireEmailVerification bool

	Logger *slog.Logger
}

// Service implements domain.Identity. It is safe for concurrent use.
type Service struct {
	cfg  Config
	pool *pgxpool.Pool
	// accounts closes credit accounts on erasure (SetCreditAccounts).
	accounts CreditAccounts
}

var _ domain.Identity = (*Service)(nil)

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Tokens == nil || cfg.Hasher == nil || cfg.Freshness == nil {
		return nil, errors.New("identity: store, tokens, hasher and freshness are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = domain.SystemClock
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, pool: cfg.Store.Pool()}, nil
}

func (s *Service) now() time.Time { return s.cfg.Clock.Now().UTC() }

// system is the actor of auth decisions: they run before (or regardless of)
// a user being authenticated.
var system = pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}

func command(name, actor string, meta domain.RequestMeta) eventstore.Command {
	return eventstore.Command{Name: name, Actor: system, Metadata: domain.Metadata{Actor: actor, RequestID: meta.RequestID}}
}

func userActor(id uuid.UUID) string { return "user:" + id.String() }

// JWKS implements domain.Identity.
func (s *Service) JWKS(context.Context) ([]byte, error) { return s.cfg.Tokens.JWKS(), nil }

// Sessions implements domain.Identity.
func (s *Service) Sessions(ctx context.Context, p domain.Principal, minPosition string) ([]domain.SessionView, error) {
	if err := s.cfg.Freshness.Await(ctx, "sessions", p.UserID, minPosition); err != nil {
		return nil, err
	}
	return projections.UserSessions(ctx, s.pool, p.UserID, p.SessionID, s.now())
}

// SecurityEvents implements domain.Identity.
func (s *Service) SecurityEvents(ctx context.Context, p domain.Principal, minPosition string, limit int) ([]domain.SecurityEventView, error) {
	if err := s.cfg.Freshness.Await(ctx, "security_events", p.UserID, minPosition); err != nil {
		return nil, err
	}
	return projections.UserSecurityEvents(ctx, s.pool, p.UserID, limit)
}
