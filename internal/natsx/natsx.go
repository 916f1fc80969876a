// Package natsx connects Mana Core to NATS JetStream: an external server
// when NATS_URL is set, otherwise a JetStream server embedded in the
// process (no TCP port at all; the service talks to it in-process). It also
// declares the MANA_EVENTS stream.
package natsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamName is the JetStream stream the relay publishes the event log to.
const StreamName = "MANA_EVENTS"

// SubjectPrefix starts every event subject: mana.events.<event_type>.
const SubjectPrefix = "mana.events."

// RevocationSubject is the core NATS subject session revocations are
// announced on, besides their events.
const RevocationSubject = "mana.sessions.revoked"

// CheckpointSubject is the core NATS subject each newly signed ledger
// checkpoint is announced on, as the JSON of GET
// /api/v1/ledger/checkpoints/latest (docs/ledger.md). Core NATS: at most
// once, no replay; the API and the database keep every checkpoint.
const CheckpointSubject = "mana.ledger.checkpoints"

// DuplicateWindow is how long JetStream remembers message ids to drop
// republished duplicates; older duplicates are dropped by cursor instead.
const DuplicateWindow = 10 * time.Minute

// Config says where NATS is.
type Config struct {
	// URL of an external NATS server or cluster; empty embeds one.
	URL string
	// DataDir holds the embedded server's store, under nats/. When another
	// process already uses that store, this process embeds its own server
	// with a private store directory next to it.
	DataDir string
	// MaxAge bounds stream retention; zero keeps events forever.
	MaxAge time.Duration
	// Name identifies this connection to the server.
	Name   string
	Logger *slog.Logger
}

// Conn is a connection to JetStream, and the embedded server when there is
// one.
type Conn struct {
	NC *nats.Conn
	JS jetstream.JetStream
	// Embedded reports whether the server runs in this process.
	Embedded bool
	// StoreDir is the embedded server's store directory.
	StoreDir string

	srv     *server.Server
	lock    *os.File
	private bool
}

// Connect connects (starting an embedded server if cfg.URL is empty) and
// makes sure the MANA_EVENTS stream exists with the configured retention.
func Connect(ctx context.Context, cfg Config) (*Conn, error) {
	c := &Conn{}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
	}
	url := cfg.URL
	if url == "" {
		if err := c.startEmbedded(cfg); err != nil {
			return nil, err
		}
		opts = append(opts, nats.InProcessServer(c.srv))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		c.shutdownServer()
		return nil, fmt.Errorf("connect to NATS: %w", err)
	}
	c.NC = nc
	js, err := jetstream.New(nc)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c.JS = js
	if err := EnsureStream(ctx, js, cfg.MaxAge); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// EnsureStream creates or updates MANA_EVENTS: subjects mana.events.>,
// file storage, a 10-minute duplicate window and the given MaxAge.
func EnsureStream(ctx context.Context, js jetstream.JetStream, maxAge time.Duration) error {
	cfg := jetstream.StreamConfig{
		Name:       StreamName,
		Subjects:   []string{SubjectPrefix + ">"},
		Storage:    jetstream.FileStorage,
		Duplicates: DuplicateWindow,
		MaxAge:     maxAge,
		Retention:  jetstream.LimitsPolicy,
		Discard:    jetstream.DiscardOld,
	}
	if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("declare stream %s: %w", StreamName, err)
	}
	return nil
}

func (c *Conn) startEmbedded(cfg Config) error {
	base := filepath.Join(cfg.DataDir, "nats")
	dir, lock, private, err := lockStore(base)
	if err != nil {
		return err
	}
	c.lock, c.private, c.StoreDir = lock, private, dir
	if private && cfg.Logger != nil {
		cfg.Logger.Info("embedded NATS store in use by another process; using a private store", "dir", dir)
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "mana-embedded",
		DontListen: true,
		JetStream:  true,
		StoreDir:   dir,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		c.unlock()
		return fmt.Errorf("embedded NATS: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		c.unlock()
		return errors.New("embedded NATS did not become ready")
	}
	c.srv, c.Embedded = srv, true
	return nil
}

// lockStore takes an exclusive lock on base; when another process holds it,
// it creates and locks a private directory beside it instead.
func lockStore(base string) (dir string, lock *os.File, private bool, err error) {
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", nil, false, fmt.Errorf("embedded NATS store: %w", err)
	}
	if f, ok := tryLock(filepath.Join(base, "LOCK")); ok {
		return base, f, false, nil
	}
	dir, err = os.MkdirTemp(filepath.Dir(base), "nats-private-")
	if err != nil {
		return "", nil, false, fmt.Errorf("embedded NATS store: %w", err)
	}
	f, ok := tryLock(filepath.Join(dir, "LOCK"))
	if !ok {
		return "", nil, false, fmt.Errorf("embedded NATS store: cannot lock %s", dir)
	}
	return dir, f, true, nil
}

func tryLock(path string) (*os.File, bool) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, false
	}
	return f, true
}

// Close drains the connection and stops the embedded server.
func (c *Conn) Close() {
	if c.NC != nil {
		_ = c.NC.Drain()
		deadline := time.Now().Add(5 * time.Second)
		for !c.NC.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		c.NC.Close()
	}
	c.shutdownServer()
}

func (c *Conn) shutdownServer() {
	if c.srv != nil {
		c.srv.Shutdown()
		c.srv.WaitForShutdown()
		c.srv = nil
	}
	c.unlock()
}

func (c *Conn) unlock() {
	if c.lock != nil {
		c.lock.Close()
		c.lock = nil
	}
	if c.private && c.StoreDir != "" {
		os.RemoveAll(c.StoreDir)
	}
}
