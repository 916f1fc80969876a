package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// pgbouncerUser is the user name clients give PgBouncer. With auth_type =
// any it does not reach the server; it is also the console's admin.
const pgbouncerUser = "mana"

// pgbouncerReadyTimeout bounds how long a starting PgBouncer may take to
// pass a query through to its server.
const pgbouncerReadyTimeout = 30 * time.Second

// PgBouncerMaxClientConn and PgBouncerPoolSize size the PgBouncer that
// NewPgBouncer starts: many clients, few server connections per database,
// as in production. The shared test server allows 100 connections.
const (
	PgBouncerMaxClientConn = 500
	PgBouncerPoolSize      = 10
)

// PgBouncer is a PgBouncer in transaction mode in front of one PostgreSQL
// server, for one test: it listens on 127.0.0.1 on a free port, accepts any
// client without a password (auth_type = any) and logs in to the server as
// one fixed role for every database (the "*" entry), so a database created
// on the server after the start is reachable through it at once.
//
// It is a child of the test process and receives SIGTERM if the test
// process dies, so a killed test run leaves no PgBouncer behind.
type PgBouncer struct {
	port    int
	dir     string // temporary root: pgbouncer.ini, pgbouncer.log
	logPath string

	mu      sync.Mutex
	proc    *os.Process
	exited  chan struct{}
	stopped bool
}

// NewPgBouncer starts a PgBouncer (the pgbouncer binary on PATH or in
// /usr/sbin, Debian's 1.18) in transaction mode in front of the server of
// backend, a DSN of any database on it (Admin's, or a Cluster's), waits
// until a query passes through it, at most 30 s, and stops it when t ends.
//
// PgBouncer refuses to run as root; when the test runs as root it runs as
// the postgres OS user, and a backend reached over a Unix socket is then
// logged in to as the role postgres (peer authentication maps that OS user
// to it). Otherwise it logs in as backend's user, with backend's password.
//
// NewPgBouncer never skips: it fails the test with t.Fatalf when pgbouncer
// is not installed (`make deps` installs the Debian package as root) or
// does not start.
func NewPgBouncer(t testing.TB, backend string) *PgBouncer {
	t.Helper()
	began := time.Now()
	b, err := newPgBouncer(t.Context(), backend)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Stop(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	t.Logf("pgtest: pgbouncer on 127.0.0.1:%d ready in %v", b.port, time.Since(began).Round(time.Millisecond))
	return b
}

// DSN returns the URL of database db through the PgBouncer, with
// default_query_exec_mode=cache_describe, the mode the service uses behind
// PgBouncer: PgBouncer 1.18 in transaction mode has no prepared-statement
// support, so pgx must not prepare named statements, and the service's
// parameters need the server's types to encode (mode exec guesses them from
// Go types and fails on []uuid.UUID). The user name is ignored
// (auth_type = any).
func (b *PgBouncer) DSN(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable&default_query_exec_mode=cache_describe", pgbouncerUser, b.port, url.PathEscape(db))
}

// Through returns the DSN through the PgBouncer of the database that dsn,
// a DSN of a database on the backend server (say from NewDB), names.
func (b *PgBouncer) Through(t testing.TB, dsn string) string {
	t.Helper()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("pgtest: parse DSN: %v", err)
	}
	return b.DSN(cfg.Database)
}

// Show runs an admin console command (SHOW STATS, SHOW CONFIG, …) and
// returns its rows, each column by name as text. It may be called from a
// cleanup of t. It fails the test with t.Fatalf on error.
func (b *PgBouncer) Show(t testing.TB, command string) []map[string]string {
	t.Helper()
	// Not t.Context(): Show may run in a cleanup, when that is done.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The console speaks the simple query protocol only.
	dsn := fmt.Sprintf("postgres://%s@127.0.0.1:%d/pgbouncer?sslmode=disable&default_query_exec_mode=simple_protocol", pgbouncerUser, b.port)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("pgtest: pgbouncer console: %v", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, command)
	if err != nil {
		t.Fatalf("pgtest: pgbouncer %s: %v", command, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (map[string]string, error) {
		// The simple protocol returns every value as text.
		raw := r.RawValues()
		m := make(map[string]string, len(raw))
		for i, fd := range r.FieldDescriptions() {
			if raw[i] != nil {
				m[fd.Name] = string(raw[i])
			}
		}
		return m, nil
	})
	if err != nil {
		t.Fatalf("pgtest: pgbouncer %s: %v", command, err)
	}
	return out
}

// Transactions returns how many transactions PgBouncer has passed to the
// server for database db (SHOW STATS total_xact_count; a statement outside
// a transaction block counts as one).
func (b *PgBouncer) Transactions(t testing.TB, db string) int64 {
	t.Helper()
	for _, row := range b.Show(t, "SHOW STATS") {
		if row["database"] == db {
			n, err := strconv.ParseInt(row["total_xact_count"], 10, 64)
			if err != nil {
				t.Fatalf("pgtest: pgbouncer SHOW STATS total_xact_count %q: %v", row["total_xact_count"], err)
			}
			return n
		}
	}
	return 0
}

// Port returns the port the PgBouncer listens on, on 127.0.0.1.
func (b *PgBouncer) Port() int { return b.port }

// Log returns the PgBouncer's log so far, at most its last 16 KiB.
func (b *PgBouncer) Log() string { return tail(b.logPath, 0, 16<<10) }

// Stop shuts the PgBouncer down immediately (SIGTERM: open client and
// server connections are closed) and removes its directory. It is called
// when the test that started it ends; calling it earlier is allowed, and
// calling it again does nothing.
func (b *PgBouncer) Stop() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return nil
	}
	b.stopped = true
	err := b.halt()
	if rmErr := os.RemoveAll(b.dir); rmErr != nil {
		err = errors.Join(err, fmt.Errorf("remove pgbouncer directory: %w", rmErr))
	}
	return err
}

func newPgBouncer(ctx context.Context, backend string) (*PgBouncer, error) {
	bin, err := findPgBouncer()
	if err != nil {
		return nil, err
	}
	server, err := pgconn.ParseConfig(backend)
	if err != nil {
		return nil, fmt.Errorf("pgbouncer backend: parse DSN: %w", err)
	}
	var cred *syscall.Credential
	parent := os.TempDir()
	if os.Geteuid() == 0 {
		if cred, err = postgresUser(); err != nil {
			return nil, fmt.Errorf("pgbouncer refuses root: %w", err)
		}
		parent = "/tmp" // reachable by the postgres user
	}
	dbEntry, err := databaseEntry(server, cred != nil)
	if err != nil {
		return nil, err
	}
	b := &PgBouncer{}
	if b.dir, err = os.MkdirTemp(parent, "pgbouncer-"); err != nil {
		return nil, fmt.Errorf("pgbouncer directory: %w", err)
	}
	b.logPath = filepath.Join(b.dir, "pgbouncer.log")
	if cred != nil {
		if err := os.Chown(b.dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(b.dir)
			return nil, fmt.Errorf("pgbouncer directory: %w", err)
		}
	}
	// The port is free when chosen but may be taken before pgbouncer binds
	// it: try a few.
	for attempt := 1; ; attempt++ {
		if b.port, err = freePort(); err == nil {
			err = b.start(ctx, bin, cred, dbEntry, server.Database)
		}
		if err == nil {
			return b, nil
		}
		if attempt == 5 || !errors.Is(err, errPortInUse) {
			os.RemoveAll(b.dir)
			return nil, err
		}
	}
}

// findPgBouncer returns the pgbouncer binary: the one on PATH, else
// Debian's /usr/sbin/pgbouncer (/usr/sbin is often not on a user's PATH).
func findPgBouncer() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	const debian = "/usr/sbin/pgbouncer"
	if fi, err := os.Stat(debian); err == nil && !fi.IsDir() {
		return debian, nil
	}
	return "", errors.New("pgbouncer is not installed (not on PATH nor " + debian + "): " +
		"run `make deps` as root, which installs the Debian package pgbouncer")
}

// databaseEntry renders the connection string of the "*" database entry:
// the server's host and port, and the role every server connection logs in
// as. asPostgres says pgbouncer runs as the postgres OS user.
func databaseEntry(server *pgconn.Config, asPostgres bool) (string, error) {
	if server.Host == "" || server.Port == 0 {
		return "", errors.New("pgbouncer backend: DSN names no host and port")
	}
	user, password := server.User, server.Password
	if asPostgres && strings.HasPrefix(server.Host, "/") {
		// Peer authentication on the socket maps the OS user pgbouncer
		// runs as to the role of the same name.
		user, password = "postgres", ""
	}
	if user == "" {
		return "", errors.New("pgbouncer backend: DSN names no user")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "host=%s port=%d user=%s", quoteValue(server.Host), server.Port, quoteValue(user))
	if password != "" {
		fmt.Fprintf(&b, " password=%s", quoteValue(password))
	}
	return b.String(), nil
}

// quoteValue quotes a value of a pgbouncer connection string: in single
// quotes, a quote doubled.
func quoteValue(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// config renders pgbouncer.ini.
func (b *PgBouncer) config(dbEntry string) string {
	return strings.Join([]string{
		"[databases]",
		"* = " + dbEntry,
		"",
		"[pgbouncer]",
		"listen_addr = 127.0.0.1",
		"listen_port = " + strconv.Itoa(b.port),
		// No Unix socket: two test PgBouncers would fight over its name.
		"unix_socket_dir =",
		"auth_type = any",
		"pool_mode = transaction",
		"max_client_conn = " + strconv.Itoa(PgBouncerMaxClientConn),
		"default_pool_size = " + strconv.Itoa(PgBouncerPoolSize),
		"reserve_pool_size = 0",
		// Idle server connections go back to the shared server soon.
		"server_idle_timeout = 10",
		// Retry a failed server login after a second, not the default 15.
		"server_login_retry = 1",
		// No ignore_startup_parameters: a client that sends a startup
		// parameter PgBouncer does not track fails here as it would in
		// production.
		// The admin console (database pgbouncer), for Show.
		"admin_users = " + pgbouncerUser,
		"logfile = " + b.logPath,
		"log_connections = 0",
		"log_disconnections = 0",
		"",
	}, "\n")
}

// start writes the configuration, runs pgbouncer and waits until a query on
// database db passes through it. The caller owns b exclusively.
func (b *PgBouncer) start(ctx context.Context, bin string, cred *syscall.Credential, dbEntry, db string) error {
	ini := filepath.Join(b.dir, "pgbouncer.ini")
	// The file may hold the server's password: readable by its owner only.
	if err := os.WriteFile(ini, []byte(b.config(dbEntry)), 0o600); err != nil {
		return fmt.Errorf("pgbouncer config: %w", err)
	}
	if cred != nil {
		if err := os.Chown(ini, int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("pgbouncer config: %w", err)
		}
	}
	logStart := int64(0)
	if fi, err := os.Stat(b.logPath); err == nil {
		logStart = fi.Size()
	}
	cmd := exec.Command(bin, ini)
	cmd.Dir = b.dir
	// pgbouncer writes to its logfile and, in the foreground, to stderr:
	// keep only the file.
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: cred,
		// Gone with the test process. Go applies it after switching user.
		Pdeathsig: syscall.SIGTERM,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start pgbouncer: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	b.proc, b.exited = cmd.Process, exited

	if err := b.waitReady(ctx, db); err != nil {
		_ = b.halt()
		log := tail(b.logPath, logStart, 4096)
		if strings.Contains(log, "Address already in use") {
			return fmt.Errorf("pgbouncer on port %d: %w", b.port, errPortInUse)
		}
		return fmt.Errorf("pgbouncer on port %d: %w\npgbouncer log:\n%s", b.port, err, log)
	}
	return nil
}

// waitReady polls until a query on database db passes through the
// PgBouncer, it exits, or pgbouncerReadyTimeout passes.
func (b *PgBouncer) waitReady(ctx context.Context, db string) error {
	deadline := time.NewTimer(pgbouncerReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := queryOnce(pctx, b.DSN(db))
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-b.exited:
			return errors.New("pgbouncer exited during start-up")
		case <-deadline.C:
			return fmt.Errorf("not ready after %v: %w", pgbouncerReadyTimeout, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// queryOnce connects to dsn and runs SELECT 1: PgBouncer accepts a client
// before it has a server connection, so a connection alone proves little.
func queryOnce(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, "SELECT 1")
	return err
}

// halt sends SIGTERM (immediate shutdown) and waits for pgbouncer to exit,
// killing it if it takes over 10 s.
func (b *PgBouncer) halt() error {
	if b.proc == nil {
		return nil
	}
	defer func() { b.proc = nil }()
	select {
	case <-b.exited:
		return nil
	default:
	}
	if err := b.proc.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal pgbouncer: %w", err)
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	select {
	case <-b.exited:
		return nil
	case <-timeout.C:
		_ = b.proc.Kill()
		<-b.exited
		return errors.New("pgbouncer ignored SIGTERM for 10 s and was killed")
	}
}

// tail returns what path holds from offset on, at most its last limit
// bytes.
func tail(path string, offset int64, limit int) string {
	buf, err := os.ReadFile(path)
	if err != nil || offset > int64(len(buf)) {
		return ""
	}
	buf = buf[offset:]
	if len(buf) > limit {
		buf = buf[len(buf)-limit:]
	}
	return string(buf)
}

// NewEmptyDB creates an empty database for t, not cloned from the migrated
// template, and returns its DSN (Admin's DSN with the database replaced):
// for tests that run the migrations themselves, say through a PgBouncer,
// which cannot create a database (it reports a missing one as a protocol
// error, so pg.Open does not know to create it). The database is dropped
// WITH (FORCE) when t ends. NewEmptyDB fails the test with t.Fatalf on error.
func NewEmptyDB(t testing.TB) string {
	t.Helper()
	admin := Admin(t)
	pool, err := adminPool()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	name := clonePrefix + "empty_" + randomHex(8)
	if _, err := pool.Exec(t.Context(), "CREATE DATABASE "+ident(name)); err != nil {
		t.Fatalf("pgtest: create empty database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := dropDatabase(ctx, pool, name); err != nil {
			t.Errorf("pgtest: drop test database %s: %v", name, err)
		}
	})
	// Recorded like a clone's, so a later process drops it if this one is
	// killed before its cleanup.
	if err := comment(t.Context(), pool, name); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return withDatabase(admin, name)
}
