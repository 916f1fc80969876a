package tokens

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/manacore/mana/domain"
)

// jwtVerifyWith checks only token's RS256 signature against pub.
func jwtVerifyWith(token string, pub *rsa.PublicKey) (*jwt.Token, error) {
	return jwt.Parse(token, func(*jwt.Token) (any, error) { return pub, nil },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithoutClaimsValidation())
}

// jwksKIDs returns the kids of s's JWKS, in its order.
func jwksKIDs(t testing.TB, s *Service) []string {
	t.Helper()
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(s.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.Kid)
	}
	return out
}

func headerKID(t testing.TB, token string) string {
	t.Helper()
	kid, _ := segment(t, token, 0)["kid"].(string)
	return kid
}

func TestRotation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.serviceWithKey(t)
	other := f.service(t) // a second node
	old := signer(t, s).kid
	tokOld := mustSign(t, s, sampleClaims(""))

	f.clock.Set(t0.Add(time.Minute))
	rotated := t0.Add(time.Minute)
	info, err := s.Rotate(ctx(t))
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if !info.NotBefore.Equal(rotated.Add(RotationDelay)) || info.Signing || !info.Published || !info.RetireAfter.IsZero() {
		t.Fatalf("rotated key %+v", info)
	}
	list, err := s.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].KID != old || !list[0].Signing ||
		!list[0].RetireAfter.Equal(rotated.Add(RotationDelay+RetireGrace)) {
		t.Fatalf("after rotation: %+v", list)
	}
	if err := other.Reload(ctx(t)); err != nil {
		t.Fatal(err)
	}

	// Published at once, on every node; the old key still signs.
	for _, node := range []*Service{s, other} {
		if got := jwksKIDs(t, node); !slices.Equal(got, []string{old, info.KID}) {
			t.Fatalf("JWKS kids %v, want [%s %s]", got, old, info.KID)
		}
		if _, err := node.Verify(tokOld); err != nil {
			t.Fatalf("old token after rotation: %v", err)
		}
	}
	f.clock.Set(rotated.Add(RotationDelay - time.Second))
	lastOld := mustSign(t, s, sampleClaims(""))
	if headerKID(t, lastOld) != old {
		t.Fatal("the new key signs before its not_before")
	}

	// At not_before the new key takes over, on both nodes, without a reload.
	f.clock.Set(rotated.Add(RotationDelay))
	for _, node := range []*Service{s, other} {
		tok := mustSign(t, node, sampleClaims(""))
		if headerKID(t, tok) != info.KID {
			t.Fatalf("signed with %s at not_before, want %s", headerKID(t, tok), info.KID)
		}
		if _, err := node.Verify(lastOld); err != nil {
			t.Fatalf("last token of the old key: %v", err)
		}
	}

	// Just before retire_after the old key is still published.
	retire := rotated.Add(RotationDelay + RetireGrace)
	f.clock.Set(retire.Add(-time.Second))
	if got := jwksKIDs(t, s); len(got) != 2 {
		t.Fatalf("JWKS before retire_after: %v", got)
	}

	// After retire_after it is gone: not in the JWKS, its tokens rejected
	// as unknown (INVALID, not merely EXPIRED), and a fresh node does not
	// even load it.
	f.clock.Set(retire)
	if got := jwksKIDs(t, s); !slices.Equal(got, []string{info.KID}) {
		t.Fatalf("JWKS after retire_after: %v", got)
	}
	_, err = s.Verify(lastOld)
	wantCode(t, err, domain.CodeTokenInvalid, lastOld)
	fresh := f.service(t)
	if _, ok := fresh.keys.Load().byKID[old]; ok {
		t.Fatal("a retired key was loaded")
	}
	list, err = s.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Published || list[0].Signing || !list[1].Signing || !list[1].Published {
		t.Fatalf("list after retirement: %+v", list)
	}
}

func TestRotateTwiceKeepsEarlierRetirement(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.serviceWithKey(t)
	first, err := s.Rotate(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(5 * time.Minute)
	second, err := s.Rotate(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	list, err := s.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 {
		t.Fatalf("%d keys", len(list))
	}
	// The original key keeps the retirement of the first rotation; the
	// first rotated key, never having signed, retires after the second's.
	if !list[0].RetireAfter.Equal(first.NotBefore.Add(RetireGrace)) ||
		list[1].KID != first.KID || !list[1].RetireAfter.Equal(second.NotBefore.Add(RetireGrace)) ||
		list[2].KID != second.KID || !list[2].RetireAfter.IsZero() {
		t.Fatalf("after two rotations: %+v", list)
	}
	f.clock.Set(second.NotBefore)
	if kid := headerKID(t, mustSign(t, s, sampleClaims(""))); kid != second.KID {
		t.Fatalf("signing with %s, want %s", kid, second.KID)
	}
}

func TestGenerateSignsAtOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.serviceWithKey(t)
	info, err := s.Generate(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !info.Signing || !info.Published || !info.NotBefore.Equal(t0) {
		t.Fatalf("generated %+v", info)
	}
	if kid := headerKID(t, mustSign(t, s, sampleClaims(""))); kid != info.KID {
		t.Fatalf("signing with %s, want %s", kid, info.KID)
	}
	if len(kids(t, s)) != 2 {
		t.Fatal("want two keys")
	}
}

func TestSecondInstanceSeesKeyAfterReload(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a := f.serviceWithKey(t)
	b := f.service(t)
	info, err := a.Generate(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	tok := mustSign(t, a, sampleClaims(""))
	if kid := headerKID(t, tok); kid != info.KID {
		t.Fatalf("a signs with %s", kid)
	}
	_, err = b.Verify(tok)
	wantCode(t, err, domain.CodeTokenInvalid, tok)

	if err := b.Reload(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Verify(tok); err != nil {
		t.Fatalf("after Reload: %v", err)
	}
	if !slices.Contains(jwksKIDs(t, b), info.KID) {
		t.Fatal("key missing from b's JWKS")
	}
	if kid := headerKID(t, mustSign(t, b, sampleClaims(""))); kid != info.KID {
		t.Fatalf("b signs with %s, want %s", kid, info.KID)
	}
}

func TestRunReloads(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a := f.serviceWithKey(t)
	b := f.service(t)
	b.reloadEvery = 10 * time.Millisecond
	reloaded := make(chan error)
	b.afterReload = func(err error) {
		select {
		case reloaded <- err:
		case <-t.Context().Done():
		}
	}
	done := make(chan struct{})
	runCtx, stop := context.WithCancel(ctx(t))
	defer stop()
	go func() { b.Run(runCtx); close(done) }()

	info, err := a.Generate(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for !slices.Contains(jwksKIDs(t, b), info.KID) {
		if err := <-reloaded; err != nil {
			t.Fatalf("reload: %v", err)
		}
	}
	stop()
	for {
		select {
		case <-done:
			return
		case <-reloaded: // a reload in flight when stop was called
		}
	}
}

func TestEnsureKeyConcurrent(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	nodes := make([]*Service, 4)
	for i := range nodes {
		nodes[i] = f.service(t)
	}
	start := make(chan struct{})
	errs := make(chan error, len(nodes))
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() {
			<-start
			errs <- n.EnsureKey(ctx(t), "")
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("EnsureKey: %v", err)
		}
	}
	all := kids(t, nodes[0])
	if len(all) != 1 {
		t.Fatalf("%d keys after 4 concurrent EnsureKey, want 1", len(all))
	}
	for i, n := range nodes {
		if kid := headerKID(t, mustSign(t, n, sampleClaims(""))); kid != all[0] {
			t.Fatalf("node %d signs with %s, want %s", i, kid, all[0])
		}
	}
	// Once a key exists EnsureKey adds nothing.
	if err := nodes[1].EnsureKey(ctx(t), ""); err != nil {
		t.Fatal(err)
	}
	if n := len(kids(t, nodes[0])); n != 1 {
		t.Fatalf("%d keys after a later EnsureKey", n)
	}
}

// testPEM returns foreignKey as PKCS#1 and PKCS#8 PEM text and its
// expected kid, computed independently of the package.
func testPEM(t testing.TB) (pkcs1, pkcs8, kid string) {
	t.Helper()
	k := foreignKey()
	pkcs1 = string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}))
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	spki, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(spki)
	return pkcs1, pkcs8, base64.RawURLEncoding.EncodeToString(sum[:16])
}

func TestEnsureKeyImport(t *testing.T) {
	t.Parallel()
	pkcs1, pkcs8, wantKID := testPEM(t)
	path := filepath.Join(t.TempDir(), "jwt.pem")
	if err := os.WriteFile(path, []byte(pkcs8), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string]string{
		"PKCS#1 text":        pkcs1,
		"PKCS#8 file":        path,
		"escaped newlines":   strings.ReplaceAll(pkcs1, "\n", `\n`),
		"PKCS#8 text padded": "\n  " + pkcs8,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			s := f.service(t)
			for range 2 { // importing twice adds nothing
				if err := s.EnsureKey(ctx(t), src); err != nil {
					t.Fatalf("EnsureKey: %v", err)
				}
			}
			if got := kids(t, s); !slices.Equal(got, []string{wantKID}) {
				t.Fatalf("kids %v, want [%s]", got, wantKID)
			}
			tok := mustSign(t, s, sampleClaims(""))
			if _, err := jwtVerifyWith(tok, &foreignKey().PublicKey); err != nil {
				t.Fatalf("token not signed by the imported key: %v", err)
			}
		})
	}
	t.Run("concurrent", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		var wg sync.WaitGroup
		for range 4 {
			s := f.service(t)
			wg.Go(func() {
				if err := s.EnsureKey(ctx(t), pkcs1); err != nil {
					t.Errorf("EnsureKey: %v", err)
				}
			})
		}
		wg.Wait()
		if got := kids(t, f.service(t)); !slices.Equal(got, []string{wantKID}) {
			t.Fatalf("kids %v", got)
		}
	})
	t.Run("insert conflict", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		s := f.service(t)
		m, err := importMaterial(pkcs8)
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range []bool{true, false} {
			added, err := s.insert(ctx(t), m, s.now(), false, time.Time{})
			if err != nil || added != want {
				t.Fatalf("insert %d: added %v, %v; want %v", i, added, err, want)
			}
		}
	})
	t.Run("ignored while a key signs", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		s := f.serviceWithKey(t)
		before := kids(t, s)
		if err := s.EnsureKey(ctx(t), pkcs1); err != nil {
			t.Fatal(err)
		}
		if got := kids(t, s); !slices.Equal(got, before) {
			t.Fatalf("kids %v, want %v", got, before)
		}
	})
}

func TestImportRejects(t *testing.T) {
	t.Parallel()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	_, pkcs8, _ := testPEM(t)
	pub := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: must(x509.MarshalPKIXPublicKey(&foreignKey().PublicKey))}))
	for name, src := range map[string]string{
		"1024-bit RSA":     string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(small)})),
		"EC key":           string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})),
		"public key":       pub,
		"corrupt PKCS#8":   strings.Replace(pkcs8, "MII", "MIX", 1),
		"no PEM block":     "-----BEGIN nonsense",
		"missing file":     filepath.Join(t.TempDir(), "absent.pem"),
		"PKCS#8 as PKCS#1": strings.ReplaceAll(pkcs8, "PRIVATE KEY", "RSA PRIVATE KEY"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := importMaterial(src)
			if err == nil {
				t.Fatal("imported")
			}
			if strings.Contains(err.Error(), "MII") {
				t.Fatalf("error quotes key material: %v", err)
			}
		})
	}
	// EnsureKey reports the bad key and adds nothing.
	f := newFixture(t)
	s := f.service(t)
	if err := s.EnsureKey(ctx(t), "-----BEGIN nonsense"); err == nil {
		t.Fatal("EnsureKey accepted a bad key")
	}
	if n := len(kids(t, s)); n != 0 {
		t.Fatalf("%d keys after a failed import", n)
	}
}

func TestNewFailsWithAnotherKEK(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.serviceWithKey(t)
	_, err := New(ctx(t), Options{Pool: f.pool, Keyring: newKeyring(t), Issuer: testIssuer, Audience: testAudience, Clock: f.clock})
	if err == nil || !strings.Contains(err.Error(), "DATA_KEK") {
		t.Fatalf("New with another KEK: %v", err)
	}
}

func TestNewValidatesOptions(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for name, o := range map[string]Options{
		"no pool":     {Keyring: f.kr, Issuer: "i", Audience: "a"},
		"no keyring":  {Pool: f.pool, Issuer: "i", Audience: "a"},
		"no issuer":   {Pool: f.pool, Keyring: f.kr, Audience: "a"},
		"no audience": {Pool: f.pool, Keyring: f.kr, Issuer: "i"},
	} {
		if _, err := New(ctx(t), o); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
