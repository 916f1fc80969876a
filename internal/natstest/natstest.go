// Package natstest runs a throwaway NATS JetStream server for one test, on a
// loopback TCP port, which the test may stop and start again on the same
// port and store directory to simulate an outage.
package natstest

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// readyTimeout bounds how long a starting server may take to accept
// connections.
const readyTimeout = 10 * time.Second

// Server is one test's JetStream server. Its methods are safe for concurrent
// use.
type Server struct {
	t    testing.TB
	mu   sync.Mutex
	opts *server.Options
	srv  *server.Server
}

// Start starts a JetStream server with its store in a temporary directory
// and stops it when t ends. It fails the test if the server does not become
// ready within 10 s.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, opts: &server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true,
	}}
	s.Up()
	t.Cleanup(s.Down)
	return s
}

// URL is the server's client URL; it stays the same across Down and Up.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("nats://127.0.0.1:%d", s.opts.Port)
}

// StoreDir is the JetStream store directory; a test may copy or replace it
// while the server is down.
func (s *Server) StoreDir() string { return s.opts.StoreDir }

// Up starts the server again after Down, on the same port and store; a
// running server is left as it is.
func (s *Server) Up() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return
	}
	srv, err := server.NewServer(s.opts)
	if err != nil {
		s.t.Fatalf("natstest: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(readyTimeout) {
		srv.Shutdown()
		s.t.Fatalf("natstest: server not ready within %v", readyTimeout)
	}
	// Keep the port for the next Up.
	s.opts.Port = srv.Addr().(*net.TCPAddr).Port
	s.srv = srv
}

// Down shuts the server down and waits until it has; clients see the
// connection drop. Down of a stopped server does nothing.
func (s *Server) Down() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	s.srv = nil
}
