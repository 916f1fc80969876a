package credits

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/pg"
)

// Service keys look like "mk_<key id>_<secret>"; only SHA-256 of the secret
// is stored.
const keyPrefix = "mk_"

var system = pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}

// ServiceKey describes a created key; Secret is shown once.
type ServiceKey struct {
	ID     string
	AppID  string
	Secret string
}

// CreateServiceKey makes a key for app with an optional per-user daily
// spend cap (0 = none).
func (s *Service) CreateServiceKey(ctx context.Context, app string, maxPerUserPerDay domain.Credits) (ServiceKey, error) {
	if !domain.ValidAppID(app) {
		return ServiceKey{}, invalid("appId", "must be 1-64 characters of a-z 0-9 . _ -")
	}
	idb, secret := make([]byte, 8), make([]byte, 32)
	rand.Read(idb)
	rand.Read(secret)
	id := hex.EncodeToString(idb)
	sec := base64.RawURLEncoding.EncodeToString(secret)
	sum := sha256.Sum256([]byte(sec))
	var limit *int64
	if maxPerUserPerDay > 0 {
		limit = &maxPerUserPerDay
	}
	err := pg.InTx(ctx, s.pool, system, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO service_keys (key_id, app_id, key_hash, max_spend_per_user_per_day) VALUES ($1, $2, $3, $4)`,
			id, app, sum[:], limit)
		return err
	})
	if err != nil {
		return ServiceKey{}, fmt.Errorf("create service key: %w", err)
	}
	return ServiceKey{ID: id, AppID: app, Secret: keyPrefix + id + "_" + sec}, nil
}

// RevokeServiceKey revokes a key by id; false when no active key has it.
func (s *Service) RevokeServiceKey(ctx context.Context, id string) (bool, error) {
	var n int64
	err := pg.InTx(ctx, s.pool, system, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE service_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL`, id)
		n = tag.RowsAffected()
		return err
	})
	return n == 1, err
}

var errBadKey = domain.Errorf(domain.CodeUnauthorized, "A valid X-Service-Key for this app is required.")

// AuthenticateApp implements domain.CreditsService: the key must be active,
// match its stored hash (constant time) and belong to appID.
func (s *Service) AuthenticateApp(ctx context.Context, appID, key string) (domain.Caller, error) {
	rest, ok := strings.CutPrefix(key, keyPrefix)
	id, secret, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 || id == "" || secret == "" {
		return domain.Caller{}, errBadKey
	}
	var (
		app   string
		hash  []byte
		limit *int64
	)
	err := pg.InTx(ctx, s.pool, system, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT app_id, key_hash, max_spend_per_user_per_day FROM service_keys WHERE key_id = $1 AND revoked_at IS NULL`, id).
			Scan(&app, &hash, &limit)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.Caller{}, errBadKey
	}
	if err != nil {
		return domain.Caller{}, err
	}
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(sum[:], hash) != 1 {
		return domain.Caller{}, errBadKey
	}
	if app != appID {
		return domain.Caller{}, domain.Errorf(domain.CodeAppMismatch, "X-App-Id does not match the service key's app.")
	}
	c := domain.Caller{Kind: "app", AppID: app}
	if limit != nil {
		c.MaxSpendPerUserPerDay = *limit
	}
	return c, nil
}
