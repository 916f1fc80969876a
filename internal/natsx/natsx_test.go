package natsx_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/manacore/mana/internal/natsx"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func streamInfo(t *testing.T, js jetstream.JetStream) *jetstream.StreamInfo {
	t.Helper()
	s, err := js.Stream(ctxT(t), natsx.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func TestConnectEmbeddedDeclaresStream(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c, err := natsx.Connect(ctxT(t), natsx.Config{DataDir: dir, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Embedded || c.StoreDir != filepath.Join(dir, "nats") {
		t.Fatalf("embedded = %v, store dir = %s", c.Embedded, c.StoreDir)
	}
	cfg := streamInfo(t, c.JS).Config
	if len(cfg.Subjects) != 1 || cfg.Subjects[0] != natsx.SubjectPrefix+">" || cfg.Storage != jetstream.FileStorage ||
		cfg.Duplicates != natsx.DuplicateWindow || cfg.MaxAge != time.Hour {
		t.Fatalf("stream config = %+v", cfg)
	}
	if _, err := c.JS.Publish(ctxT(t), natsx.SubjectPrefix+"package.created", []byte(`{}`), jetstream.WithMsgID("m1")); err != nil {
		t.Fatal(err)
	}
	c.Close()

	// The store survives a restart, and the stream follows the new
	// retention.
	c, err = natsx.Connect(ctxT(t), natsx.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info := streamInfo(t, c.JS)
	if info.State.Msgs != 1 || info.Config.MaxAge != 0 {
		t.Fatalf("after restart: %d messages, max age %v", info.State.Msgs, info.Config.MaxAge)
	}
	// The id is remembered across the restart: a republish is dropped.
	ack, err := c.JS.Publish(ctxT(t), natsx.SubjectPrefix+"package.created", []byte(`{}`), jetstream.WithMsgID("m1"))
	if err != nil || !ack.Duplicate {
		t.Fatalf("republish after restart: %+v, %v", ack, err)
	}
}

func TestEmbeddedStoreInUseGetsPrivateStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, err := natsx.Connect(ctxT(t), natsx.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := natsx.Connect(ctxT(t), natsx.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if second.StoreDir == first.StoreDir || filepath.Dir(second.StoreDir) != dir {
		t.Fatalf("second store dir %s, first %s", second.StoreDir, first.StoreDir)
	}
	if _, err := second.JS.Publish(ctxT(t), natsx.SubjectPrefix+"package.created", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if n := streamInfo(t, first.JS).State.Msgs; n != 0 {
		t.Fatalf("the first server's stream got %d messages from the second", n)
	}
	second.Close()
	if _, err := os.Stat(second.StoreDir); !os.IsNotExist(err) {
		t.Fatalf("private store %s left behind: %v", second.StoreDir, err)
	}
	if _, err := os.Stat(first.StoreDir); err != nil {
		t.Fatal(err)
	}
}

func TestConnectExternal(t *testing.T) {
	t.Parallel()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	c, err := natsx.Connect(ctxT(t), natsx.Config{URL: srv.ClientURL(), DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Embedded || c.StoreDir != "" {
		t.Fatalf("embedded = %v, store dir %q for an external server", c.Embedded, c.StoreDir)
	}
	if got := streamInfo(t, c.JS).Config.Duplicates; got != natsx.DuplicateWindow {
		t.Fatalf("duplicates window %v", got)
	}
}

func TestConnectUnreachableFails(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	// Port 1 on loopback: nothing listens.
	if _, err := natsx.Connect(ctx, natsx.Config{URL: "nats://127.0.0.1:1"}); err == nil {
		t.Fatal("connected to nothing")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("failing took %v", d)
	}
}
