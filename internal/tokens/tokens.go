// Package tokens issues and verifies access tokens: RS256 JWTs signed with
// keys kept in PostgreSQL (table signing_keys), their private halves wrapped
// by the keyring's KEK.
//
// A key is published (listed in the JWKS, accepted by Verify) from its
// creation until its retire_after, and signs from its not_before: Sign uses
// the key with the newest not_before that has arrived. Every node reloads
// the table every 30 seconds (Run), so a rotation made anywhere reaches all
// nodes long before the new key starts to sign 15 minutes later.
//
// Which key signs and which keys verify is decided at every call from the
// injected clock, not at reload time, so a key retires on time even between
// reloads.
package tokens

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/keyring"
)

// Timing of keys and verification.
const (
	// ReloadInterval is how often Run reloads the keys.
	ReloadInterval = 30 * time.Second
	// RotationDelay is how long after a rotation the new key starts to
	// sign. Until then it is only published, so every node and every JWKS
	// cache learns it before the first token it signs appears.
	RotationDelay = 15 * time.Minute
	// RetireGrace is how long a replaced key stays published after its
	// last use: a token it signed lives domain.AccessTokenTTL, plus a margin
	// for clock skew and late reloads.
	RetireGrace = 20 * time.Minute
	// Leeway is the clock skew tolerated on exp and iat between nodes.
	Leeway = 30 * time.Second
	// maxTokenLen bounds what Verify parses at all: our tokens are about
	// 700 bytes, and a larger input is only work for an attacker.
	maxTokenLen = 8 << 10
	// reloadTimeout bounds one periodic reload.
	reloadTimeout = 10 * time.Second
)

// algRS256 is the only algorithm tokens are signed and verified with.
const algRS256 = "RS256"

// Options configure a Service. Pool, Keyring, Issuer and Audience are
// required; Clock defaults to domain.SystemClock and Logger discards.
type Options struct {
	Pool     *pgxpool.Pool
	Keyring  *keyring.Keyring
	Issuer   string
	Audience string
	Clock    domain.Clock
	Logger   *slog.Logger
}

// Service signs and verifies access tokens and manages the signing keys.
// It is safe for concurrent use: the loaded keys are an immutable snapshot
// swapped atomically by Reload, so Sign, Verify and JWKS never wait on the
// database or on each other.
type Service struct {
	pool     *pgxpool.Pool
	keyring  *keyring.Keyring
	issuer   string
	audience string
	clock    domain.Clock
	log      *slog.Logger

	keys     atomic.Pointer[keySet]
	reloadMu sync.Mutex // orders snapshots: a slow reload never overwrites a newer one

	parser    *jwt.Parser
	claimOpts []jwt.ParserOption // the claim checks, reused to tell expired from invalid
	keyfunc   jwt.Keyfunc

	// reloadEvery and afterReload let tests drive Run quickly.
	reloadEvery time.Duration
	afterReload func(error)
}

// New returns a Service over o.Pool and loads the keys. It fails when the
// options are incomplete or a stored key cannot be loaded (a wrong
// DATA_KEK, for example). An empty table is no error: call EnsureKey.
func New(ctx context.Context, o Options) (*Service, error) {
	switch {
	case o.Pool == nil:
		return nil, errors.New("tokens: Options.Pool is required")
	case o.Keyring == nil:
		return nil, errors.New("tokens: Options.Keyring is required")
	case o.Issuer == "" || o.Audience == "":
		return nil, errors.New("tokens: Options.Issuer and Options.Audience are required")
	}
	s := &Service{
		pool:        o.Pool,
		keyring:     o.Keyring,
		issuer:      o.Issuer,
		audience:    o.Audience,
		clock:       o.Clock,
		log:         o.Logger,
		reloadEvery: ReloadInterval,
	}
	if s.clock == nil {
		s.clock = domain.SystemClock
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.claimOpts = []jwt.ParserOption{
		jwt.WithIssuer(s.issuer),
		jwt.WithAudience(s.audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(Leeway),
	}
	s.parser = jwt.NewParser(append([]jwt.ParserOption{
		jwt.WithValidMethods([]string{algRS256}),
		jwt.WithStrictDecoding(),
		jwt.WithTimeFunc(s.clock.Now),
	}, s.claimOpts...)...)
	s.keyfunc = s.verificationKey
	s.keys.Store(&keySet{byKID: map[string]*signingKey{}})
	if err := s.Reload(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// accessClaims is the JSON form of an access token's claims, in the order
// they are written.
type accessClaims struct {
	Subject   string           `json:"sub"`
	Email     string           `json:"email"`
	Role      string           `json:"role"`
	SessionID string           `json:"sid"`
	DeviceID  string           `json:"did,omitempty"`
	Issuer    string           `json:"iss"`
	Audience  jwt.ClaimStrings `json:"aud"`
	IssuedAt  *jwt.NumericDate `json:"iat"`
	ExpiresAt *jwt.NumericDate `json:"exp"`
	ID        string           `json:"jti"`
	// NotBefore is never written; a token carrying it is held to it.
	NotBefore *jwt.NumericDate `json:"nbf,omitempty"`
}

func (c *accessClaims) GetExpirationTime() (*jwt.NumericDate, error) { return c.ExpiresAt, nil }
func (c *accessClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return c.IssuedAt, nil }
func (c *accessClaims) GetNotBefore() (*jwt.NumericDate, error)      { return c.NotBefore, nil }
func (c *accessClaims) GetIssuer() (string, error)                   { return c.Issuer, nil }
func (c *accessClaims) GetSubject() (string, error)                  { return c.Subject, nil }
func (c *accessClaims) GetAudience() (jwt.ClaimStrings, error)       { return c.Audience, nil }

// Validate checks what golang-jwt does not know about: the claims every
// token of ours carries. It runs after the signature has been verified.
func (c *accessClaims) Validate() error {
	if _, err := uuid.Parse(c.Subject); err != nil {
		return errors.New("sub is not a UUID")
	}
	if _, err := uuid.Parse(c.SessionID); err != nil {
		return errors.New("sid is not a UUID")
	}
	if c.IssuedAt == nil || c.ID == "" || c.Role == "" {
		return errors.New("iat, jti or role missing")
	}
	return nil
}

// Sign returns a signed access token for c. The caller sets Subject,
// Email, Role, SessionID and DeviceID; Sign sets iss, aud, iat (now), exp
// (now + domain.AccessTokenTTL) and a random jti, and signs with the
// current signing key, named by the kid header. It fails when c lacks a
// subject, session or role, or when no key may sign now.
func (s *Service) Sign(c domain.Claims) (string, error) {
	if c.Subject == uuid.Nil || c.SessionID == uuid.Nil || c.Role == "" {
		return "", errors.New("tokens: sign: subject, session id and role are required")
	}
	now := s.clock.Now()
	k := s.keys.Load().signer(now)
	if k == nil {
		return "", errors.New("tokens: sign: no signing key is active (run EnsureKey or `mana keys generate`)")
	}
	claims := &accessClaims{
		Subject:   c.Subject.String(),
		Email:     c.Email,
		Role:      c.Role,
		SessionID: c.SessionID.String(),
		DeviceID:  c.DeviceID,
		Issuer:    s.issuer,
		Audience:  jwt.ClaimStrings{s.audience},
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(domain.AccessTokenTTL)),
		ID:        uuid.NewString(),
	}
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	t.Header["kid"] = k.kid
	signed, err := t.SignedString(k.priv)
	if err != nil {
		return "", fmt.Errorf("tokens: sign with %s: %w", k.kid, err)
	}
	return signed, nil
}

// Verify checks token's signature against the published keys and its
// claims (RS256 only; issuer, audience, exp required, iat not in the
// future, Leeway of skew) and returns its claims. An expired but otherwise
// valid token is a *domain.Error with code TOKEN_EXPIRED; every other
// failure, an unknown or retired kid included, is TOKEN_INVALID. Messages
// never repeat the token.
func (s *Service) Verify(token string) (domain.Claims, error) {
	if len(token) > maxTokenLen {
		return domain.Claims{}, errTokenInvalid()
	}
	var c accessClaims
	if _, err := s.parser.ParseWithClaims(token, &c, s.keyfunc); err != nil {
		// golang-jwt checks claims only after the signature, so an
		// expiry error means the token is ours.
		if errors.Is(err, jwt.ErrTokenExpired) && s.validWhenIssued(&c) {
			return domain.Claims{}, domain.Errorf(domain.CodeTokenExpired, "The access token has expired.")
		}
		return domain.Claims{}, errTokenInvalid()
	}
	return domain.Claims{
		Subject:   uuid.MustParse(c.Subject), // checked by Validate
		Email:     c.Email,
		Role:      c.Role,
		SessionID: uuid.MustParse(c.SessionID),
		DeviceID:  c.DeviceID,
		Issuer:    c.Issuer,
		Audience:  []string(c.Audience),
		IssuedAt:  c.IssuedAt.UTC(),
		ExpiresAt: c.ExpiresAt.UTC(),
		ID:        c.ID,
	}, nil
}

// validWhenIssued reports whether c passes every claim check at its own
// iat: then expiry was its only fault, and TOKEN_EXPIRED is the honest
// answer. A token wrong in any other way stays TOKEN_INVALID.
func (s *Service) validWhenIssued(c *accessClaims) bool {
	if c.IssuedAt == nil {
		return false
	}
	at := c.IssuedAt.Time
	v := jwt.NewValidator(append(s.claimOpts, jwt.WithTimeFunc(func() time.Time { return at }))...)
	return v.Validate(c) == nil
}

func errTokenInvalid() error {
	return domain.Errorf(domain.CodeTokenInvalid, "The access token is invalid.")
}

// verificationKey is Verify's key lookup: the published key named by the
// kid header, for the algorithm it was made for. Its errors never reach a
// caller.
func (s *Service) verificationKey(t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		return nil, errors.New("crit header not supported")
	}
	kid, ok := t.Header["kid"].(string)
	if !ok {
		return nil, errors.New("kid missing")
	}
	k := s.keys.Load().byKID[kid]
	if k == nil || !k.publishedAt(s.clock.Now()) {
		return nil, errors.New("unknown kid")
	}
	if t.Method.Alg() != k.alg {
		return nil, errors.New("algorithm does not match the key")
	}
	return k.pub, nil
}

// JWKS returns the JSON Web Key Set of every published key (RSA public
// keys with use "sig", alg and kid), oldest not_before first.
func (s *Service) JWKS() []byte {
	type jwk struct {
		Kty string `json:"kty"`
		Use string `json:"use"`
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		N   string `json:"n"`
		E   string `json:"e"`
	}
	set := struct {
		Keys []jwk `json:"keys"`
	}{Keys: []jwk{}}
	now := s.clock.Now()
	for _, k := range s.keys.Load().keys {
		if !k.publishedAt(now) {
			continue
		}
		set.Keys = append(set.Keys, jwk{Kty: "RSA", Use: "sig", Alg: k.alg, Kid: k.kid, N: k.n, E: k.e})
	}
	b, err := json.Marshal(set)
	if err != nil {
		panic("tokens: marshal JWKS: " + err.Error()) // strings only: cannot happen
	}
	return b
}

// Run reloads the keys every ReloadInterval until ctx ends, so keys
// generated or rotated on other nodes take effect here. A failed reload is
// logged and the previous keys stay in use.
func (s *Service) Run(ctx context.Context) {
	t := time.NewTicker(s.reloadEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, reloadTimeout)
		err := s.Reload(rctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			s.log.Warn("signing keys: reload failed; keeping the loaded keys", "err", err)
		}
		if s.afterReload != nil {
			s.afterReload(err)
		}
	}
}
