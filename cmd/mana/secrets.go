package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// loadDevSecrets fills every secret the environment did not give from
// DATA_DIR/secrets/, generating and storing it (mode 0600) on first use.
// Production never gets here: Validate refuses to start without them.
// Losing these files makes stored personal data unreadable.
func loadDevSecrets(c *Config) error {
	if c.Production() {
		return nil
	}
	dir := filepath.Join(c.DataDir, "secrets")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("DATA_DIR: %w", err)
	}
	var err error
	if c.DataKEK == nil {
		if c.DataKEK, err = devKey(dir, "data_kek", 32); err != nil {
			return err
		}
	}
	if c.EmailIndexKey == nil {
		if c.EmailIndexKey, err = devKey(dir, "email_index_key", 32); err != nil {
			return err
		}
	}
	if c.LedgerSigningKey == nil {
		seed, err := devKey(dir, "ledger_signing_key", ed25519.SeedSize)
		if err != nil {
			return err
		}
		c.LedgerSigningKey = ed25519.NewKeyFromSeed(seed)
	}
	return nil
}

// devKey reads a base64 key file, or creates it atomically when missing so
// two processes starting together agree on one key.
func devKey(dir, name string, size int) ([]byte, error) {
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		if err := createKeyFile(dir, name, size); err != nil {
			return nil, err
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(key) != size {
		return nil, fmt.Errorf("%s: want %d bytes of base64", path, size)
	}
	return key, nil
}

// createKeyFile writes a fresh random key unless the file appeared
// meanwhile.
func createKeyFile(dir, name string, size int) error {
	path := filepath.Join(dir, name)
	key := make([]byte, size)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, name+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(base64.StdEncoding.EncodeToString(key) + "\n")
	cerr := tmp.Close()
	if werr != nil || cerr != nil {
		return fmt.Errorf("write %s: %w", path, errors.Join(werr, cerr))
	}
	// Link, not rename: if another process created the key first, keep its
	// key.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
