package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/internal/natstest"
	"github.com/manacore/mana/internal/pgtest"
)

// The resilience tests of SPEC §9: the service under spend load while its
// process is SIGKILLed, NATS stops, PostgreSQL restarts or a projector dies
// mid-batch. Each test has its own PostgreSQL cluster and NATS server, and
// runs the service as child processes (this test binary re-executed as the
// mana command, see TestMain), so a kill is a real SIGKILL. Every test ends
// with the same proof: each spend the load sent is in the ledger exactly
// once, the balances the API reports are what the client's own count says,
// the read models caught up without applying anything twice, and `ledger
// verify` passes.

// asManaEnv makes the test binary run as the mana command.
const asManaEnv = "MANA_TEST_RUN_AS_MANA"

func TestMain(m *testing.M) {
	if os.Getenv(asManaEnv) == "1" {
		main()
	}
	os.Exit(m.Run())
}

const (
	// resilienceLeaseTTL lets a restarted process take over the leases of
	// a killed one quickly.
	resilienceLeaseTTL = "2s"
	// resilienceWait bounds every wait of these tests for the service to
	// come back, catch up or make progress.
	resilienceWait = 60 * time.Second
	// spendApp is the app the load charges.
	spendApp = "resilience"
	// resilienceBonus is each user's signup bonus: enough that the load
	// never runs out, whatever the test's timing.
	resilienceBonus = 100_000
	// spendPace is the least time between two spends of one worker, so
	// the load spans the faults instead of finishing before them.
	spendPace = 20 * time.Millisecond
	// spendsPerUser bounds the load's acknowledged spends per user.
	spendsPerUser = 2_000
)

// manaProc is one `mana serve` child process, which a test may kill and
// start again with the same arguments and environment.
type manaProc struct {
	t    *testing.T
	name string
	args []string
	env  []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	log    *logWriter
	logs   []string // the logs of earlier runs
}

// startMana starts `mana serve` plus args as a child process with vars as
// its environment (plus the test defaults of envOf) and waits until it has
// started. The process is stopped when the test ends.
func startMana(t *testing.T, name string, vars map[string]string, args ...string) *manaProc {
	t.Helper()
	env := []string{asManaEnv + "=1", "PATH=" + os.Getenv("PATH"), "TMPDIR=" + t.TempDir()}
	for _, k := range []string{"DATABASE_MAX_CONNS", "RATE_LIMITS"} {
		if _, ok := vars[k]; !ok {
			env = append(env, k+"="+envOf(nil)(k))
		}
	}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	p := &manaProc{t: t, name: name, args: append([]string{"serve"}, args...), env: env}
	p.start()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			p.mu.Lock()
			defer p.mu.Unlock()
			t.Logf("%s log:\n%s%s", p.name, strings.Join(p.logs, ""), p.log)
		}
	})
	return p
}

// start runs the process and waits until it listens (or, without the api
// component, says it runs).
func (p *manaProc) start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.log != nil {
		p.logs = append(p.logs, p.log.String())
	}
	p.log = newLogWriter()
	cmd := exec.Command(os.Args[0], p.args...)
	cmd.Env = p.env
	cmd.Stderr = p.log
	// The child dies with the test process, whatever ends it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	p.cmd, p.exited = cmd, exited

	deadline := time.Now().Add(startupTimeout)
	for {
		s := p.log.String()
		if strings.Contains(s, `"msg":"listening"`) || strings.Contains(s, `"msg":"running without the api component"`) {
			return
		}
		select {
		case <-exited:
			p.t.Fatalf("%s exited during start-up:\n%s", p.name, s)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s did not start within %v:\n%s", p.name, startupTimeout, s)
		}
	}
}

// kill sends SIGKILL and waits until the process is gone.
func (p *manaProc) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
	p.cmd = nil
}

// stop asks the process to shut down (SIGTERM) and kills it if it takes
// longer than shutdownTimeout.
func (p *manaProc) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(shutdownTimeout):
		p.t.Errorf("%s did not stop within %v of SIGTERM", p.name, shutdownTimeout)
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	p.cmd = nil
}

// resilienceEnv is one test's throwaway world: a PostgreSQL cluster, a NATS
// server, the service's environment and a port for its API that stays the
// same across restarts.
type resilienceEnv struct {
	cluster *pgtest.Cluster
	nats    *natstest.Server
	vars    map[string]string
	base    string // http://127.0.0.1:<port>
	c       *authServer
	pool    *pgxpool.Pool // superuser: sees every row
}

func newResilienceEnv(t *testing.T) *resilienceEnv {
	t.Helper()
	e := &resilienceEnv{cluster: pgtest.NewCluster(t), nats: natstest.Start(t)}
	port := freeTCPPort(t)
	e.base = "http://127.0.0.1:" + strconv.Itoa(port)
	e.vars = map[string]string{
		"DATABASE_URL":         e.cluster.DSN("mana"),
		"DATABASE_MAX_CONNS":   "8",
		"NATS_URL":             e.nats.URL(),
		"DATA_DIR":             t.TempDir(),
		"PORT":                 strconv.Itoa(port),
		"ARGON2_MEMORY_KIB":    "1024",
		"ARGON2_TIME":          "1",
		"LEASE_TTL":            resilienceLeaseTTL,
		"CREDITS_SIGNUP_BONUS": strconv.Itoa(resilienceBonus),
	}
	target, _ := url.Parse(e.base)
	e.c = &authServer{vars: e.vars, log: newLogWriter(),
		c: apitest.New(t, &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }})}
	return e
}

// openPool opens the superuser pool, once the service has migrated the
// database.
func (e *resilienceEnv) openPool(t *testing.T) {
	t.Helper()
	e.pool = e.cluster.NewPool(t, "mana")
}

// users registers and logs in n users.
func (e *resilienceEnv) users(t *testing.T, n int) []creditUser {
	t.Helper()
	us := make([]creditUser, n)
	for i := range us {
		us[i] = newCreditUser(t, e.c, "resilience")
	}
	return us
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// spendLoad spends one credit at a time for each user from its own worker,
// every request with a fresh Idempotency-Key, and remembers every key it
// sent: those answered 201 and those without a definite answer (a transport
// error or a 5xx), which resolve retries.
type spendLoad struct {
	base   string
	users  []creditUser
	client *http.Client

	mu       sync.Mutex
	sent     map[string]int       // key → index of the user
	acked    map[string]uuid.UUID // key → transaction id
	unsure   map[string]bool
	statuses map[string]int // answers by status ("err" for transport errors)

	wg     sync.WaitGroup
	cancel context.CancelFunc
}

// startSpendLoad starts one worker per user, a spend at most every
// spendPace; each stops after spendsPerUser acknowledged spends, at stop,
// or after resilienceWait.
func startSpendLoad(t *testing.T, base string, users []creditUser) *spendLoad {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), resilienceWait)
	l := &spendLoad{
		base: base, users: users, cancel: cancel,
		client: &http.Client{Timeout: 10 * time.Second},
		sent:   map[string]int{}, acked: map[string]uuid.UUID{}, unsure: map[string]bool{}, statuses: map[string]int{},
	}
	for i := range users {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for acked := 0; acked < spendsPerUser && ctx.Err() == nil; {
				pause := spendPace
				if l.spendOnce(ctx, i, uuid.NewString()) {
					acked++
				} else {
					// Back off while the service is away.
					pause = 100 * time.Millisecond
				}
				select {
				case <-ctx.Done():
				case <-time.After(pause):
				}
			}
		}()
	}
	t.Cleanup(l.stop)
	return l
}

// spendOnce sends one spend and records its outcome; it reports whether the
// spend was acknowledged.
func (l *spendLoad) spendOnce(ctx context.Context, user int, key string) bool {
	l.mu.Lock()
	l.sent[key] = user
	l.mu.Unlock()
	status, txID, err := l.post(ctx, user, key)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err != nil:
		l.statuses["err"]++
		l.unsure[key] = true
		return false
	case status == http.StatusCreated:
		l.statuses["201"]++
		l.acked[key] = txID
		delete(l.unsure, key)
		return true
	default:
		l.statuses[strconv.Itoa(status)]++
		l.unsure[key] = true
		return false
	}
}

func (l *spendLoad) post(ctx context.Context, user int, key string) (int, uuid.UUID, error) {
	body := fmt.Sprintf(`{"amount":1,"appId":%q,"description":"load"}`, spendApp)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.base+"/api/v1/credits/use", strings.NewReader(body))
	if err != nil {
		return 0, uuid.Nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+l.users[user].token)
	req.Header.Set("Idempotency-Key", key)
	resp, err := l.client.Do(req)
	if err != nil {
		return 0, uuid.Nil, err
	}
	defer resp.Body.Close()
	var w creditWrite
	if resp.StatusCode == http.StatusCreated {
		if err := json.NewDecoder(resp.Body).Decode(&w); err != nil {
			return 0, uuid.Nil, err
		}
	}
	return resp.StatusCode, w.Transaction.ID, nil
}

// stop ends the load and waits for its workers.
func (l *spendLoad) stop() {
	l.cancel()
	l.wg.Wait()
}

// ackedCount is how many spends were acknowledged so far.
func (l *spendLoad) ackedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// unsureCount is how many keys have no definite answer so far.
func (l *spendLoad) unsureCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.unsure)
}

// waitAcked waits until n more spends than before were acknowledged.
func (l *spendLoad) waitAcked(t *testing.T, what string, n int) {
	t.Helper()
	want := l.ackedCount() + n
	waitUntil(t, what, func() bool { return l.ackedCount() >= want })
}

// resolve stops the load and retries every key without a definite answer
// with the same key and body, as a client must: the service either replays
// the spend it committed or commits it now. Each must end with 201.
func (l *spendLoad) resolve(t *testing.T) {
	t.Helper()
	l.stop()
	l.mu.Lock()
	keys := make([]string, 0, len(l.unsure))
	for k := range l.unsure {
		keys = append(keys, k)
	}
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), resilienceWait)
	defer cancel()
	for _, k := range keys {
		status, txID, err := l.post(ctx, l.sent[k], k)
		if err != nil || status != http.StatusCreated {
			t.Fatalf("retry of a spend without a definite answer = %d, %v; want 201", status, err)
		}
		l.mu.Lock()
		l.acked[k] = txID
		delete(l.unsure, k)
		l.mu.Unlock()
	}
	t.Logf("spend load: %d keys, answers %v, %d resolved by retry", len(l.sent), l.statuses, len(keys))
}

// waitUntil polls cond for up to resilienceWait and fails the test if it
// never holds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !poll(resilienceWait, cond) {
		t.Fatalf("timed out after %v waiting for %s", resilienceWait, what)
	}
}

// checkLedger is the proof every resilience test ends with, after
// l.resolve: every key the load sent is exactly one credit.spent event with
// the transaction id the API answered; each user's balance is the client's
// own count; the read models catch up with each spend applied once; and
// `mana ledger verify` passes.
func (e *resilienceEnv) checkLedger(t *testing.T, l *spendLoad) {
	t.Helper()
	ctx := t.Context()
	rows, err := e.pool.Query(ctx, `SELECT payload->>'transactionId', count(*) FROM events
		WHERE event_type = 'credit.spent' GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	inLedger := map[uuid.UUID]int{}
	for rows.Next() {
		var id uuid.UUID
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		inLedger[id] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(inLedger) != len(l.sent) {
		t.Errorf("the ledger holds %d spends, the load sent %d keys", len(inLedger), len(l.sent))
	}
	for key, id := range l.acked {
		if n := inLedger[id]; n != 1 {
			t.Errorf("acknowledged spend %s (key %s) is in the ledger %d times, want once", id, key, n)
		}
	}

	spentBy := make([]int64, len(l.users))
	for _, u := range l.sent {
		spentBy[u]++
	}
	for i, u := range l.users {
		var dailies int64
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE event_type = 'credit.daily_granted' AND payload->>'userId' = $1`,
			u.id.String()).Scan(&dailies); err != nil {
			t.Fatal(err)
		}
		got := getBalance(t, e.c, u)
		if want := resilienceBonus + dailies*fresh.DailyFreeCredits - spentBy[i]; got.Balance != want {
			t.Errorf("user %d: balance %d after %d spends, want %d", i, got.Balance, spentBy[i], want)
		}
	}

	// The read models catch up, every spend counted once.
	total := int64(len(l.sent))
	var used, listed, want int64
	waitUntil(t, "the read models to catch up", func() bool {
		err := e.pool.QueryRow(ctx, `SELECT
			(SELECT coalesce(sum(count), 0) FROM usage_stats WHERE app_id = $1),
			(SELECT count(*) FROM transactions),
			(SELECT count(*) FROM events WHERE event_type IN
				('credit.spent', 'credit.signup_bonus_granted', 'credit.daily_granted'))`, spendApp).Scan(&used, &listed, &want)
		if err != nil {
			t.Fatal(err)
		}
		if used > total || listed > want {
			t.Fatalf("read models applied events twice: usage counts %d spends of %d, transactions %d of %d", used, total, listed, want)
		}
		return used == total && listed == want
	})
	// Including the write-side rows the commands decided on: each user's
	// credit_accounts row equals the fold of its events.
	r := runCmd(t, e.vars, "ledger", "verify")
	if want := fmt.Sprintf("accounts: ok (%d write-side accounts)", len(l.users)); r.code != 0 || !strings.Contains(r.stdout, want) {
		t.Errorf("ledger verify = %d, want 0 and %q\n%s%s", r.code, want, r.stdout, r.stderr)
	}
}

// TestResilienceServerKilled: SIGKILL of the server in the middle of a
// spend load, then a restart: every acknowledged spend is in the ledger
// exactly once and nothing is half-written.
func TestResilienceServerKilled(t *testing.T) {
	t.Parallel()
	e := newResilienceEnv(t)
	srv := startMana(t, "server", e.vars)
	e.openPool(t)
	users := e.users(t, 6)

	l := startSpendLoad(t, e.base, users)
	l.waitAcked(t, "spends before the kill", 30)
	srv.kill()
	t.Logf("killed the server after %d acknowledged spends", l.ackedCount())
	time.Sleep(200 * time.Millisecond)
	srv.start()
	l.waitAcked(t, "spends after the restart", 30)
	l.resolve(t)
	e.checkLedger(t, l)
}

// TestResilienceNATSStopped: with NATS down, spends still succeed at once;
// after it is back the projections catch up and apply nothing twice.
func TestResilienceNATSStopped(t *testing.T) {
	t.Parallel()
	e := newResilienceEnv(t)
	startMana(t, "server", e.vars)
	e.openPool(t)
	users := e.users(t, 6)

	l := startSpendLoad(t, e.base, users)
	l.waitAcked(t, "spends before the outage", 30)
	e.nats.Down()
	before := l.unsureCount()
	l.waitAcked(t, "spends while NATS is down", 60)
	if n := l.unsureCount() - before; n > 0 {
		t.Errorf("%d spends failed while NATS was down; writes must not depend on it", n)
	}
	e.nats.Up()
	l.waitAcked(t, "spends after NATS is back", 30)
	l.resolve(t)
	e.checkLedger(t, l)
}

// TestResilienceDatabaseRestarted: PostgreSQL goes down in the middle of a
// spend load; readiness reports the outage, and after PostgreSQL is back
// the service recovers by itself, losing no acknowledged spend.
func TestResilienceDatabaseRestarted(t *testing.T) {
	t.Parallel()
	e := newResilienceEnv(t)
	startMana(t, "server", e.vars)
	e.openPool(t)
	users := e.users(t, 6)
	ready := func() int {
		resp, err := http.Get(e.base + "/health/ready")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := ready(); got != http.StatusOK {
		t.Fatalf("GET /health/ready = %d before the outage, want 200", got)
	}

	l := startSpendLoad(t, e.base, users)
	l.waitAcked(t, "spends before the outage", 30)
	e.cluster.Down(t)
	waitUntil(t, "readiness to report the outage", func() bool { return ready() == http.StatusServiceUnavailable })
	e.cluster.Up(t)
	e.pool.Reset() // the test's own connections died with the server
	waitUntil(t, "readiness after PostgreSQL is back", func() bool { return ready() == http.StatusOK })
	l.waitAcked(t, "spends after PostgreSQL is back", 30)
	l.resolve(t)
	for status, n := range l.statuses {
		if status != "201" && status != "503" && status != "err" {
			t.Errorf("%d spends answered %s during the outage; want 503 UNAVAILABLE", n, status)
		}
	}
	e.checkLedger(t, l)
}

// TestResilienceProjectorKilled: a projector process SIGKILLed while it
// applies a spend load, twice; each restart resumes from the checkpoints
// and the read models end equal to the ledger, nothing applied twice.
func TestResilienceProjectorKilled(t *testing.T) {
	t.Parallel()
	e := newResilienceEnv(t)
	startMana(t, "api", e.vars, "--components=api,relay,workers")
	projVars := map[string]string{}
	for k, v := range e.vars {
		projVars[k] = v
	}
	delete(projVars, "PORT")
	proj := startMana(t, "projector", projVars, "--components=projections")
	e.openPool(t)
	users := e.users(t, 6)

	applied := func() int64 {
		var n int64
		if err := e.pool.QueryRow(t.Context(), `SELECT coalesce(sum(count), 0) FROM usage_stats`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	l := startSpendLoad(t, e.base, users)
	for round := range 2 {
		// Kill the projector while it applies the load: after it has
		// taken its leases and applied some of the spends since its start.
		from := applied()
		waitUntil(t, "the projector to apply spends", func() bool { return applied() >= from+20 })
		proj.kill()
		t.Logf("round %d: killed the projector with %d of %d acknowledged spends applied", round, applied(), l.ackedCount())
		l.waitAcked(t, "spends while the projector is down", 10)
		proj.start()
	}
	l.resolve(t)
	e.checkLedger(t, l)
	var failures int64
	if err := e.pool.QueryRow(t.Context(), `SELECT count(*) FROM projection_failures`).Scan(&failures); err != nil {
		t.Fatal(err)
	}
	if failures != 0 {
		t.Errorf("%d projection failures recorded", failures)
	}
}
