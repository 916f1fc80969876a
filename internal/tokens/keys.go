package tokens

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/internal/pg"
)

// rsaBits is the size of generated keys and the minimum of imported ones.
const rsaBits = 2048

// systemActor is the actor of every key transaction: the service itself.
var systemActor = pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}

// KeyInfo describes one signing key, as List reports it.
type KeyInfo struct {
	KID         string
	Alg         string
	NotBefore   time.Time // signs from then on
	RetireAfter time.Time // zero: no retirement scheduled
	CreatedAt   time.Time
	Signing     bool // the key Sign uses now
	Published   bool // in the JWKS and accepted by Verify now
}

// signingKey is one loaded key. Its crypto parts are shared between
// snapshots; a snapshot is never modified after it is stored.
type signingKey struct {
	kid, alg    string
	publicPEM   string
	pub         *rsa.PublicKey
	priv        *rsa.PrivateKey
	n, e        string // JWK members, base64url
	notBefore   time.Time
	retireAfter time.Time // zero: none
	createdAt   time.Time
}

func (k *signingKey) publishedAt(now time.Time) bool {
	return k.retireAfter.IsZero() || now.Before(k.retireAfter)
}

func (k *signingKey) mayBeSignerAt(now time.Time) bool {
	return !k.notBefore.After(now) && k.publishedAt(now)
}

// keySet is a snapshot of the loaded keys, ordered by not_before, then
// created_at, then kid: the signer is the last eligible one.
type keySet struct {
	keys  []*signingKey
	byKID map[string]*signingKey
}

func (ks *keySet) signer(now time.Time) *signingKey {
	for i := len(ks.keys) - 1; i >= 0; i-- {
		if k := ks.keys[i]; k.mayBeSignerAt(now) {
			return k
		}
	}
	return nil
}

func compareKeys(a, b *signingKey) int {
	if c := a.notBefore.Compare(b.notBefore); c != 0 {
		return c
	}
	if c := a.createdAt.Compare(b.createdAt); c != 0 {
		return c
	}
	return strings.Compare(a.kid, b.kid)
}

// The key queries. Reads need no lock; every write takes the table lock
// first (SHARE ROW EXCLUSIVE conflicts with itself and with row writes, not
// with reads), so EnsureKey on several nodes inserts one key and a rotation
// sees every key that exists when it retires the older ones.
const (
	sqlKeysLoad = `SELECT kid, alg, public_pem, private_wrapped, not_before, retire_after, created_at
FROM signing_keys WHERE retire_after IS NULL OR retire_after > $1`

	sqlKeysList = `SELECT kid, alg, public_pem, NULL::bytea, not_before, retire_after, created_at FROM signing_keys`

	sqlKeysLock = `LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE`

	sqlKeysUsable = `SELECT EXISTS (SELECT 1 FROM signing_keys
WHERE not_before <= $1 AND (retire_after IS NULL OR retire_after > $1))`

	// created_at is left to the database: it orders keys of equal
	// not_before by when they were really added.
	sqlKeysInsert = `INSERT INTO signing_keys (kid, alg, public_pem, private_wrapped, not_before)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kid) DO NOTHING`

	// Keys already retiring earlier keep their date.
	sqlKeysRetireOthers = `UPDATE signing_keys SET retire_after = $2
WHERE kid <> $1 AND (retire_after IS NULL OR retire_after > $2)`
)

// Reload reads the published keys from the database and swaps them in.
// Keys already loaded keep their parsed form; new ones are unwrapped with
// the keyring. It fails, keeping the previous keys, when the database is
// unreachable or a key cannot be unwrapped or parsed. Safe for concurrent
// use; concurrent reloads take turns.
func (s *Service) Reload(ctx context.Context) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	rows, err := s.queryKeys(ctx, sqlKeysLoad, s.now())
	if err != nil {
		return err
	}
	prev := s.keys.Load()
	next := &keySet{byKID: make(map[string]*signingKey, len(rows))}
	for _, r := range rows {
		if r.alg != algRS256 {
			s.log.Warn("signing keys: skipping a key of an unsupported algorithm", "kid", r.kid, "alg", r.alg)
			continue
		}
		k := r
		if old := prev.byKID[r.kid]; old != nil && old.publicPEM == r.publicPEM {
			k.pub, k.priv, k.n, k.e = old.pub, old.priv, old.n, old.e
		} else if err := s.openKey(&k, r.wrapped); err != nil {
			return err
		}
		next.keys = append(next.keys, &k.signingKey)
		next.byKID[k.kid] = &k.signingKey
	}
	slices.SortFunc(next.keys, compareKeys)
	// Keys appearing while running (another node's rotation) are worth an
	// info line; the first load is not.
	level := slog.LevelInfo
	if len(prev.byKID) == 0 {
		level = slog.LevelDebug
	}
	for kid := range next.byKID {
		if prev.byKID[kid] == nil {
			s.log.Log(ctx, level, "signing keys: loaded", "kid", kid)
		}
	}
	s.keys.Store(next)
	return nil
}

// keyRow is a row of signing_keys with its wrapped private key.
type keyRow struct {
	signingKey
	wrapped []byte
}

// queryKeys runs q (sqlKeysLoad or sqlKeysList) as the service.
func (s *Service) queryKeys(ctx context.Context, q string, args ...any) ([]keyRow, error) {
	var out []keyRow
	err := pg.InTx(ctx, s.pool, systemActor, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (keyRow, error) {
			var r keyRow
			var retire *time.Time
			err := row.Scan(&r.kid, &r.alg, &r.publicPEM, &r.wrapped, &r.notBefore, &retire, &r.createdAt)
			if retire != nil {
				r.retireAfter = *retire
			}
			return r, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("signing keys: load: %w", err)
	}
	return out, nil
}

// openKey parses k's public key, unwraps its private key and checks that
// the two belong together.
func (s *Service) openKey(k *keyRow, wrapped []byte) error {
	pub, err := parsePublicPEM(k.publicPEM)
	if err != nil {
		return fmt.Errorf("signing key %s: %w", k.kid, err)
	}
	der, err := s.keyring.Unwrap(wrapLabel(k.kid), wrapped)
	if err != nil {
		return fmt.Errorf("signing key %s: unwrap private key (is DATA_KEK the one it was stored with?): %w", k.kid, err)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return fmt.Errorf("signing key %s: parse private key: %w", k.kid, err)
	}
	priv, ok := parsed.(*rsa.PrivateKey)
	if !ok || !priv.PublicKey.Equal(pub) {
		return fmt.Errorf("signing key %s: private key does not match public_pem", k.kid)
	}
	k.pub, k.priv = pub, priv
	k.n = base64.RawURLEncoding.EncodeToString(pub.N.Bytes())
	k.e = base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes())
	return nil
}

func wrapLabel(kid string) string { return "signing-key:" + kid }

func parsePublicPEM(text string) (*rsa.PublicKey, error) {
	block, _ := pem.Decode([]byte(text))
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("public_pem is not a PEM public key")
	}
	parsed, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	pub, ok := parsed.(*rsa.PublicKey)
	if !ok {
		return nil, errors.New("public key is not RSA")
	}
	return pub, nil
}

// now is the clock's time at the database's precision, so a time written
// and read back compares equal.
func (s *Service) now() time.Time { return s.clock.Now().UTC().Truncate(time.Microsecond) }

// material is a key ready to insert.
type material struct {
	kid       string
	publicPEM string
	pkcs8     []byte
}

func newMaterial(priv *rsa.PrivateKey, kid string) (material, error) {
	spki, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return material{}, fmt.Errorf("marshal public key: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return material{}, fmt.Errorf("marshal private key: %w", err)
	}
	if kid == "" {
		kid = importedKID(spki)
	}
	return material{
		kid:       kid,
		publicPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})),
		pkcs8:     pkcs8,
	}, nil
}

// importedKID names an imported key after its public key: base64url of
// the first 16 bytes of SHA-256 over the DER SubjectPublicKeyInfo, so every
// node importing the same key agrees on its kid.
func importedKID(spki []byte) string {
	sum := sha256.Sum256(spki)
	return base64.RawURLEncoding.EncodeToString(sum[:16])
}

// generateMaterial makes a fresh RSA-2048 key with a random kid of the
// same shape as an imported one.
func generateMaterial() (material, error) {
	priv, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return material{}, fmt.Errorf("generate RSA key: %w", err)
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return material{}, fmt.Errorf("generate kid: %w", err)
	}
	return newMaterial(priv, base64.RawURLEncoding.EncodeToString(id))
}

// importMaterial reads an RSA private key of at least 2048 bits from
// privateKey: PEM text (PKCS#1 "RSA PRIVATE KEY" or PKCS#8 "PRIVATE KEY";
// literal \n sequences, as environment variables often carry them, count
// as newlines) or the path of a file holding it. Errors never quote the
// key.
func importMaterial(privateKey string) (material, error) {
	text := []byte(strings.TrimSpace(privateKey))
	if !strings.Contains(privateKey, "-----BEGIN") {
		b, err := os.ReadFile(strings.TrimSpace(privateKey))
		if err != nil {
			return material{}, fmt.Errorf("JWT private key: not PEM text, and not a readable file: %w", err)
		}
		text = b
	} else if !bytes.Contains(text, []byte("\n")) {
		text = bytes.ReplaceAll(text, []byte(`\n`), []byte("\n"))
	}
	block, _ := pem.Decode(text)
	if block == nil {
		return material{}, errors.New("JWT private key: no PEM block found")
	}
	var priv *rsa.PrivateKey
	switch block.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return material{}, fmt.Errorf("JWT private key: parse PKCS#1: %w", err)
		}
		priv = k
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return material{}, fmt.Errorf("JWT private key: parse PKCS#8: %w", err)
		}
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return material{}, fmt.Errorf("JWT private key: want an RSA key, got %T", k)
		}
		priv = rk
	default:
		return material{}, fmt.Errorf("JWT private key: unsupported PEM block %q (want RSA PRIVATE KEY or PRIVATE KEY, unencrypted)", block.Type)
	}
	if priv.N.BitLen() < rsaBits {
		return material{}, fmt.Errorf("JWT private key: %d bits is too small (at least %d)", priv.N.BitLen(), rsaBits)
	}
	return newMaterial(priv, "")
}

// insert adds m with notBefore under the table lock. With onlyIfNone it
// first checks, under the lock, whether a key may sign at notBefore, and
// if one may inserts nothing. With a non-zero retireAt every other key
// retires by then. It reports whether a row was added.
func (s *Service) insert(ctx context.Context, m material, notBefore time.Time, onlyIfNone bool, retireAt time.Time) (bool, error) {
	var added bool
	err := pg.InTx(ctx, s.pool, systemActor, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, sqlKeysLock); err != nil {
			return err
		}
		if onlyIfNone {
			var usable bool
			if err := tx.QueryRow(ctx, sqlKeysUsable, notBefore).Scan(&usable); err != nil {
				return err
			}
			if usable {
				return nil
			}
		}
		wrapped := s.keyring.Wrap(wrapLabel(m.kid), m.pkcs8)
		tag, err := tx.Exec(ctx, sqlKeysInsert, m.kid, algRS256, m.publicPEM, wrapped, notBefore)
		if err != nil {
			return err
		}
		added = tag.RowsAffected() == 1
		if !retireAt.IsZero() {
			if _, err := tx.Exec(ctx, sqlKeysRetireOthers, m.kid, retireAt); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("signing keys: insert %s: %w", m.kid, err)
	}
	return added, nil
}

// EnsureKey makes sure a key may sign now. When none may, it imports
// privateKey (PEM text or a file path, PKCS#1 or PKCS#8 RSA; see the kid
// rule at importedKID) or, when privateKey is empty, generates an RSA-2048
// key, with not_before now. Nodes starting together insert one key: the
// check and the insert run under a table lock, and an imported key's kid
// is deterministic. A configured key is ignored while another key may
// sign. It then reloads, and fails when still no key may sign (an imported
// key that was retired earlier is not revived).
func (s *Service) EnsureKey(ctx context.Context, privateKey string) error {
	if err := s.Reload(ctx); err != nil {
		return err
	}
	if s.keys.Load().signer(s.clock.Now()) != nil {
		if privateKey != "" {
			s.log.Debug("signing keys: a key is active; the configured private key is not imported")
		}
		return nil
	}
	var m material
	var err error
	if privateKey != "" {
		m, err = importMaterial(privateKey)
	} else {
		// Generated outside the transaction: RSA key generation takes
		// long enough that the table lock must not wait for it.
		m, err = generateMaterial()
	}
	if err != nil {
		return err
	}
	added, err := s.insert(ctx, m, s.now(), true, time.Time{})
	if err != nil {
		return err
	}
	if added {
		s.log.Info("signing keys: added the first signing key", "kid", m.kid, "imported", privateKey != "")
	}
	if err := s.Reload(ctx); err != nil {
		return err
	}
	if s.keys.Load().signer(s.clock.Now()) == nil {
		return fmt.Errorf("signing keys: no key may sign (key %s exists but is retired or not yet valid)", m.kid)
	}
	return nil
}

// Generate adds a fresh RSA-2048 key that signs at once (not_before now)
// and reloads. Older keys stay published; use Rotate to retire them.
func (s *Service) Generate(ctx context.Context) (KeyInfo, error) {
	return s.add(ctx, 0)
}

// Rotate adds a fresh RSA-2048 key with not_before = now + RotationDelay:
// published at once, signing later. Every older key gets retire_after =
// that not_before + RetireGrace (or keeps an earlier one): its last token
// is signed when the new key takes over and expires AccessTokenTTL later.
// It reloads and returns the new key.
func (s *Service) Rotate(ctx context.Context) (KeyInfo, error) {
	return s.add(ctx, RotationDelay)
}

func (s *Service) add(ctx context.Context, delay time.Duration) (KeyInfo, error) {
	m, err := generateMaterial()
	if err != nil {
		return KeyInfo{}, err
	}
	notBefore := s.now().Add(delay)
	var retireAt time.Time
	if delay > 0 {
		retireAt = notBefore.Add(RetireGrace)
	}
	if _, err := s.insert(ctx, m, notBefore, false, retireAt); err != nil {
		return KeyInfo{}, err
	}
	if delay > 0 {
		s.log.Info("signing keys: rotated", "kid", m.kid, "not_before", notBefore, "retire_others_by", retireAt)
	} else {
		s.log.Info("signing keys: generated", "kid", m.kid, "not_before", notBefore)
	}
	if err := s.Reload(ctx); err != nil {
		return KeyInfo{}, err
	}
	infos, err := s.List(ctx)
	if err != nil {
		return KeyInfo{}, err
	}
	for _, ki := range infos {
		if ki.KID == m.kid {
			return ki, nil
		}
	}
	return KeyInfo{}, fmt.Errorf("signing keys: %s vanished after insert", m.kid)
}

// List returns every key in the table, retired ones included, ordered by
// not_before, with Signing and Published as of now. It reads the database,
// not the loaded snapshot, and needs no private key.
func (s *Service) List(ctx context.Context) ([]KeyInfo, error) {
	rows, err := s.queryKeys(ctx, sqlKeysList)
	if err != nil {
		return nil, err
	}
	set := &keySet{}
	for i := range rows {
		set.keys = append(set.keys, &rows[i].signingKey)
	}
	slices.SortFunc(set.keys, compareKeys)
	now := s.clock.Now()
	signer := set.signer(now)
	out := make([]KeyInfo, 0, len(set.keys))
	for _, k := range set.keys {
		out = append(out, KeyInfo{
			KID:         k.kid,
			Alg:         k.alg,
			NotBefore:   k.notBefore.UTC(),
			RetireAfter: k.retireAfter.UTC(),
			CreatedAt:   k.createdAt.UTC(),
			Signing:     k == signer,
			Published:   k.publishedAt(now),
		})
	}
	return out, nil
}
