package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/mail"
	"github.com/manacore/mana/internal/ratelimit"
)

// Config is the service's configuration, parsed once from the environment
// (flags may override single values). The zero value is invalid; use
// parseConfig, which applies the defaults of SPEC §2.
type Config struct {
	Port        int
	DatabaseURL string
	// DatabaseMaxConns bounds the pool; PostgreSQL peaks near 32 writers on
	// a small box.
	DatabaseMaxConns int32
	NATSURL          string
	RedisURL         string
	DataDir          string
	Env              string

	// Secrets: raw key bytes. Empty means "generate in DataDir" outside
	// production.
	DataKEK          []byte
	EmailIndexKey    []byte
	LedgerSigningKey ed25519.PrivateKey

	JWTPrivateKey string
	JWTPublicKey  string
	JWTIssuer     string
	JWTAudience   string

	CORSOrigins    []string
	TrustedProxies []netip.Prefix

	SignupBonus int64
	DailyFree   int64

	RefreshReuseWindow time.Duration
	RYWTimeout         time.Duration
	// LeaseTTL is how long a single-writer lease (relay, projections,
	// workers) outlives its holder's last renewal: how long a crashed
	// process blocks a takeover.
	LeaseTTL   time.Duration
	BodyLimit  int64
	RateLimits string

	RequireEmailVerification bool

	Argon2MemoryKiB uint32
	Argon2Time      uint32
	Argon2Threads   uint8

	JetStreamMaxAge time.Duration

	StripeSecretKey     string
	StripeWebhookSecret string
	StripeAPIBase       string
	SMTPURL             string
	// MailFrom is the sender of mails (MAIL_FROM), AppURL the web app the
	// verification and reset mails link to (APP_URL); see docs/mail.md.
	MailFrom string
	AppURL   string

	LogLevel slog.Level
}

// Production reports whether MANA_ENV is production.
func (c *Config) Production() bool { return c.Env == "production" }

// configError names the variable whose value is invalid.
type configError struct {
	name, msg string
}

func (e *configError) Error() string { return fmt.Sprintf("invalid %s: %s", e.name, e.msg) }

// parseConfig reads every variable through getenv, applying defaults. The
// first invalid value stops it with an error naming the variable.
func parseConfig(getenv func(string) string) (*Config, error) {
	p := envParser{getenv: getenv}
	c := &Config{
		Port:             int(p.int("PORT", 3001, 0, 65535)),
		DatabaseURL:      p.str("DATABASE_URL", "postgres:///mana?host=/var/run/postgresql"),
		DatabaseMaxConns: int32(p.int("DATABASE_MAX_CONNS", 32, 2, 1000)),
		NATSURL:          p.str("NATS_URL", ""),
		RedisURL:         p.redisURL(),
		DataDir:          p.str("DATA_DIR", "./data"),
		Env:              p.oneOf("MANA_ENV", "development", "development", "test", "production"),
		DataKEK:          p.key32("DATA_KEK"),
		EmailIndexKey:    p.key32("EMAIL_INDEX_KEY"),
		LedgerSigningKey: p.ed25519("LEDGER_SIGNING_KEY"),
		JWTPrivateKey:    p.str("JWT_PRIVATE_KEY", ""),
		JWTPublicKey:     p.str("JWT_PUBLIC_KEY", ""),
		JWTIssuer:        p.str("JWT_ISSUER", "manacore"),
		JWTAudience:      p.str("JWT_AUDIENCE", "manacore"),
		CORSOrigins:      p.list("CORS_ORIGINS"),
		TrustedProxies:   p.prefixes("TRUSTED_PROXIES"),
		SignupBonus:      p.int("CREDITS_SIGNUP_BONUS", 150, 0, 1<<40),
		DailyFree:        p.int("CREDITS_DAILY_FREE", 5, 0, 1<<40),

		RefreshReuseWindow:       p.duration("REFRESH_REUSE_WINDOW", 10*time.Second),
		RYWTimeout:               p.duration("RYW_TIMEOUT", 2*time.Second),
		LeaseTTL:                 p.duration("LEASE_TTL", eventstore.DefaultLeaseTTL),
		BodyLimit:                p.size("BODY_LIMIT", 1<<20),
		RateLimits:               p.str("RATE_LIMITS", ""),
		RequireEmailVerification: p.bool("REQUIRE_EMAIL_VERIFICATION", false),
		Argon2MemoryKiB:          uint32(p.int("ARGON2_MEMORY_KIB", 19456, 1024, 4<<20)),
		Argon2Time:               uint32(p.int("ARGON2_TIME", 2, 1, 100)),
		Argon2Threads:            uint8(p.int("ARGON2_THREADS", 1, 1, 255)),
		JetStreamMaxAge:          p.duration("JETSTREAM_MAX_AGE", 0),
		StripeSecretKey:          p.str("STRIPE_SECRET_KEY", ""),
		StripeWebhookSecret:      p.str("STRIPE_WEBHOOK_SECRET", ""),
		StripeAPIBase:            p.str("STRIPE_API_BASE", ""),
		SMTPURL:                  p.str("SMTP_URL", ""),
		MailFrom:                 p.str("MAIL_FROM", ""),
		AppURL:                   p.str("APP_URL", ""),
		LogLevel:                 p.level("LOG_LEVEL"),
	}
	if p.err != nil {
		return nil, p.err
	}
	return c, c.Validate()
}

// Validate checks the relations between values.
func (c *Config) Validate() error {
	if c.Production() {
		var missing []string
		if len(c.DataKEK) == 0 {
			missing = append(missing, "DATA_KEK")
		}
		if len(c.EmailIndexKey) == 0 {
			missing = append(missing, "EMAIL_INDEX_KEY")
		}
		if len(c.LedgerSigningKey) == 0 {
			missing = append(missing, "LEDGER_SIGNING_KEY")
		}
		if c.JWTPrivateKey == "" {
			missing = append(missing, "JWT_PRIVATE_KEY")
		}
		if len(c.CORSOrigins) == 0 {
			missing = append(missing, "CORS_ORIGINS")
		}
		if len(missing) > 0 {
			return &configError{"MANA_ENV", "production requires " + strings.Join(missing, ", ")}
		}
	}
	if err := api.ValidateCORSOrigins(c.CORSOrigins); err != nil {
		return &configError{"CORS_ORIGINS", err.Error()}
	}
	if _, err := ratelimit.Parse(c.RateLimits); err != nil {
		return &configError{"RATE_LIMITS", err.Error()}
	}
	if c.LeaseTTL < time.Second || c.LeaseTTL > 5*time.Minute {
		return &configError{"LEASE_TTL", "want a duration from 1s to 5m"}
	}
	if c.DataDir == "" {
		return &configError{"DATA_DIR", "must not be empty"}
	}
	if c.SMTPURL != "" {
		if _, err := mail.ParseSMTPURL(c.SMTPURL); err != nil {
			return &configError{"SMTP_URL", err.Error()}
		}
	}
	if _, err := mail.NewRenderer(c.MailFrom, ""); err != nil {
		return &configError{"MAIL_FROM", err.Error()}
	}
	if _, err := mail.NewRenderer("", c.AppURL); err != nil {
		return &configError{"APP_URL", err.Error()}
	}
	return nil
}

type envParser struct {
	getenv func(string) string
	err    error
}

func (p *envParser) fail(name, msg string) {
	if p.err == nil {
		p.err = &configError{name, msg}
	}
}

func (p *envParser) str(name, def string) string {
	if v := strings.TrimSpace(p.getenv(name)); v != "" {
		return v
	}
	return def
}

func (p *envParser) int(name string, def, lo, hi int64) int64 {
	v := p.str(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		p.fail(name, fmt.Sprintf("want an integer in [%d, %d]", lo, hi))
		return def
	}
	return n
}

func (p *envParser) bool(name string, def bool) bool {
	v := p.str(name, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		p.fail(name, "want true or false")
		return def
	}
	return b
}

func (p *envParser) duration(name string, def time.Duration) time.Duration {
	v := p.str(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		p.fail(name, "want a duration such as 10s or 2m")
		return def
	}
	return d
}

// size parses a byte size: a plain number, or a number with KiB, MiB, KB,
// MB (binary multiples either way).
func (p *envParser) size(name string, def int64) int64 {
	v := p.str(name, "")
	if v == "" {
		return def
	}
	mult := int64(1)
	for _, s := range []struct {
		suffix string
		m      int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"K", 1 << 10}, {"M", 1 << 20}} {
		if strings.HasSuffix(v, s.suffix) {
			v, mult = strings.TrimSpace(strings.TrimSuffix(v, s.suffix)), s.m
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	// Compared before multiplying: n*mult could overflow to a negative.
	if err != nil || n <= 0 || n > (64<<20)/mult {
		p.fail(name, "want a size such as 1MiB (at most 64MiB)")
		return def
	}
	return n * mult
}

func (p *envParser) oneOf(name, def string, allowed ...string) string {
	v := p.str(name, def)
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	p.fail(name, "want one of "+strings.Join(allowed, ", "))
	return def
}

func (p *envParser) list(name string) []string {
	var out []string
	for _, s := range strings.Split(p.str(name, ""), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (p *envParser) prefixes(name string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range p.list(name) {
		if !strings.Contains(s, "/") {
			if a, err := netip.ParseAddr(s); err == nil {
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
				continue
			}
		}
		pf, err := netip.ParsePrefix(s)
		if err != nil {
			p.fail(name, fmt.Sprintf("%q is not a CIDR", s))
			return nil
		}
		out = append(out, pf.Masked())
	}
	return out
}

func (p *envParser) level(name string) slog.Level {
	switch strings.ToLower(p.str(name, "info")) {
	case "debug":
		return slog.LevelDebug
	case "info":
		return slog.LevelInfo
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	p.fail(name, "want debug, info, warn or error")
	return slog.LevelInfo
}

func (p *envParser) redisURL() string {
	if u := p.str("REDIS_URL", ""); u != "" {
		return u
	}
	host := p.str("REDIS_HOST", "")
	if host == "" {
		return ""
	}
	// Built with net/url so a password with URL delimiters and an IPv6
	// host survive.
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	u := url.URL{Scheme: "redis", Host: net.JoinHostPort(host, p.str("REDIS_PORT", "6379")), Path: "/0"}
	if pw := p.str("REDIS_PASSWORD", ""); pw != "" {
		u.User = url.UserPassword("", pw)
	}
	return u.String()
}

// key32 decodes a 32-byte key given as 64 hex digits or base64 (standard or
// URL alphabet, padded or not).
func (p *envParser) key32(name string) []byte {
	v := p.str(name, "")
	if v == "" {
		return nil
	}
	b, err := decodeKey(v)
	if err != nil || len(b) != 32 {
		p.fail(name, "want 32 bytes as 64 hex digits or base64")
		return nil
	}
	return b
}

// ed25519 decodes an Ed25519 key given as its 32-byte seed or 64-byte
// private key, in hex or base64.
func (p *envParser) ed25519(name string) ed25519.PrivateKey {
	v := p.str(name, "")
	if v == "" {
		return nil
	}
	b, err := decodeKey(v)
	switch {
	case err == nil && len(b) == ed25519.SeedSize:
		return ed25519.NewKeyFromSeed(b)
	case err == nil && len(b) == ed25519.PrivateKeySize &&
		ed25519.NewKeyFromSeed(b[:ed25519.SeedSize]).Equal(ed25519.PrivateKey(b)):
		// The public half must belong to the seed, or signatures would not
		// verify.
		return ed25519.PrivateKey(b)
	}
	p.fail(name, "want an Ed25519 seed (32 bytes) or private key (64 bytes), hex or base64")
	return nil
}

func decodeKey(v string) ([]byte, error) {
	if len(v) == 64 || len(v) == 128 {
		if b, err := hex.DecodeString(v); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(v); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not hex or base64")
}
