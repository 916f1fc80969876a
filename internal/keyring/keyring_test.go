package keyring

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/google/uuid"
)

func testKeyring(t *testing.T) *Keyring {
	t.Helper()
	kek, idx := make([]byte, KeySize), make([]byte, KeySize)
	rand.Read(kek)
	rand.Read(idx)
	k, err := New(kek, idx)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestEmailIndexNormalizes(t *testing.T) {
	t.Parallel()
	k := testKeyring(t)
	a, b := k.EmailIndex("  Alice@Example.COM "), k.EmailIndex("alice@example.com")
	if !bytes.Equal(a, b) || len(a) != 32 {
		t.Fatalf("blind index differs for one address: %x vs %x", a, b)
	}
	if bytes.Equal(a, k.EmailIndex("bob@example.com")) {
		t.Fatal("two addresses share a blind index")
	}
	if bytes.Equal(a, testKeyring(t).EmailIndex("alice@example.com")) {
		t.Fatal("blind index does not depend on the key")
	}
}

func TestDataKeyRoundTripAndBinding(t *testing.T) {
	t.Parallel()
	k := testKeyring(t)
	subject, other := uuid.New(), uuid.New()
	key, wrapped, err := k.NewDataKey(subject)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.UnwrapDataKey(other, wrapped); err != ErrDecrypt {
		t.Fatalf("wrapped key opened for another subject: %v", err)
	}
	if _, err := testKeyring(t).UnwrapDataKey(subject, wrapped); err != ErrDecrypt {
		t.Fatalf("wrapped key opened with another KEK: %v", err)
	}
	again, err := k.UnwrapDataKey(subject, wrapped)
	if err != nil {
		t.Fatal(err)
	}
	ct := key.Seal([]byte("alice@example.com"), []byte("aad"))
	if bytes.Contains(ct, []byte("alice")) {
		t.Fatal("ciphertext contains the plaintext")
	}
	pt, err := again.Open(ct, []byte("aad"))
	if err != nil || string(pt) != "alice@example.com" {
		t.Fatalf("open = %q, %v", pt, err)
	}
	if _, err := again.Open(ct, []byte("other")); err != ErrDecrypt {
		t.Fatalf("opened with another aad: %v", err)
	}
	ct[len(ct)-1] ^= 1
	if _, err := again.Open(ct, []byte("aad")); err != ErrDecrypt {
		t.Fatalf("opened a tampered ciphertext: %v", err)
	}
}

func TestNewRejectsShortKeys(t *testing.T) {
	t.Parallel()
	if _, err := New(make([]byte, 16), make([]byte, 32)); err == nil {
		t.Fatal("accepted a 16-byte KEK")
	}
	if _, err := New(make([]byte, 32), nil); err == nil {
		t.Fatal("accepted an empty index key")
	}
}
