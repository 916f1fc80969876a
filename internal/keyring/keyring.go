// Package keyring holds the service's symmetric secrets and the operations
// on them: wrapping per-subject data keys with DATA_KEK, sealing personal
// data fields with a data key (AES-256-GCM), and the email blind index
// (HMAC-SHA256 with EMAIL_INDEX_KEY).
//
// A Keyring is safe for concurrent use. It never logs or exposes key bytes.
package keyring

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
)

// KeySize is the size of every symmetric key: 32 bytes (AES-256, HMAC-SHA256).
const KeySize = 32

// ErrDecrypt is returned when a ciphertext does not authenticate: the key is
// wrong, or the data was altered.
var ErrDecrypt = errors.New("keyring: ciphertext does not authenticate")

// Keyring wraps data keys and computes blind indexes.
type Keyring struct {
	kek        cipher.AEAD
	emailIndex []byte
}

// New returns a Keyring from the 32-byte key-encryption key and the 32-byte
// blind-index key.
func New(kek, emailIndexKey []byte) (*Keyring, error) {
	if len(kek) != KeySize {
		return nil, fmt.Errorf("DATA_KEK must be %d bytes, got %d", KeySize, len(kek))
	}
	if len(emailIndexKey) != KeySize {
		return nil, fmt.Errorf("EMAIL_INDEX_KEY must be %d bytes, got %d", KeySize, len(emailIndexKey))
	}
	aead, err := newAEAD(kek)
	if err != nil {
		return nil, err
	}
	return &Keyring{kek: aead, emailIndex: append([]byte(nil), emailIndexKey...)}, nil
}

// NormalizeEmail is the form every email is compared and indexed in:
// trimmed and lower-cased.
func NormalizeEmail(email string) string {
	return strings.ToLower(strings.TrimSpace(email))
}

// EmailIndex returns HMAC-SHA256(EMAIL_INDEX_KEY, lower(trim(email))), the
// blind index under which an email is claimed and looked up.
func (k *Keyring) EmailIndex(email string) []byte {
	m := hmac.New(sha256.New, k.emailIndex)
	m.Write([]byte(NormalizeEmail(email)))
	return m.Sum(nil)
}

// NewDataKey returns a fresh random data key and its form wrapped by the
// KEK, bound to the subject so a wrapped key cannot be moved to another.
func (k *Keyring) NewDataKey(subject uuid.UUID) (key DataKey, wrapped []byte, err error) {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return DataKey{}, nil, fmt.Errorf("generate data key: %w", err)
	}
	wrapped = seal(k.kek, raw, subject[:])
	key, err = newDataKey(raw)
	return key, wrapped, err
}

// UnwrapDataKey opens a wrapped data key of subject.
func (k *Keyring) UnwrapDataKey(subject uuid.UUID, wrapped []byte) (DataKey, error) {
	raw, err := open(k.kek, wrapped, subject[:])
	if err != nil {
		return DataKey{}, err
	}
	return newDataKey(raw)
}

// DataKey is one subject's unwrapped AES-256-GCM key.
type DataKey struct {
	aead cipher.AEAD
}

func newDataKey(raw []byte) (DataKey, error) {
	aead, err := newAEAD(raw)
	return DataKey{aead: aead}, err
}

// Seal encrypts plaintext; aad binds the ciphertext to its context (the
// event and field it belongs to).
func (d DataKey) Seal(plaintext, aad []byte) []byte { return seal(d.aead, plaintext, aad) }

// Open decrypts a Seal result with the same aad.
func (d DataKey) Open(ciphertext, aad []byte) ([]byte, error) { return open(d.aead, ciphertext, aad) }

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	return cipher.NewGCM(block)
}

// seal returns nonce ‖ ciphertext ‖ tag with a random 96-bit nonce.
func seal(aead cipher.AEAD, plaintext, aad []byte) []byte {
	out := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		panic("keyring: crypto/rand failed: " + err.Error())
	}
	return aead.Seal(out, out, plaintext, aad)
}

func open(aead cipher.AEAD, data, aad []byte) ([]byte, error) {
	n := aead.NonceSize()
	if len(data) < n+aead.Overhead() {
		return nil, ErrDecrypt
	}
	plain, err := aead.Open(nil, data[:n], data[n:], aad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return plain, nil
}

// Wrap seals a secret (a signing key, a TOTP secret …) with the KEK,
// bound to label: it opens only with the same label, so a wrapped secret
// cannot be moved to another row.
func (k *Keyring) Wrap(label string, secret []byte) []byte { return seal(k.kek, secret, []byte(label)) }

// Unwrap opens a Wrap result with the same label.
func (k *Keyring) Unwrap(label string, wrapped []byte) ([]byte, error) {
	return open(k.kek, wrapped, []byte(label))
}

// MAC returns HMAC-SHA256 of msg under a key derived from the KEK for
// purpose: keyed hashes of reset tokens and the like, stable across
// restarts without storing another key.
func (k *Keyring) MAC(purpose string, msg []byte) []byte {
	d := hmac.New(sha256.New, k.emailIndex)
	d.Write([]byte("mana:" + purpose))
	m := hmac.New(sha256.New, d.Sum(nil))
	m.Write(msg)
	return m.Sum(nil)
}
