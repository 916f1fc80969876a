package main

import (
	"context"
	"encoding/json"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/credits"
	"github.com/manacore/mana/internal/identity"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/password"
	"github.com/manacore/mana/internal/tokens"
	"github.com/manacore/mana/projections"
)

// revocations announces ended sessions on core NATS so apps can drop them
// within seconds, besides the session.revoked event.
type revocations struct {
	nc *nats.Conn
}

func (r revocations) SessionRevoked(sid, user uuid.UUID, at time.Time) {
	if r.nc == nil {
		return
	}
	b, _ := json.Marshal(map[string]any{"sid": sid, "userId": user, "revokedAt": at.UTC()})
	_ = r.nc.Publish(natsx.RevocationSubject, b)
}

// newIdentity builds the token service (seeding a signing key on first
// start) and the identity service over store.
func newIdentity(ctx context.Context, e *env, store *eventstore.Store, nc *nats.Conn, runner *projections.Runner) (*identity.Service, *tokens.Service, error) {
	ts, err := tokens.New(ctx, tokens.Options{
		Pool: store.Pool(), Keyring: store.Keyring(), Issuer: e.cfg.JWTIssuer, Audience: e.cfg.JWTAudience, Logger: e.log,
	})
	if err != nil {
		return nil, nil, err
	}
	if err := ts.EnsureKey(ctx, e.cfg.JWTPrivateKey); err != nil {
		return nil, nil, err
	}
	svc, err := identity.New(identity.Config{
		Store:       store,
		Tokens:      ts,
		Hasher:      password.New(password.Params{MemoryKiB: e.cfg.Argon2MemoryKiB, Time: e.cfg.Argon2Time, Threads: e.cfg.Argon2Threads}, 0),
		Freshness:   projections.NewFreshness(store.Pool(), runner, e.cfg.RYWTimeout),
		Revocations: revocations{nc: nc},
		SignupBonus: e.cfg.SignupBonus,
		ReuseWindow: e.cfg.RefreshReuseWindow,
		Logger:      e.log,

		RequireEmailVerification: e.cfg.RequireEmailVerification,
	})
	return svc, ts, err
}

// newCredits builds the credits service over store.
func newCredits(e *env, store *eventstore.Store, runner *projections.Runner) (*credits.Service, error) {
	return credits.New(credits.Config{
		Store:     store,
		Freshness: projections.NewFreshness(store.Pool(), runner, e.cfg.RYWTimeout),
		DailyFree: e.cfg.DailyFree,
		Logger:    e.log,
	})
}
