package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestConfigDefaults holds parseConfig to the defaults of SPEC §2.
func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c, err := parseConfig(func(string) string { return "" })
	if err != nil {
		t.Fatalf("parseConfig with an empty environment: %v", err)
	}
	want := &Config{
		Port:               3001,
		DatabaseURL:        "postgres:///mana?host=/var/run/postgresql",
		DatabaseMaxConns:   32,
		DataDir:            "./data",
		Env:                "development",
		JWTIssuer:          "manacore",
		JWTAudience:        "manacore",
		SignupBonus:        150,
		DailyFree:          5,
		RefreshReuseWindow: 10 * time.Second,
		RYWTimeout:         2 * time.Second,
		LeaseTTL:           10 * time.Second,
		BodyLimit:          1 << 20,
		Argon2MemoryKiB:    19456,
		Argon2Time:         2,
		Argon2Threads:      1,
		LogLevel:           slog.LevelInfo,
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
	if c.Production() {
		t.Error("the default environment is production")
	}
}

// TestConfigValues checks that set variables reach the struct, in every
// accepted spelling.
func TestConfigValues(t *testing.T) {
	t.Parallel()
	c, err := parseConfig(envOf(map[string]string{
		"PORT":                       " 8080 ",
		"DATABASE_URL":               "postgres://db/x",
		"NATS_URL":                   "nats://n:4222",
		"DATA_DIR":                   "/var/lib/mana",
		"MANA_ENV":                   "test",
		"JWT_ISSUER":                 "iss",
		"JWT_AUDIENCE":               "aud",
		"CORS_ORIGINS":               "https://a.example, ,https://b.example",
		"TRUSTED_PROXIES":            "10.0.0.0/8, 192.168.1.7, 2001:db8::1/64",
		"CREDITS_SIGNUP_BONUS":       "0",
		"CREDITS_DAILY_FREE":         "0",
		"REFRESH_REUSE_WINDOW":       "30s",
		"RYW_TIMEOUT":                "500ms",
		"LEASE_TTL":                  "3s",
		"BODY_LIMIT":                 "256KiB",
		"RATE_LIMITS":                "off",
		"REQUIRE_EMAIL_VERIFICATION": "true",
		"ARGON2_MEMORY_KIB":          "65536",
		"ARGON2_TIME":                "3",
		"ARGON2_THREADS":             "4",
		"JETSTREAM_MAX_AGE":          "720h",
		"LOG_LEVEL":                  "DEBUG",
	}))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"PORT", c.Port, 8080},
		{"DATABASE_URL", c.DatabaseURL, "postgres://db/x"},
		{"NATS_URL", c.NATSURL, "nats://n:4222"},
		{"DATA_DIR", c.DataDir, "/var/lib/mana"},
		{"MANA_ENV", c.Env, "test"},
		{"JWT_ISSUER", c.JWTIssuer, "iss"},
		{"JWT_AUDIENCE", c.JWTAudience, "aud"},
		{"CORS_ORIGINS", c.CORSOrigins, []string{"https://a.example", "https://b.example"}},
		{"TRUSTED_PROXIES", c.TrustedProxies, []netip.Prefix{
			netip.MustParsePrefix("10.0.0.0/8"),
			netip.MustParsePrefix("192.168.1.7/32"),
			netip.MustParsePrefix("2001:db8::/64"),
		}},
		{"CREDITS_SIGNUP_BONUS", c.SignupBonus, int64(0)},
		{"CREDITS_DAILY_FREE", c.DailyFree, int64(0)},
		{"REFRESH_REUSE_WINDOW", c.RefreshReuseWindow, 30 * time.Second},
		{"RYW_TIMEOUT", c.RYWTimeout, 500 * time.Millisecond},
		{"LEASE_TTL", c.LeaseTTL, 3 * time.Second},
		{"BODY_LIMIT", c.BodyLimit, int64(256 << 10)},
		{"RATE_LIMITS", c.RateLimits, "off"},
		{"REQUIRE_EMAIL_VERIFICATION", c.RequireEmailVerification, true},
		{"ARGON2_MEMORY_KIB", c.Argon2MemoryKiB, uint32(65536)},
		{"ARGON2_TIME", c.Argon2Time, uint32(3)},
		{"ARGON2_THREADS", c.Argon2Threads, uint8(4)},
		{"JETSTREAM_MAX_AGE", c.JetStreamMaxAge, 720 * time.Hour},
		{"LOG_LEVEL", c.LogLevel, slog.LevelDebug},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s: got %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

// TestConfigBodyLimitSizes covers the size spellings BODY_LIMIT accepts.
func TestConfigBodyLimitSizes(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{
		"1048576": 1 << 20, "1MiB": 1 << 20, "1MB": 1 << 20, "1M": 1 << 20, "2 MiB": 2 << 20,
		"512KiB": 512 << 10, "512KB": 512 << 10, "512K": 512 << 10, "64MiB": 64 << 20,
	} {
		c, err := parseConfig(envOf(map[string]string{"BODY_LIMIT": in}))
		if err != nil || c.BodyLimit != want {
			t.Errorf("BODY_LIMIT=%q: %v, %v; want %d", in, c, err, want)
		}
	}
	for _, in := range []string{"zz", "0", "-1", "65MiB", "1GiB", "9007199254740992KiB", "9223372036854775807MiB", "1.5MiB"} {
		if _, err := parseConfig(envOf(map[string]string{"BODY_LIMIT": in})); err == nil || !strings.Contains(err.Error(), "BODY_LIMIT") {
			t.Errorf("BODY_LIMIT=%q: err %v, want one naming BODY_LIMIT", in, err)
		}
	}
}

// TestConfigInvalidStopsRun checks that each invalid value stops run before
// any work, with a one-line reason naming the variable.
func TestConfigInvalidStopsRun(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, value string }{
		{"PORT", "abc"},
		{"PORT", "70000"},
		{"RYW_TIMEOUT", "x"},
		{"RYW_TIMEOUT", "-1s"},
		{"LEASE_TTL", "500ms"},
		{"LEASE_TTL", "1h"},
		{"REFRESH_REUSE_WINDOW", "soon"},
		{"DATA_KEK", "short"},
		{"DATA_KEK", hex.EncodeToString(make([]byte, 16))},
		{"EMAIL_INDEX_KEY", "!!not-base64!!"},
		{"LEDGER_SIGNING_KEY", base64.StdEncoding.EncodeToString(make([]byte, 16))},
		{"BODY_LIMIT", "zz"},
		{"LOG_LEVEL", "loud"},
		{"MANA_ENV", "prod"},
		{"TRUSTED_PROXIES", "notacidr"},
		{"TRUSTED_PROXIES", "10.0.0.0/8,10.0.0.0/99"},
		{"CREDITS_SIGNUP_BONUS", "-5"},
		{"CREDITS_DAILY_FREE", "five"},
		{"ARGON2_MEMORY_KIB", "1"},
		{"ARGON2_THREADS", "0"},
		{"REQUIRE_EMAIL_VERIFICATION", "maybe"},
		{"RATE_LIMITS", "lots"},
		{"DATABASE_MAX_CONNS", "1"},
		{"JETSTREAM_MAX_AGE", "forever"},
		{"CORS_ORIGINS", "*"},
		{"CORS_ORIGINS", "https://app.example.com,app.example.com"},
		{"CORS_ORIGINS", "https://app.example.com/path"},
		{"SMTP_URL", "http://mail.example.com"},
		{"SMTP_URL", "smtp://user:pw@mail.example.com:99999"},
		{"MAIL_FROM", "not an address"},
		{"APP_URL", "app.example.com"},
	} {
		t.Run(tc.name+"="+tc.value, func(t *testing.T) {
			t.Parallel()
			vars := map[string]string{
				// Were the value wrongly accepted, migrate would fail fast
				// here instead of touching a real database or ./data.
				"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none?connect_timeout=1&sslmode=disable",
				"DATA_DIR":     t.TempDir(),
				tc.name:        tc.value,
			}
			res := runCmd(t, vars, "migrate")
			if res.code == 0 {
				t.Fatalf("run accepted %s=%q", tc.name, tc.value)
			}
			errLines := lines(res.stderr)
			if len(errLines) != 1 {
				t.Fatalf("stderr has %d lines, want one: %q", len(errLines), res.stderr)
			}
			if want := "invalid " + tc.name + ":"; !strings.Contains(errLines[0], want) {
				t.Errorf("stderr %q does not contain %q", errLines[0], want)
			}
			if res.stdout != "" {
				t.Errorf("stdout %q, want nothing", res.stdout)
			}
		})
	}
}

// productionSecrets is a complete production environment.
func productionSecrets() map[string]string {
	key := bytes.Repeat([]byte{7}, 32)
	return map[string]string{
		"MANA_ENV":           "production",
		"DATA_KEK":           hex.EncodeToString(key),
		"EMAIL_INDEX_KEY":    base64.StdEncoding.EncodeToString(key),
		"LEDGER_SIGNING_KEY": base64.RawURLEncoding.EncodeToString(key),
		"JWT_PRIVATE_KEY":    "/etc/mana/jwt.pem",
		"CORS_ORIGINS":       "https://app.example",
	}
}

// TestConfigProductionRequiresSecrets checks that production refuses to
// start without its secrets and names every missing one.
func TestConfigProductionRequiresSecrets(t *testing.T) {
	t.Parallel()
	if _, err := parseConfig(envOf(productionSecrets())); err != nil {
		t.Fatalf("a complete production environment was refused: %v", err)
	}

	all := []string{"DATA_KEK", "EMAIL_INDEX_KEY", "LEDGER_SIGNING_KEY", "JWT_PRIVATE_KEY", "CORS_ORIGINS"}
	res := runCmd(t, map[string]string{
		"MANA_ENV":     "production",
		"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none?connect_timeout=1&sslmode=disable",
		"DATA_DIR":     t.TempDir(),
	}, "serve", "--port", "0")
	if res.code == 0 {
		t.Fatal("production started without secrets")
	}
	errLines := lines(res.stderr)
	if len(errLines) != 1 || !strings.Contains(errLines[0], "MANA_ENV") {
		t.Fatalf("stderr %q, want one line naming MANA_ENV", res.stderr)
	}
	for _, name := range all {
		if !strings.Contains(errLines[0], name) {
			t.Errorf("stderr %q does not name the missing %s", errLines[0], name)
		}
	}

	// Each secret on its own is required, and only the missing one is named.
	for _, missing := range all {
		vars := productionSecrets()
		delete(vars, missing)
		_, err := parseConfig(envOf(vars))
		if err == nil {
			t.Errorf("production started without %s", missing)
			continue
		}
		for _, name := range all {
			if got := strings.Contains(err.Error(), name); got != (name == missing) {
				t.Errorf("without %s: error %q names %s: %v", missing, err, name, got)
			}
		}
	}
}

// TestConfigProductionUsesNoDevSecrets checks that production never reads
// or writes DATA_DIR/secrets.
func TestConfigProductionUsesNoDevSecrets(t *testing.T) {
	t.Parallel()
	vars := productionSecrets()
	vars["DATA_DIR"] = t.TempDir()
	c, err := parseConfig(envOf(vars))
	if err != nil {
		t.Fatal(err)
	}
	kek := c.DataKEK
	if err := loadDevSecrets(c); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.DataKEK, kek) {
		t.Error("loadDevSecrets replaced a production key")
	}
	if entries, err := os.ReadDir(vars["DATA_DIR"]); err != nil || len(entries) != 0 {
		t.Errorf("production wrote %v into DATA_DIR (%v)", entries, err)
	}
}

// TestConfigRedisURL checks the seed's REDIS_HOST/PORT/PASSWORD spelling.
func TestConfigRedisURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		vars map[string]string
		want string
	}{
		{nil, ""},
		{map[string]string{"REDIS_PORT": "6380", "REDIS_PASSWORD": "pw"}, ""},
		{map[string]string{"REDIS_HOST": "cache"}, "redis://cache:6379/0"},
		{map[string]string{"REDIS_HOST": "cache", "REDIS_PORT": "6380"}, "redis://cache:6380/0"},
		{map[string]string{"REDIS_HOST": "cache", "REDIS_PORT": "6380", "REDIS_PASSWORD": "s3cret"}, "redis://:s3cret@cache:6380/0"},
		{map[string]string{"REDIS_HOST": "::1"}, "redis://[::1]:6379/0"},
		{map[string]string{"REDIS_HOST": "[::1]"}, "redis://[::1]:6379/0"},
		{map[string]string{"REDIS_URL": "redis://other:1/2", "REDIS_HOST": "cache"}, "redis://other:1/2"},
	} {
		c, err := parseConfig(envOf(tc.vars))
		if err != nil {
			t.Errorf("%v: %v", tc.vars, err)
			continue
		}
		if c.RedisURL != tc.want {
			t.Errorf("%v: REDIS_URL %q, want %q", tc.vars, c.RedisURL, tc.want)
		}
	}

	// A password with URL delimiters survives the round trip.
	const pw = "p@ss:w/rd?#%"
	c, err := parseConfig(envOf(map[string]string{"REDIS_HOST": "cache", "REDIS_PASSWORD": pw}))
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(c.RedisURL)
	if err != nil {
		t.Fatalf("REDIS_URL %q does not parse: %v", c.RedisURL, err)
	}
	if got, _ := u.User.Password(); got != pw || u.Host != "cache:6379" || u.Path != "/0" {
		t.Errorf("REDIS_URL %q parses to password %q host %q path %q", c.RedisURL, got, u.Host, u.Path)
	}
}

// TestConfigKeyEncodings checks that keys are accepted as hex and as every
// base64 alphabet, padded or not.
func TestConfigKeyEncodings(t *testing.T) {
	t.Parallel()
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(0xf8 + i) // wraps: gives + and / in standard base64
	}
	encodings := map[string]string{
		"hex":       hex.EncodeToString(key),
		"HEX":       strings.ToUpper(hex.EncodeToString(key)),
		"std":       base64.StdEncoding.EncodeToString(key),
		"raw std":   base64.RawStdEncoding.EncodeToString(key),
		"url":       base64.URLEncoding.EncodeToString(key),
		"raw url":   base64.RawURLEncoding.EncodeToString(key),
		"spaced ws": "  " + hex.EncodeToString(key) + "\n",
	}
	priv := ed25519.NewKeyFromSeed(key)
	for name, v := range encodings {
		c, err := parseConfig(envOf(map[string]string{"DATA_KEK": v, "EMAIL_INDEX_KEY": v, "LEDGER_SIGNING_KEY": v}))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.Equal(c.DataKEK, key) || !bytes.Equal(c.EmailIndexKey, key) {
			t.Errorf("%s: DATA_KEK %x, EMAIL_INDEX_KEY %x; want %x", name, c.DataKEK, c.EmailIndexKey, key)
		}
		if !priv.Equal(c.LedgerSigningKey) {
			t.Errorf("%s: LEDGER_SIGNING_KEY from the seed differs", name)
		}
	}
	// The 64-byte private key form, hex and base64.
	for name, v := range map[string]string{
		"hex": hex.EncodeToString(priv), "base64": base64.StdEncoding.EncodeToString(priv),
	} {
		c, err := parseConfig(envOf(map[string]string{"LEDGER_SIGNING_KEY": v}))
		if err != nil || !priv.Equal(c.LedgerSigningKey) {
			t.Errorf("LEDGER_SIGNING_KEY as a %s private key: %v", name, err)
		}
	}
	// A private key whose public half does not belong to its seed would
	// sign checkpoints nobody can verify.
	bad := bytes.Clone(priv)
	bad[63] ^= 1
	if _, err := parseConfig(envOf(map[string]string{"LEDGER_SIGNING_KEY": hex.EncodeToString(bad)})); err == nil ||
		!strings.Contains(err.Error(), "LEDGER_SIGNING_KEY") {
		t.Errorf("LEDGER_SIGNING_KEY with a foreign public half: err %v, want one naming the variable", err)
	}
}
