package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/internal/pg"
)

// clusterReadyTimeout bounds how long a starting server may take to accept
// connections.
const clusterReadyTimeout = 30 * time.Second

// Cluster is a private PostgreSQL server for one test, in a temporary
// directory, listening on 127.0.0.1 on a random port and on a Unix socket in
// that directory. Its superuser is postgres, with trust authentication.
//
// It trades crash safety for speed (fsync=off, full_page_writes=off) but
// leaves synchronous_commit on, as the service does. The server is a child
// of the test process and receives SIGQUIT (immediate shutdown) if the test
// process dies, so a killed test run leaves no server behind.
//
// The methods of a Cluster are safe for concurrent use.
type Cluster struct {
	port    int
	dir     string              // temporary root: socket, server log, data/
	binDir  string              // where initdb and postgres live
	cred    *syscall.Credential // the postgres OS user when running as root
	logPath string

	mu      sync.Mutex
	proc    *os.Process
	exited  chan struct{} // closed when proc has exited
	stopped bool
}

// NewCluster initializes and starts a throwaway PostgreSQL server for t
// (initdb, then postgres on a free port) and waits until it accepts
// connections, at most 30 s. It is stopped and its directory removed when t
// ends. Starting one takes about a second, most of it initdb.
//
// Use it for tests that hold write transactions open: the feed horizon
// (pg_snapshot_xmin) is cluster-wide, so such a test would stall the feeds of
// every other test sharing its server.
//
// initdb and postgres refuse to run as root; when the test runs as root they
// run as the postgres OS user. NewCluster fails the test with t.Fatalf when
// the binaries are missing or the server does not start.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	began := time.Now()
	c, err := newCluster(t.Context())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	t.Logf("pgtest: cluster on 127.0.0.1:%d ready in %v", c.port, time.Since(began).Round(time.Millisecond))
	return c
}

// DSN returns the URL of database db on the cluster, as the superuser
// postgres. The database need not exist: pg.Open creates it.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, url.PathEscape(db))
}

// NewPool returns a pool of up to PoolMaxConns connections to database db on
// the cluster, creating the database if needed and applying the migrations
// (concurrent calls for the same db are safe: the migrator takes turns). The
// pool is closed when t ends. NewPool fails the test with t.Fatalf on error.
func (c *Cluster) NewPool(t testing.TB, db string) *pgxpool.Pool {
	t.Helper()
	ctx := t.Context()
	pool, err := pg.Open(ctx, c.DSN(db), PoolMaxConns)
	if err != nil {
		t.Fatalf("pgtest: open %s on cluster: %v", db, err)
	}
	t.Cleanup(pool.Close)
	m, err := pg.NewMigrator(pool)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer m.Close()
	if _, err := m.Up(ctx); err != nil {
		t.Fatalf("pgtest: migrate %s on cluster: %v", db, err)
	}
	return pool
}

// Restart shuts the server down the fast way (open sessions are ended,
// in-flight transactions roll back, a shutdown checkpoint is written; what
// pg_ctl stop -m fast does) and starts it again on the same port. Existing
// pools notice the broken connections and reconnect. Restart fails the test
// with t.Fatalf if the cluster was stopped or does not come back.
func (c *Cluster) Restart(t testing.TB) {
	t.Helper()
	c.Down(t)
	c.Up(t)
}

// Down shuts the server down the fast way, as Restart does, and leaves it
// down until Up: an outage whose length the test chooses. Down of a server
// that is down does nothing.
func (c *Cluster) Down(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		t.Fatalf("pgtest: Down of a stopped cluster")
	}
	if err := c.halt(syscall.SIGINT); err != nil {
		t.Fatalf("pgtest: down: %v", err)
	}
}

// Up starts a server that Down shut down, on the same port and data, and
// waits until it accepts connections. Up of a running server does nothing.
func (c *Cluster) Up(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		t.Fatalf("pgtest: Up of a stopped cluster")
	}
	if c.proc != nil {
		return
	}
	if err := c.start(t.Context()); err != nil {
		t.Fatalf("pgtest: up: %v", err)
	}
}

// Stop shuts the server down immediately (SIGQUIT to the postmaster, what
// pg_ctl stop -m immediate does: no checkpoint, crash recovery on a next
// start) and removes its directory. It is called when the test that created
// the cluster ends; calling it earlier is allowed, and calling it again does
// nothing.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	c.stopped = true
	err := c.halt(syscall.SIGQUIT)
	if rmErr := os.RemoveAll(c.dir); rmErr != nil {
		err = errors.Join(err, fmt.Errorf("remove cluster directory: %w", rmErr))
	}
	return err
}

func newCluster(ctx context.Context) (*Cluster, error) {
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{binDir: binDir}
	parent := os.TempDir()
	if os.Geteuid() == 0 {
		if c.cred, err = postgresUser(); err != nil {
			return nil, err
		}
		// The postgres user must be able to reach the directory, and a
		// root-only TMPDIR would not let it.
		parent = "/tmp"
	}
	// A Unix socket path is limited to 107 bytes.
	if len(parent) > 60 {
		parent = "/tmp"
	}
	if c.dir, err = os.MkdirTemp(parent, "pgtest-"); err != nil {
		return nil, fmt.Errorf("cluster directory: %w", err)
	}
	if c.cred != nil {
		if err := os.Chown(c.dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			os.RemoveAll(c.dir)
			return nil, fmt.Errorf("cluster directory: %w", err)
		}
	}
	c.logPath = filepath.Join(c.dir, "postgres.log")

	initdb := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"),
		"--pgdata", c.dataDir(), "--username", "postgres", "--auth", "trust",
		"--encoding", "UTF8", "--locale", "C.UTF-8", "--no-sync", "--no-instructions")
	initdb.Dir = c.dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(c.dir)
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}

	// The port is free when chosen but may be taken before postgres binds
	// it: try a few.
	for attempt := 1; ; attempt++ {
		if c.port, err = freePort(); err == nil {
			err = c.start(ctx)
		}
		if err == nil {
			return c, nil
		}
		if attempt == 5 || !errors.Is(err, errPortInUse) {
			os.RemoveAll(c.dir)
			return nil, err
		}
	}
}

func (c *Cluster) dataDir() string { return filepath.Join(c.dir, "data") }

var errPortInUse = errors.New("port in use")

// start runs postgres and waits until it accepts connections. The caller
// holds c.mu or owns c exclusively.
func (c *Cluster) start(ctx context.Context) error {
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("server log: %w", err)
	}
	defer logFile.Close() // the child keeps its own descriptor
	logStart, _ := logFile.Seek(0, io.SeekEnd)

	cmd := exec.Command(filepath.Join(c.binDir, "postgres"),
		"-D", c.dataDir(),
		"-p", strconv.Itoa(c.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+c.dir,
		"-c", "max_connections=50",
		"-c", "shared_buffers=32MB",
		// A test server needs no crash safety. synchronous_commit stays at
		// its default (on): the service never lowers it, and tests should
		// see the same commit behaviour.
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
	)
	cmd.Dir = c.dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: c.cred,
		// Immediate shutdown if the test process dies without cleaning up.
		// Go applies it after switching user, so the switch does not clear it.
		Pdeathsig: syscall.SIGQUIT,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	c.proc, c.exited = cmd.Process, exited

	if err := c.waitReady(ctx); err != nil {
		_ = c.halt(syscall.SIGQUIT)
		log := c.logSince(logStart)
		if strings.Contains(log, "could not bind") || strings.Contains(log, "could not create any TCP/IP sockets") {
			return fmt.Errorf("postgres on port %d: %w", c.port, errPortInUse)
		}
		return fmt.Errorf("postgres on port %d: %w\nserver log:\n%s", c.port, err, log)
	}
	return nil
}

// waitReady polls the server until it accepts a connection, it exits, or
// clusterReadyTimeout passes.
func (c *Cluster) waitReady(ctx context.Context) error {
	deadline := time.NewTimer(clusterReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := ping(pctx, c.DSN("postgres"))
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-c.exited:
			return errors.New("server exited during start-up")
		case <-deadline.C:
			return fmt.Errorf("not ready after %v: %w", clusterReadyTimeout, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// halt sends sig to the postmaster (SIGINT: fast shutdown, SIGQUIT:
// immediate) and waits for it to exit, killing it if it takes over a minute.
func (c *Cluster) halt(sig syscall.Signal) error {
	if c.proc == nil {
		return nil
	}
	defer func() { c.proc = nil }()
	select {
	case <-c.exited:
		return nil
	default:
	}
	if err := c.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal postgres: %w", err)
	}
	timeout := time.NewTimer(time.Minute)
	defer timeout.Stop()
	select {
	case <-c.exited:
		return nil
	case <-timeout.C:
		_ = c.proc.Kill()
		<-c.exited
		return fmt.Errorf("postgres ignored %v for a minute and was killed", sig)
	}
}

// logSince returns the server log written from offset on, at most its last
// 4 KiB.
func (c *Cluster) logSince(offset int64) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil || offset > int64(len(b)) {
		return ""
	}
	b = b[offset:]
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// postgresUser returns the credentials of the postgres OS user.
func postgresUser() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, and initdb refuses root: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres uid: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres gid: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// findBinDir returns the directory holding initdb and postgres: the one of
// initdb on PATH (symlinks resolved), else the newest Debian-style
// /usr/lib/postgresql/<major>/bin.
func findBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dir := filepath.Dir(real)
			if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
				return dir, nil
			}
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return major(matches[i]) > major(matches[j]) })
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	return "", errors.New("initdb not found on PATH nor in /usr/lib/postgresql/*/bin")
}

// major extracts <major> from /usr/lib/postgresql/<major>/bin/initdb.
func major(path string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return n
}
