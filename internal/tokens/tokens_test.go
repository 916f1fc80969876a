package tokens

import (
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
)

// segment decodes one base64url part of a compact token into a map.
func segment(t testing.TB, token string, i int) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err != nil {
		t.Fatalf("decode part %d: %v", i, err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("part %d: %v", i, err)
	}
	return m
}

func TestSignVerifyRoundTrip(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.serviceWithKey(t)
	kid := signer(t, s).kid

	for _, device := range []string{"", "phone-1"} {
		in := sampleClaims(device)
		tok := mustSign(t, s, in)

		got, err := s.Verify(tok)
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		if _, err := uuid.Parse(got.ID); err != nil {
			t.Fatalf("jti %q is not a UUID", got.ID)
		}
		want := in
		want.Issuer, want.Audience = testIssuer, []string{testAudience}
		want.IssuedAt, want.ExpiresAt = t0, t0.Add(domain.AccessTokenTTL)
		want.ID = got.ID
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("claims\n got %+v\nwant %+v", got, want)
		}

		header := segment(t, tok, 0)
		if header["alg"] != "RS256" || header["kid"] != kid || header["typ"] != "JWT" {
			t.Fatalf("header %v, want alg RS256, kid %s, typ JWT", header, kid)
		}
		payload := segment(t, tok, 1)
		wantPayload := map[string]any{
			"sub": in.Subject.String(), "email": in.Email, "role": in.Role, "sid": in.SessionID.String(),
			"iss": testIssuer, "aud": []any{testAudience},
			"iat": float64(t0.Unix()), "exp": float64(t0.Add(15 * time.Minute).Unix()), "jti": got.ID,
		}
		if device != "" {
			wantPayload["did"] = device
		}
		if !reflect.DeepEqual(payload, wantPayload) {
			t.Fatalf("payload\n got %v\nwant %v", payload, wantPayload)
		}
	}

	a, b := mustSign(t, s, sampleClaims("")), mustSign(t, s, sampleClaims(""))
	if segment(t, a, 1)["jti"] == segment(t, b, 1)["jti"] {
		t.Fatal("two tokens share a jti")
	}
}

func TestSignRefusesIncompleteClaims(t *testing.T) {
	t.Parallel()
	s := newFixture(t).serviceWithKey(t)
	for name, mutate := range map[string]func(*domain.Claims){
		"no subject": func(c *domain.Claims) { c.Subject = uuid.Nil },
		"no session": func(c *domain.Claims) { c.SessionID = uuid.Nil },
		"no role":    func(c *domain.Claims) { c.Role = "" },
	} {
		c := sampleClaims("")
		mutate(&c)
		if _, err := s.Sign(c); err == nil {
			t.Errorf("%s: Sign succeeded", name)
		}
	}
}

func TestServiceWithoutKeys(t *testing.T) {
	t.Parallel()
	s := newFixture(t).service(t)
	if _, err := s.Sign(sampleClaims("")); err == nil {
		t.Fatal("Sign without a key succeeded")
	}
	if got := string(s.JWKS()); got != `{"keys":[]}` {
		t.Fatalf("JWKS %s", got)
	}
}

// forge builds a token the way an attacker would: any method, key, kid
// (nil: no kid header) and claims, starting from claims a valid token of
// s would carry.
func forge(t testing.TB, s *Service, method jwt.SigningMethod, key any, kid any, mutate func(jwt.MapClaims)) string {
	t.Helper()
	now := s.clock.Now()
	claims := jwt.MapClaims{
		"sub": uuid.NewString(), "email": "mallory@example.com", "role": domain.RoleAdmin,
		"sid": uuid.NewString(), "iss": testIssuer, "aud": []string{testAudience},
		"iat": now.Unix(), "exp": now.Add(15 * time.Minute).Unix(), "jti": uuid.NewString(),
	}
	if mutate != nil {
		mutate(claims)
	}
	tok := jwt.NewWithClaims(method, claims)
	if kid != nil {
		tok.Header["kid"] = kid
	}
	signed, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("forge: %v", err)
	}
	return signed
}

func TestVerifyRejectsAttacks(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.serviceWithKey(t)
	k := signer(t, s)
	valid := mustSign(t, s, sampleClaims(""))

	// The forging path itself must work, or every rejection below proves
	// nothing.
	if _, err := s.Verify(forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, nil)); err != nil {
		t.Fatalf("control: a token forged with the real key and kid is rejected: %v", err)
	}

	tampered := func() string {
		parts := strings.Split(valid, ".")
		var claims map[string]any
		raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
		_ = json.Unmarshal(raw, &claims)
		claims["role"] = domain.RoleAdmin
		raw, _ = json.Marshal(claims)
		parts[1] = base64.RawURLEncoding.EncodeToString(raw)
		return strings.Join(parts, ".")
	}()

	cases := []struct {
		name  string
		token string
		code  domain.Code
	}{
		{"alg none", forge(t, s, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, k.kid, nil), domain.CodeTokenInvalid},
		{"alg none without signature part", strings.Join(strings.Split(forge(t, s, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, k.kid, nil), ".")[:2], "."), domain.CodeTokenInvalid},
		{"HS256 keyed with the public key PEM", forge(t, s, jwt.SigningMethodHS256, []byte(k.publicPEM), k.kid, nil), domain.CodeTokenInvalid},
		{"HS256 keyed with the JWK modulus", forge(t, s, jwt.SigningMethodHS256, []byte(k.n), k.kid, nil), domain.CodeTokenInvalid},
		{"PS256 with the real key", forge(t, s, jwt.SigningMethodPS256, k.priv, k.kid, nil), domain.CodeTokenInvalid},
		{"RS512 with the real key", forge(t, s, jwt.SigningMethodRS512, k.priv, k.kid, nil), domain.CodeTokenInvalid},
		{"unknown kid", forge(t, s, jwt.SigningMethodRS256, k.priv, "no-such-kid", nil), domain.CodeTokenInvalid},
		{"kid missing", forge(t, s, jwt.SigningMethodRS256, k.priv, nil, nil), domain.CodeTokenInvalid},
		{"kid not a string", forge(t, s, jwt.SigningMethodRS256, k.priv, 7, nil), domain.CodeTokenInvalid},
		{"another RSA key with a known kid", forge(t, s, jwt.SigningMethodRS256, foreignKey(), k.kid, nil), domain.CodeTokenInvalid},
		{"expired", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) {
			c["iat"] = t0.Add(-16 * time.Minute).Unix()
			c["exp"] = t0.Add(-time.Minute).Unix()
		}), domain.CodeTokenExpired},
		{"expired and wrong audience", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) {
			c["iat"] = t0.Add(-16 * time.Minute).Unix()
			c["exp"] = t0.Add(-time.Minute).Unix()
			c["aud"] = "other-app"
		}), domain.CodeTokenInvalid},
		{"expired with a foreign key", forge(t, s, jwt.SigningMethodRS256, foreignKey(), k.kid, func(c jwt.MapClaims) {
			c["exp"] = t0.Add(-time.Minute).Unix()
		}), domain.CodeTokenInvalid},
		{"wrong audience", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) { c["aud"] = []string{"other-app"} }), domain.CodeTokenInvalid},
		{"audience missing", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) { delete(c, "aud") }), domain.CodeTokenInvalid},
		{"wrong issuer", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) { c["iss"] = "https://evil.example" }), domain.CodeTokenInvalid},
		{"issuer missing", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) { delete(c, "iss") }), domain.CodeTokenInvalid},
		{"exp missing", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) { delete(c, "exp") }), domain.CodeTokenInvalid},
		{"exp a string", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) { c["exp"] = "tomorrow" }), domain.CodeTokenInvalid},
		{"iat missing", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) { delete(c, "iat") }), domain.CodeTokenInvalid},
		{"iat in the future", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) { c["iat"] = t0.Add(2 * time.Minute).Unix() }), domain.CodeTokenInvalid},
		{"nbf in the future", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) { c["nbf"] = t0.Add(5 * time.Minute).Unix() }), domain.CodeTokenInvalid},
		{"sub not a UUID", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) { c["sub"] = "admin" }), domain.CodeTokenInvalid},
		{"sid missing", forge(t, s, jwt.SigningMethodRS256, k.priv, k.kid, func(c jwt.MapClaims) { delete(c, "sid") }), domain.CodeTokenInvalid},
		{"tampered payload", tampered, domain.CodeTokenInvalid},
		{"signature stripped", valid[:strings.LastIndex(valid, ".")+1], domain.CodeTokenInvalid},
		{"signature truncated", valid[:len(valid)-4], domain.CodeTokenInvalid},
		{"padded base64", valid + "==", domain.CodeTokenInvalid},
		{"empty", "", domain.CodeTokenInvalid},
		{"garbage", "not a token", domain.CodeTokenInvalid},
		{"three dots", "...", domain.CodeTokenInvalid},
		{"four parts", valid + ".x", domain.CodeTokenInvalid},
		{"bearer prefix", "Bearer " + valid, domain.CodeTokenInvalid},
		{"header not JSON", "bm90IGpzb24." + strings.SplitN(valid, ".", 2)[1], domain.CodeTokenInvalid},
		{"huge", strings.Repeat("a", 1<<20), domain.CodeTokenInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := s.Verify(c.token)
			wantCode(t, err, c.code, c.token)
		})
	}
	t.Run("crit header", func(t *testing.T) {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
			"sub": uuid.NewString(), "role": "user", "sid": uuid.NewString(), "iss": testIssuer,
			"aud": testAudience, "iat": t0.Unix(), "exp": t0.Add(time.Minute).Unix(), "jti": "x",
		})
		tok.Header["kid"], tok.Header["crit"] = k.kid, []string{"exp"}
		signed, err := tok.SignedString(k.priv)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Verify(signed)
		wantCode(t, err, domain.CodeTokenInvalid, signed)
	})
	// The valid token is still fine after all that.
	if _, err := s.Verify(valid); err != nil {
		t.Fatalf("valid token: %v", err)
	}
}

func TestVerifyExpiry(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.serviceWithKey(t)
	tok := mustSign(t, s, sampleClaims(""))

	f.clock.Set(t0.Add(domain.AccessTokenTTL + Leeway - time.Second))
	if _, err := s.Verify(tok); err != nil {
		t.Fatalf("within the leeway: %v", err)
	}
	f.clock.Set(t0.Add(domain.AccessTokenTTL + Leeway))
	_, err := s.Verify(tok)
	wantCode(t, err, domain.CodeTokenExpired, tok)
	f.clock.Set(t0.Add(16 * time.Minute))
	_, err = s.Verify(tok)
	wantCode(t, err, domain.CodeTokenExpired, tok)
}

// TestJWKSCrossCheck checks the JWKS and a signed token with go-jose, an
// independent JOSE implementation, and the reverse: a token go-jose signs
// with the service's key verifies.
func TestJWKSCrossCheck(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.serviceWithKey(t)
	in := sampleClaims("tablet")
	tok := mustSign(t, s, in)

	var set jose.JSONWebKeySet
	if err := json.Unmarshal(s.JWKS(), &set); err != nil {
		t.Fatalf("go-jose cannot parse the JWKS: %v", err)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("JWKS has %d keys", len(set.Keys))
	}
	jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("go-jose parse: %v", err)
	}
	kid := jws.Signatures[0].Header.KeyID
	found := set.Key(kid)
	if len(found) != 1 {
		t.Fatalf("kid %q: %d keys in the JWKS", kid, len(found))
	}
	jwk := found[0]
	if jwk.Algorithm != "RS256" || jwk.Use != "sig" || !jwk.Valid() || !jwk.IsPublic() {
		t.Fatalf("JWK alg %q use %q valid %v public %v", jwk.Algorithm, jwk.Use, jwk.Valid(), jwk.IsPublic())
	}
	pub, ok := jwk.Key.(*rsa.PublicKey)
	if !ok || pub.N.BitLen() != 2048 || pub.E != 65537 {
		t.Fatalf("JWK key %T", jwk.Key)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		t.Fatalf("go-jose verify: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]any{
		"sub": in.Subject.String(), "sid": in.SessionID.String(), "email": in.Email, "role": in.Role,
		"did": "tablet", "iss": testIssuer, "aud": []any{testAudience},
		"iat": float64(t0.Unix()), "exp": float64(t0.Unix() + 900),
	} {
		if !reflect.DeepEqual(claims[name], want) {
			t.Errorf("claim %s = %v, want %v", name, claims[name], want)
		}
	}
	if _, err := jws.Verify(&foreignKey().PublicKey); err == nil {
		t.Fatal("go-jose verified with a foreign key")
	}

	// The other direction: go-jose signs, Verify accepts.
	k := signer(t, s)
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: k.priv, KeyID: k.kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := sig.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	compact, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Verify(compact)
	if err != nil {
		t.Fatalf("Verify of a go-jose token: %v", err)
	}
	if got.Subject != in.Subject || got.SessionID != in.SessionID || got.DeviceID != "tablet" {
		t.Fatalf("claims of the go-jose token: %+v", got)
	}
}

func TestJWKSShape(t *testing.T) {
	t.Parallel()
	s := newFixture(t).serviceWithKey(t)
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(s.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("%d keys", len(set.Keys))
	}
	got := set.Keys[0]
	var names []string
	for n := range got {
		names = append(names, n)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"alg", "e", "kid", "kty", "n", "use"}) {
		t.Fatalf("JWK members %v: no private parts, nothing extra", names)
	}
	if got["kty"] != "RSA" || got["e"] != "AQAB" || got["kid"] != signer(t, s).kid {
		t.Fatalf("JWK %v", got)
	}
}

// FuzzVerify feeds arbitrary strings to Verify: it never panics, fails
// only with TOKEN_INVALID or TOKEN_EXPIRED, and accepts nothing but an
// unchanged token the service signed.
func FuzzVerify(f *testing.F) {
	fx := newFixture(f)
	s := fx.serviceWithKey(f)
	k := signer(f, s)
	valid := mustSign(f, s, sampleClaims("d"))
	f.Add(valid)
	f.Add(forge(f, s, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, k.kid, nil))
	f.Add(forge(f, s, jwt.SigningMethodHS256, []byte(k.publicPEM), k.kid, nil))
	f.Add("")
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Fuzz(func(t *testing.T, token string) {
		_, err := s.Verify(token)
		if err == nil {
			if token != valid {
				t.Fatalf("accepted a token the service did not sign: %q", token)
			}
			return
		}
		if c := domain.ErrorCode(err); c != domain.CodeTokenInvalid && c != domain.CodeTokenExpired {
			t.Fatalf("code %s", c)
		}
	})
}

func BenchmarkSign(b *testing.B) {
	s := newFixture(b).serviceWithKey(b)
	c := sampleClaims("device")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Sign(c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	s := newFixture(b).serviceWithKey(b)
	tok := mustSign(b, s, sampleClaims("device"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}
