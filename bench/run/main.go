// Command run is `make bench`'s driver (bench/bench.sh starts the service
// and calls it). Against a running Mana Core on a fresh database it
// measures, in one run on the same machine:
//
//   - the box: argon2id hashes/s and RS256 signs/s on every core;
//   - pgbench baselines on the service's PostgreSQL server: single-row
//     UPDATE on random rows of 1,000 and on one hot row, a ~300-byte INSERT,
//     at the load's concurrency;
//   - the service over HTTP: spend on 1,000 distinct accounts, on one hot
//     account, on an account with 100,000 prior events against a fresh one;
//     login; refresh; validate; a balance read right after a spend; and the
//     projector's lag under spend load;
//
// then prints every SPEC §9 ratio next to the seed service's figures and
// writes bench/results/<date>.json and .svg. See bench/README.md for the
// method and docs/performance.md for what bounds each number.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
)

type config struct {
	url, dsn, out        string
	clients, workers     int
	warmup, closed, open time.Duration
	openFraction         float64
	pgbenchTime, boxTime time.Duration
	accounts, history    int
	historyBatch         int
	rywTimeout           time.Duration
	rateLimits           string
	watch                cpuWatch
}

func main() {
	var cfg config
	flag.StringVar(&cfg.url, "url", "http://127.0.0.1:3001", "service base URL")
	flag.StringVar(&cfg.dsn, "dsn", "", "the service's database URL (pgbench baselines, history, checkpoints)")
	flag.StringVar(&cfg.out, "out", "bench/results", "directory for <date>.json and <date>.svg")
	flag.IntVar(&cfg.clients, "c", 32, "concurrency: closed-loop clients and pgbench clients")
	flag.IntVar(&cfg.workers, "workers", 256, "open-loop: most requests in flight")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "closed-loop warm-up per scenario, not counted")
	flag.DurationVar(&cfg.closed, "d", 10*time.Second, "closed-loop measurement per scenario")
	flag.DurationVar(&cfg.open, "open", 6*time.Second, "open-loop measurement per scenario (0: skip)")
	flag.Float64Var(&cfg.openFraction, "open-fraction", 0.7, "open-loop rate as a fraction of the closed-loop rps")
	flag.DurationVar(&cfg.pgbenchTime, "pgbench-time", 10*time.Second, "pgbench -T per baseline")
	flag.DurationVar(&cfg.boxTime, "box-time", 3*time.Second, "argon2 and RS256 measurement each")
	flag.IntVar(&cfg.accounts, "accounts", 1000, "accounts for spend_distinct")
	flag.IntVar(&cfg.history, "history", 100000, "prior events of spend_history's account")
	flag.IntVar(&cfg.historyBatch, "history-batch", 2000, "events per transaction while building the history")
	flag.DurationVar(&cfg.rywTimeout, "ryw-timeout", 2*time.Second, "the service's RYW_TIMEOUT (projector_lag's ratio)")
	flag.StringVar(&cfg.rateLimits, "rate-limits", os.Getenv("RATE_LIMITS"), "the service's RATE_LIMITS, recorded")
	flag.IntVar(&cfg.watch.servicePID, "service-pid", 0, "the service's pid, for CPU per request (0: not measured)")
	flag.IntVar(&cfg.watch.postmasterPID, "postmaster-pid", 0, "the PostgreSQL postmaster's pid, for CPU per request (0: not measured)")
	render := flag.String("render", "", "only redraw the chart of this results JSON (next to it, .svg)")
	flag.Parse()
	if *render != "" {
		if err := rerender(*render); err != nil {
			fmt.Fprintln(os.Stderr, "bench/run:", err)
			os.Exit(1)
		}
		return
	}
	if cfg.dsn == "" {
		fmt.Fprintln(os.Stderr, "bench/run: -dsn is required")
		os.Exit(2)
	}
	if err := run(context.Background(), cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench/run:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Printf("[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, cfg config) error {
	began := time.Now()
	rep := newReport(cfg)
	a := newAPI(cfg.url)
	pool, err := pgxpool.New(ctx, cfg.dsn)
	if err != nil {
		return err
	}
	defer pool.Close()

	// 1. The box, while nothing else of ours runs: first let the freshly
	// started service and its server go idle.
	idle := waitIdle(cfg.watch, 20*time.Second)
	logf("box: argon2id (OWASP) and RS256 on %d cores, %s each (service idle after %s)", runtime.GOMAXPROCS(0), cfg.boxTime,
		idle.Round(100*time.Millisecond))
	c0 := cfg.watch.snap()
	if rep.Box.Argon2PerSec, err = argon2Rate(cfg.boxTime); err != nil {
		return err
	}
	if rep.Box.RS256PerSec, err = rs256Rate(cfg.boxTime); err != nil {
		return err
	}
	c1 := cfg.watch.snap()
	rep.Box.Disturbance = busyElsewhere(c0, c1, 2*cfg.boxTime.Seconds(), runtime.NumCPU())
	logf("box: argon2id %.1f hashes/s, RS256 %.0f signs/s (CPU taken by everything else meanwhile: %.1f%%)",
		rep.Box.Argon2PerSec, rep.Box.RS256PerSec, rep.Box.Disturbance)

	// 2. pgbench on the service's own server and database.
	if err := execSQL(ctx, cfg.dsn, pgbenchSetup, "VACUUM ANALYZE bench_rows"); err != nil {
		return fmt.Errorf("pgbench setup: %w", err)
	}
	for _, b := range []struct {
		key, script string
		into        *pgbenchResult
	}{
		{"update_random", scriptUpdateRandom, &rep.Pgbench.UpdateRandom},
		{"update_hot", scriptUpdateHot, &rep.Pgbench.UpdateHot},
		{"insert_300b", scriptInsert, &rep.Pgbench.Insert},
	} {
		r, err := runPgbench(cfg.dsn, b.key, b.script, cfg.clients, cfg.pgbenchTime)
		if err != nil {
			return err
		}
		*b.into = r
		logf("pgbench %-13s c=%d  %8.0f TPS  p50 %.2f ms  p99 %.2f ms", b.key, cfg.clients, r.TPS, r.P50, r.P99)
	}
	if err := execSQL(ctx, cfg.dsn, pgbenchTeardown); err != nil {
		return err
	}

	// 3. Accounts.
	w, err := setup(ctx, a, cfg)
	if err != nil {
		return err
	}

	// 4. The history account's 100,000 events.
	logf("history: %d spends on one account, %d per transaction", cfg.history, cfg.historyBatch)
	t := time.Now()
	kr, err := serviceKeyring()
	if err != nil {
		return err
	}
	last, err := buildHistory(ctx, cfg.dsn, kr, w.history.id, cfg.history, cfg.historyBatch)
	if err != nil {
		return err
	}
	rep.Meta.HistoryAppendSecs = time.Since(t).Seconds()
	logf("history: appended in %s; waiting for the projections", time.Since(t).Round(time.Millisecond))
	t = time.Now()
	if err := awaitProjections(ctx, pool, last, 3*time.Minute); err != nil {
		return err
	}
	rep.Meta.HistoryBuildSeconds = time.Since(t).Seconds()
	logf("history: projections caught up in %s", time.Since(t).Round(time.Millisecond))

	// 5. Scenarios.
	settle := func() error { return settleProjections(ctx, pool) }
	seed := seedAt(cfg.clients)

	if err := settle(); err != nil {
		return err
	}
	var loginN atomic.Int64
	rep.add("login", scenario(cfg, cfg.clients, func(w0 int) (bool, time.Duration) {
		i := w0
		if w0 < 0 { // open loop: round robin
			i = int(loginN.Add(1))
		}
		p, _ := a.login(w.login[i%len(w.login)].email)
		return p.AccessToken != "", 0
	}))

	// Refresh chains: each session's next refresh uses the token the last
	// one returned, as apps do. Sessions are taken from a pool, so no two
	// requests ever race on one session.
	sessions := make(chan string, 2*cfg.clients)
	for i := range 2 * cfg.clients {
		p, r := a.login(w.login[i%len(w.login)].email)
		if r.code != http.StatusOK {
			return fmt.Errorf("refresh setup: login %d %s", r.code, r.body)
		}
		sessions <- p.RefreshToken
	}
	if err := settle(); err != nil {
		return err
	}
	rep.add("refresh", scenario(cfg, cfg.clients, func(int) (bool, time.Duration) {
		tok := <-sessions
		p, _ := a.refreshPair(tok)
		if p.RefreshToken == "" {
			// Keep the pool full for the next user of the slot.
			lp, _ := a.login(w.login[int(loginN.Add(1))%len(w.login)].email)
			sessions <- lp.RefreshToken
			return false, 0
		}
		sessions <- p.RefreshToken
		return true, 0
	}))

	if err := settle(); err != nil {
		return err
	}
	var validN atomic.Int64
	rep.add("validate", scenario(cfg, cfg.clients, func(int) (bool, time.Duration) {
		acc := w.login[int(validN.Add(1))%len(w.login)]
		r := a.do(http.MethodPost, "/auth/validate", map[string]string{"token": acc.access}, "")
		return r.code == http.StatusOK && strings.Contains(string(r.body), `"valid":true`), 0
	}))

	if err := settle(); err != nil {
		return err
	}
	var distinctN atomic.Int64
	spendDistinct := func(int) (bool, time.Duration) {
		acc := w.distinct[int(distinctN.Add(1))%len(w.distinct)]
		return a.spend(acc.access).code == http.StatusCreated, 0
	}
	sd, sdCPU := closedPhase(cfg, cfg.clients, spendDistinct)
	// The open-loop phase of spend_distinct doubles as the projector-lag
	// measurement: a sampler spends on its own account now and then and
	// times how long the balances projection takes to pass that spend.
	if err := settle(); err != nil {
		return err
	}
	{
		var lag sample
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var lagErr error
		wg.Go(func() { lag, lagErr = sampleLag(ctx, cfg.dsn, a, w.lag.access, stop) })
		rate := sd.rps() * cfg.openFraction
		dur := max(cfg.open, 10*time.Second)
		c0 := cfg.watch.snap()
		o := openLoop(rate, dur, cfg.workers, spendDistinct)
		c1 := cfg.watch.snap()
		close(stop)
		wg.Wait()
		if lagErr != nil {
			return lagErr
		}
		rep.add("spend_distinct", phases{closed: sd, cpu: sdCPU, open: &o, openRate: rate, clients: cfg.clients})
		rep.add("projector_lag", phases{closed: lag, clients: 1, loadRPS: o.rps(),
			cpu: share(c0, c1, o.count()+lag.count(), o.elapsed.Seconds(), runtime.NumCPU())})
	}

	if err := settle(); err != nil {
		return err
	}
	rep.add("spend_hot", scenario(cfg, cfg.clients, func(int) (bool, time.Duration) {
		return a.spend(w.hot.access).code == http.StatusCreated, 0
	}))

	// History against fresh: one client each, at the same time, so both
	// see the same machine; latency without queueing.
	if err := settle(); err != nil {
		return err
	}
	{
		var hs, fs sample
		var wg sync.WaitGroup
		c0 := cfg.watch.snap()
		wg.Go(func() {
			hs = closedLoop(1, cfg.closed, func(int) (bool, time.Duration) {
				return a.spend(w.history.access).code == http.StatusCreated, 0
			})
		})
		wg.Go(func() {
			fs = closedLoop(1, cfg.closed, func(int) (bool, time.Duration) {
				return a.spend(w.fresh.access).code == http.StatusCreated, 0
			})
		})
		wg.Wait()
		both := share(c0, cfg.watch.snap(), hs.count()+fs.count(), max(hs.elapsed, fs.elapsed).Seconds(), runtime.NumCPU())
		rep.add("spend_history", phases{closed: hs, clients: 1, cpu: both})
		rep.add("spend_fresh", phases{closed: fs, clients: 1, cpu: both})
	}

	// A spend, then the balance: the read must wait for the balances
	// projection to pass the spend and show it. Each worker has its own
	// account, so the read has exactly one right answer: the spend's
	// newBalance. Latency is the read's.
	if err := settle(); err != nil {
		return err
	}
	var stale atomic.Int64
	var bN atomic.Int64
	balanceAfterSpend := func(wk int) (bool, time.Duration) {
		i := wk
		if wk < 0 {
			i = int(bN.Add(1))
		}
		acc := w.distinct[i%len(w.distinct)]
		r := a.spend(acc.access)
		if r.code != http.StatusCreated {
			return false, 0
		}
		var s struct {
			NewBalance struct{ Balance int64 } `json:"newBalance"`
		}
		_ = json.Unmarshal(r.body, &s)
		t := time.Now()
		g := a.do(http.MethodGet, "/credits/balance", nil, acc.access)
		lat := time.Since(t)
		if g.code != http.StatusOK {
			return false, 0
		}
		var b struct{ Balance int64 }
		_ = json.Unmarshal(g.body, &b)
		if b.Balance != s.NewBalance.Balance {
			stale.Add(1)
			return false, 0
		}
		return true, lat
	}
	rep.add("balance_after_spend", scenarioOpts(cfg, cfg.clients, balanceAfterSpend, true))
	rep.Meta.StaleReads = stale.Load()

	rep.finish(seed, began)
	rep.print()
	return rep.write(cfg.out)
}

// phases is what a scenario measured: the closed-loop run (rps and
// percentiles) and, optionally, the open-loop run at a fraction of it.
type phases struct {
	closed   sample
	open     *sample
	openRate float64
	clients  int
	loadRPS  float64
	cpu      *cpuShare
}

// closedPhase warms up, then measures closed-loop, with the CPU each
// process spent per request meanwhile.
func closedPhase(cfg config, clients int, fn op) (sample, *cpuShare) {
	if cfg.warmup > 0 {
		closedLoop(clients, cfg.warmup, fn)
	}
	a := cfg.watch.snap()
	s := closedLoop(clients, cfg.closed, fn)
	return s, share(a, cfg.watch.snap(), s.count(), s.elapsed.Seconds(), runtime.NumCPU())
}

func scenario(cfg config, clients int, fn op) phases { return scenarioOpts(cfg, clients, fn, false) }

// scenarioOpts runs the closed-loop phase, then the open-loop one at
// cfg.openFraction of its throughput. Closed-loop ops get their client
// index. Open-loop ops get -1 (pick round robin), or their worker index
// when perWorker is set (state that must not be shared by two requests
// in flight, e.g. balance_after_spend's account).
func scenarioOpts(cfg config, clients int, fn op, perWorker bool) phases {
	closed, cpu := closedPhase(cfg, clients, fn)
	p := phases{closed: closed, cpu: cpu, clients: clients}
	if cfg.open > 0 && p.closed.rps() > 0 {
		p.openRate = p.closed.rps() * cfg.openFraction
		openFn := fn
		if !perWorker {
			openFn = func(int) (bool, time.Duration) { return fn(-1) }
		}
		workers := cfg.workers
		o := openLoop(p.openRate, cfg.open, workers, openFn)
		p.open = &o
	}
	return p
}

// settleProjections waits until the projections have caught up with the
// log, so one scenario's backlog does not run during the next.
func settleProjections(ctx context.Context, pool *pgxpool.Pool) error {
	var c eventstore.Cursor
	err := pool.QueryRow(ctx, `SELECT tx_id, position FROM events ORDER BY tx_id DESC, position DESC LIMIT 1`).Scan(&c.TxID, &c.Position)
	if err != nil {
		return err
	}
	return awaitProjections(ctx, pool, c, time.Minute)
}

// sampleLag spends 1 credit on its own account, takes the X-Mana-Position
// of the answer, and polls the balances projection's checkpoint every
// millisecond until it has passed that position: the time from the client
// holding an acknowledged spend to the read model having applied it. One
// sample at a time, ~25 ms apart, until stop closes.
func sampleLag(ctx context.Context, dsn string, a *api, access string, stop <-chan struct{}) (sample, error) {
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return sample{}, err
	}
	pc.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return sample{}, err
	}
	defer pool.Close()
	var rec recorder
	start := time.Now()
	for {
		select {
		case <-stop:
			return rec.sample(time.Since(start)), nil
		case <-time.After(25 * time.Millisecond):
		}
		r := a.spend(access)
		t0 := time.Now()
		if r.code != http.StatusCreated {
			rec.add(nil, 1)
			continue
		}
		target, err := eventstore.ParseCursor(r.position)
		if err != nil || target.IsZero() {
			return sample{}, fmt.Errorf("spend answered X-Mana-Position %q", r.position)
		}
		for {
			c, err := checkpoint(ctx, pool, "balances")
			if err != nil {
				return sample{}, err
			}
			if !c.Less(target) {
				break
			}
			if time.Since(t0) > time.Minute {
				return sample{}, fmt.Errorf("balances projection did not pass %s in a minute", target)
			}
			time.Sleep(time.Millisecond)
		}
		rec.add([]time.Duration{time.Since(t0)}, 0)
	}
}

// world is the accounts the scenarios use.
type world struct {
	login                    []account // login, validate, refresh sessions
	distinct                 []account // spend_distinct, balance_after_spend
	hot, history, fresh, lag account
}

// setup registers and logs in every account, and opens each credit
// account with a first spend (the first command on an account folds its
// stream; the scenarios measure the steady state).
func setup(ctx context.Context, a *api, cfg config) (*world, error) {
	prefix := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	n := cfg.clients + cfg.accounts + 4
	logf("setup: registering and logging in %d accounts (two argon2 hashes each)", n)
	t := time.Now()
	accs := make([]account, n)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				acc, err := a.newAccount(fmt.Sprintf("%s-%d@example.com", prefix, i))
				if err == nil && i >= cfg.clients {
					if r := a.spend(acc.access); r.code != http.StatusCreated {
						err = fmt.Errorf("first spend: %d %s", r.code, r.body)
					}
				}
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				accs[i] = acc
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	logf("setup: done in %s", time.Since(t).Round(time.Millisecond))
	w := &world{login: accs[:cfg.clients], distinct: accs[cfg.clients : cfg.clients+cfg.accounts]}
	rest := accs[cfg.clients+cfg.accounts:]
	w.hot, w.history, w.fresh, w.lag = rest[0], rest[1], rest[2], rest[3]
	return w, nil
}

// seedFigures is the seed service's measurements on this machine
// (the measured limits of this machine, "The service we replace"): req/s and p99 ms
// at 8 and 32 closed-loop clients.
type seedFigure struct {
	Scenario string  `json:"scenario"`
	Clients  int     `json:"clients"`
	RPS      float64 `json:"rps"`
	P99      float64 `json:"p99"`
}

var seedTable = map[string][2]seedFigure{
	"login":               {{"login (bcrypt cost 12)", 8, 9.4, 897}, {"login (bcrypt cost 12)", 32, 9.3, 3518}},
	"refresh":             {{"refresh", 8, 356, 37}, {"refresh", 32, 348, 133}},
	"validate":            {{"validate", 8, 1881, 11}, {"validate", 32, 2084, 31}},
	"spend_distinct":      {{"use, 1,000 distinct users", 8, 479, 32}, {"use, 1,000 distinct users", 32, 497, 115}},
	"spend_hot":           {{"use, one hot user", 8, 321, 256}, {"use, one hot user", 32, 262, 281}},
	"balance_after_spend": {{"balance", 8, 1027, 16}, {"balance", 32, 1050, 61}},
}

// seedAt picks the seed's column nearest the run's concurrency.
func seedAt(clients int) map[string]seedFigure {
	col := 1
	if math.Abs(math.Log(float64(clients)/8)) < math.Abs(math.Log(float64(clients)/32)) {
		col = 0
	}
	m := map[string]seedFigure{}
	for k, v := range seedTable {
		m[k] = v[col]
	}
	return m
}

// serviceKeyring builds the service's keyring from DATA_KEK and
// EMAIL_INDEX_KEY (64 hex digits each), which bench.sh gives both.
func serviceKeyring() (*keyring.Keyring, error) {
	var keys [2][]byte
	for i, name := range []string{"DATA_KEK", "EMAIL_INDEX_KEY"} {
		b, err := hex.DecodeString(os.Getenv(name))
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("%s must hold the service's key as 64 hex digits", name)
		}
		keys[i] = b
	}
	return keyring.New(keys[0], keys[1])
}

func gitDescribe() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// rerender redraws the SVG of a results file, e.g. after a change to the
// chart.
func rerender(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	out := strings.TrimSuffix(path, ".json") + ".svg"
	return os.WriteFile(out, []byte(r.svg()), 0o644)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
