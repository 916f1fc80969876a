package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
)

// startTestNATS runs a JetStream server of the test's own in the test
// process, on a loopback TCP port, stopped when the test ends (after the
// serves, whose cleanups run first), and returns its client URL.
func startTestNATS(t *testing.T) string {
	t.Helper()
	srv, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		done := make(chan struct{})
		go func() { srv.WaitForShutdown(); close(done) }()
		select {
		case <-done:
		case <-time.After(shutdownTimeout):
			t.Errorf("NATS server did not shut down within %v", shutdownTimeout)
		}
	})
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready within 10s")
	}
	return srv.ClientURL()
}

// launchServe starts `serve --port 0` with vars as its whole environment
// without waiting for it: several serves may start at once. awaitListening
// waits for it.
func launchServe(t *testing.T, name string, vars map[string]string) *topoServe {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &topoServe{name: name, log: newLogWriter(), cancel: cancel, done: make(chan int, 1)}
	go func() {
		var stdout bytes.Buffer
		s.done <- run(ctx, []string{"serve", "--port", "0"}, envOf(vars), &stdout, s.log)
	}()
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("%s serve log:\n%s", name, s.log)
		}
	})
	return s
}

func (s *topoServe) awaitListening(t *testing.T) {
	t.Helper()
	select {
	case s.addr = <-s.log.addr:
	case code := <-s.done:
		s.once.Do(func() { s.code = code })
		t.Fatalf("%s serve exited with %d before listening; log:\n%s", s.name, code, s.log)
	case <-time.After(startupTimeout):
		t.Fatalf("%s serve did not listen within %v; log:\n%s", s.name, startupTimeout, s.log)
	}
}

// client returns an OpenAPI-validating client of s, as an authServer so
// the auth helpers (register, login) work on it.
func (s *topoServe) client(t *testing.T, vars map[string]string) *authServer {
	t.Helper()
	_, port, err := net.SplitHostPort(s.addr)
	if err != nil {
		t.Fatalf("%s listening addr %q: %v", s.name, s.addr, err)
	}
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", port)}
	return &authServer{vars: vars, log: s.log,
		c: apitest.New(t, &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }})}
}

// spendOutcome is what one POST /credits/use of the storm answered.
type spendOutcome struct {
	server   string // "A" or "B"
	key      string // idempotency key, "" for none
	status   int
	body     []byte
	replayed bool // Idempotent-Replayed: true
	write    creditWrite
}

// accountRow is a credit account's buckets and totals, as credit_accounts
// (the write side) and balances (the read model) both hold them.
type accountRow struct {
	Free, Paid, Held, TotalEarned, TotalSpent int64
}

// readAccounts reads every row of table (credit_accounts or balances) as
// the service's app role with system scope, as the service reads them.
func readAccounts(t *testing.T, db *topoDB, table string) map[uuid.UUID]accountRow {
	t.Helper()
	ctx, cancel := ctxOf(t)
	defer cancel()
	out := map[uuid.UUID]accountRow{}
	err := pg.InTx(ctx, db.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT user_id, free, paid, held, total_earned, total_spent FROM `+pgx.Identifier{table}.Sanitize())
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id uuid.UUID
			var a accountRow
			if err := rows.Scan(&id, &a.Free, &a.Paid, &a.Held, &a.TotalEarned, &a.TotalSpent); err != nil {
				return err
			}
			out[id] = a
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatalf("read %s: %v", table, err)
	}
	return out
}

// foldAccount folds u's credit account stream with domain.Account.Apply,
// the function both the write side and the balances projection use.
func foldAccount(t *testing.T, db *topoDB, u uuid.UUID) (accountRow, int) {
	t.Helper()
	ctx, cancel := ctxOf(t)
	defer cancel()
	var evs []eventstore.Decoded
	_, err := db.store.Execute(ctx, eventstore.Command{Name: "test.load", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}},
		func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			var err error
			evs, _, err = tx.Load(ctx, domain.StreamCreditAccount, u.String(), 0)
			return domain.Receipt{Status: http.StatusOK}, err
		})
	if err != nil {
		t.Fatalf("load account %s: %v", u, err)
	}
	a := domain.Account{UserID: u}
	for _, ev := range evs {
		ce, ok := ev.Event.(domain.CreditEvent)
		if !ok {
			t.Fatalf("account %s v%d: %s is not a credit event", u, ev.StreamVersion, ev.EventType)
		}
		a.Apply(ce)
	}
	return accountRow{Free: int64(a.Free), Paid: int64(a.Paid), Held: int64(a.Held),
		TotalEarned: int64(a.TotalEarned), TotalSpent: int64(a.TotalSpent)}, len(evs)
}

// TestTwoServersOneDatabase: two `serve` processes on one database, one
// DATA_DIR (the dev secrets) and one external NATS JetStream server take a
// storm of concurrent spends of one account, split between them, some with
// the same idempotency key sent to both at once. The account never goes
// below zero, every effect happens once, the ledger balances and verifies,
// the read model converges to the write side, and exactly one of them
// relays.
func TestTwoServersOneDatabase(t *testing.T) {
	t.Parallel()
	natsURL := startTestNATS(t)
	dsn := pgtest.NewDB(t)
	dataDir := t.TempDir()
	vars := map[string]string{
		"DATABASE_URL":       dsn,
		"DATA_DIR":           dataDir,
		"NATS_URL":           natsURL,
		"PORT":               "0",
		"DATABASE_MAX_CONNS": "6",
		"ARGON2_MEMORY_KIB":  "1024",
		"ARGON2_TIME":        "1",
	}

	// Both start together: migrate, seed, secrets and signing key races
	// included.
	srvA, srvB := launchServe(t, "A", vars), launchServe(t, "B", vars)
	srvA.awaitListening(t)
	srvB.awaitListening(t)
	holderA, holderB := srvA.attr(t, "listening", "holder"), srvB.attr(t, "listening", "holder")
	if holderA == holderB {
		t.Fatalf("both serves hold leases as %s", holderA)
	}
	for _, s := range []*topoServe{srvA, srvB} {
		if len(s.records("embedded NATS JetStream")) != 0 {
			t.Errorf("serve %s started an embedded NATS server despite NATS_URL", s.name)
		}
	}
	a, b := srvA.client(t, vars), srvB.client(t, vars)
	db := openTopoDB(t, dsn, dataDir)

	// One user, registered on A, logged in on both.
	email, password := "multi."+uuid.NewString()[:8]+"@example.com", "two servers password 1"
	user := a.register(t, email, password, "Multi")
	tokens := map[string]string{
		"A": a.login(t, email, password, "").AccessToken,
		"B": b.login(t, email, password, "").AccessToken,
	}
	servers := map[string]*authServer{"A": a, "B": b}
	start := creditBalance{Balance: 150, FreeCreditsRemaining: 150, TotalEarned: 150, DailyFreeCredits: 5}
	wantBalance(t, "balance on A before the storm", getBalanceAs(t, a, tokens["A"]), start)
	wantBalance(t, "balance on B before the storm", getBalanceAs(t, b, tokens["B"]), start)

	// The storm: 200 requests, 170 distinct effects for 150 credits. 30
	// keys are each sent to A and B at once (60 requests); 140 requests
	// carry no key, half to each server.
	const keyed, plain = 30, 140
	type spec struct{ server, key, description string }
	var specs []spec
	for i := range keyed {
		k := fmt.Sprintf("multi-%d-%s", i, uuid.NewString()[:8])
		d := fmt.Sprintf("keyed %d", i)
		specs = append(specs, spec{"A", k, d}, spec{"B", k, d})
	}
	for i := range plain {
		specs = append(specs, spec{[]string{"A", "B"}[i%2], "", fmt.Sprintf("plain %d", i)})
	}
	rand.Shuffle(len(specs), func(i, j int) { specs[i], specs[j] = specs[j], specs[i] })

	out := make([]spendOutcome, len(specs))
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i, sp := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			hs := []http.Header{authBearer(tokens[sp.server])}
			if sp.key != "" {
				hs = append(hs, idemKey(sp.key))
			}
			r := servers[sp.server].c.Do(http.MethodPost, "/api/v1/credits/use",
				map[string]any{"amount": 1, "appId": "chat", "description": sp.description}, hs...)
			o := spendOutcome{server: sp.server, key: sp.key, status: r.Status, body: r.Body,
				replayed: r.Header.Get("Idempotent-Replayed") == "true"}
			if r.Status == http.StatusCreated {
				if err := json.Unmarshal(r.Body, &o.write); err != nil {
					t.Errorf("use on %s answered 201 %s: %v", sp.server, r.Body, err)
				}
			}
			out[i] = o
		}()
	}
	began := time.Now()
	close(gate)
	stormDone := make(chan struct{})
	go func() { wg.Wait(); close(stormDone) }()
	select {
	case <-stormDone:
	case <-time.After(2 * time.Minute):
		t.Fatalf("the 200 spends did not all answer within 2m")
	}
	t.Logf("200 concurrent spends answered in %v", time.Since(began).Round(time.Millisecond))

	effects := map[uuid.UUID]spendOutcome{} // transaction id -> the original answer
	originals, replays, refused := 0, 0, 0
	perServer := map[string]map[int]int{"A": {}, "B": {}}
	byKey := map[string][]spendOutcome{}
	for _, o := range out {
		perServer[o.server][o.status]++
		if o.key != "" {
			byKey[o.key] = append(byKey[o.key], o)
		}
		switch o.status {
		case http.StatusCreated:
			id := o.write.Transaction.ID
			if !o.write.Success || id == uuid.Nil || o.write.Transaction.Type != "spend" || o.write.Transaction.Amount != 1 {
				t.Errorf("use on %s answered %s", o.server, o.body)
				continue
			}
			if o.replayed != o.write.Replayed {
				t.Errorf("use on %s: Idempotent-Replayed header %v, body replayed %v", o.server, o.replayed, o.write.Replayed)
			}
			if o.write.Replayed {
				replays++
				if o.key == "" {
					t.Errorf("a request without a key was replayed: %s", o.body)
				}
				continue
			}
			originals++
			if prev, dup := effects[id]; dup {
				t.Errorf("transaction %s answered as original twice (%s and %s)", id, prev.server, o.server)
			}
			effects[id] = o
		case http.StatusPaymentRequired:
			refused++
			var env api.Envelope
			if err := json.Unmarshal(o.body, &env); err != nil || env.Code != "INSUFFICIENT_CREDITS" {
				t.Errorf("402 on %s with body %s", o.server, o.body)
			}
		default:
			t.Errorf("use on %s answered %d (want 201 or 402): %s", o.server, o.status, o.body)
		}
	}
	t.Logf("answers by server and status: %v; %d originals, %d replays, %d refused", perServer, originals, replays, refused)
	if len(effects) != 150 || originals != 150 {
		t.Errorf("%d distinct spends succeeded (%d original answers), want exactly 150", len(effects), originals)
	}
	if originals+replays+refused != len(specs) {
		t.Errorf("%d originals + %d replays + %d refusals != %d requests", originals, replays, refused, len(specs))
	}
	// Spends of one account are serialized across both servers: the
	// originals' new balances are 149, 148, ..., 0, each exactly once.
	var after []int64
	for _, o := range effects {
		after = append(after, o.write.NewBalance.Balance)
		if nb := o.write.NewBalance; nb.Balance+nb.HeldCredits != nb.TotalEarned-nb.TotalSpent || nb.Balance < 0 {
			t.Errorf("newBalance %+v breaks the balance invariant", nb)
		}
	}
	slices.Sort(after)
	for i, v := range after {
		if v != int64(i) {
			t.Errorf("the successful spends' new balances are %v, want each of 0..149 once", after)
			break
		}
	}
	// A key sent to both servers has one effect: both answers agree, one
	// original and one replay of it, or two refusals.
	for k, pair := range byKey {
		if len(pair) != 2 {
			t.Errorf("key %s: %d answers, want 2", k, len(pair))
			continue
		}
		x, y := pair[0], pair[1]
		switch {
		case x.status == http.StatusPaymentRequired && y.status == http.StatusPaymentRequired:
		case x.status == http.StatusCreated && y.status == http.StatusCreated:
			if x.write.Transaction.ID != y.write.Transaction.ID || x.write.Replayed == y.write.Replayed ||
				x.write.NewBalance != y.write.NewBalance {
				t.Errorf("key %s: %s answered %s, %s answered %s; want one original and its replay", k, x.server, x.body, y.server, y.body)
			}
		default:
			t.Errorf("key %s: %s answered %d, %s answered %d", k, x.server, x.status, y.server, y.status)
		}
	}

	// Both servers read the same, empty account.
	final := creditBalance{Balance: 0, FreeCreditsRemaining: 0, TotalEarned: 150, TotalSpent: 150, DailyFreeCredits: 5}
	wantBalance(t, "balance on A after the storm", getBalanceAs(t, a, tokens["A"]), final)
	wantBalance(t, "balance on B after the storm", getBalanceAs(t, b, tokens["B"]), final)

	// The log: every credit event balances, and so does the whole log; the
	// spends recorded are exactly the answered ones.
	checkLogPostings(t, db, user.ID, effects)
	if r := runCmd(t, vars, "ledger", "verify"); r.code != 0 || !strings.HasPrefix(r.stdout, "hash chains: ok") {
		t.Errorf("ledger verify: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	// The write side equals the fold of the account's events; the read
	// model converges to the write side.
	write := readAccounts(t, db, "credit_accounts")
	want := accountRow{TotalEarned: 150, TotalSpent: 150}
	if got, ok := write[user.ID]; !ok || got != want {
		t.Errorf("credit_accounts row of the user = %+v (present %v), want %+v", got, ok, want)
	}
	for u, row := range write {
		if folded, n := foldAccount(t, db, u); folded != row {
			t.Errorf("account %s: write side %+v != fold of its %d events %+v", u, row, n, folded)
		}
	}
	var read map[uuid.UUID]accountRow
	topoUntil(t, "the balances read model to equal credit_accounts", func() bool {
		read = readAccounts(t, db, "balances")
		if len(read) != len(write) {
			return false
		}
		for u, row := range write {
			if read[u] != row {
				return false
			}
		}
		return true
	})

	// Relay and projections caught up, no projection failed, the seeding
	// of two serves at once made each default package once.
	db.converged(t, len(domain.DefaultPackages()))
	if n := db.count(t, `SELECT count(*) FROM events WHERE event_type = 'package.created'`); n != len(domain.DefaultPackages()) {
		t.Errorf("%d package.created events after two serves seeded at once, want %d", n, len(domain.DefaultPackages()))
	}

	// Exactly one server holds the relay lease, and only it relays.
	checkLeases(t, db, map[string]*topoServe{holderA: srvA, holderB: srvB})

	// Every event reached the external JetStream server once.
	checkJetStream(t, natsURL, db.count(t, `SELECT count(*) FROM events`))

	for _, s := range []*topoServe{srvA, srvB} {
		if code := s.stop(t); code != 0 {
			t.Errorf("serve %s exited with %d, want 0", s.name, code)
		}
	}
}

// getBalanceAs reads GET /credits/balance with token.
func getBalanceAs(t *testing.T, s *authServer, token string) creditBalance {
	t.Helper()
	return getBalance(t, s, creditUser{token: token})
}

// checkLogPostings fails unless every credit event has at least two
// non-zero postings summing to zero, all postings of the log sum to zero,
// and user's credit.spent events are exactly the effects.
func checkLogPostings(t *testing.T, db *topoDB, user uuid.UUID, effects map[uuid.UUID]spendOutcome) {
	t.Helper()
	ctx, cancel := ctxOf(t)
	defer cancel()
	rows, err := db.pool.Query(ctx, `SELECT event_id, event_type, stream_id, coalesce(payload->'postings', 'null'::jsonb), coalesce(payload->>'transactionId', '')
FROM events ORDER BY tx_id, position`)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		id                uuid.UUID
		typ, stream, txID string
		postings          []byte
	}
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		return x, r.Scan(&x.id, &x.typ, &x.stream, &x.postings, &x.txID)
	})
	if err != nil {
		t.Fatal(err)
	}
	var total domain.Credits
	credit := 0
	spent := map[uuid.UUID]bool{}
	for _, r := range all {
		var ps []domain.Posting
		if err := json.Unmarshal(r.postings, &ps); err != nil {
			t.Fatalf("event %s (%s): postings %s: %v", r.id, r.typ, r.postings, err)
		}
		if strings.HasPrefix(r.typ, "credit.") {
			credit++
			if len(ps) < 2 {
				t.Errorf("event %s (%s) has %d postings", r.id, r.typ, len(ps))
			}
		}
		if s := domain.SumPostings(ps); s != 0 {
			t.Errorf("event %s (%s): postings sum to %d: %s", r.id, r.typ, s, r.postings)
		}
		for _, p := range ps {
			if p.Amount == 0 {
				t.Errorf("event %s (%s): zero posting on %s", r.id, r.typ, p.Account)
			}
		}
		total += domain.SumPostings(ps)
		if r.typ == "credit.spent" && r.stream == user.String() {
			id, err := uuid.Parse(r.txID)
			if err != nil {
				t.Errorf("credit.spent %s: transactionId %q", r.id, r.txID)
				continue
			}
			if spent[id] {
				t.Errorf("transaction %s recorded twice", id)
			}
			spent[id] = true
		}
	}
	if total != 0 {
		t.Errorf("all postings of the log sum to %d", total)
	}
	if len(spent) != len(effects) {
		t.Errorf("the log holds %d spends of the user, the servers answered %d", len(spent), len(effects))
	}
	for id := range effects {
		if !spent[id] {
			t.Errorf("answered transaction %s is not in the log", id)
		}
	}
	t.Logf("log: %d events (%d credit), postings balanced, %d spends", len(all), credit, len(spent))
}

// checkLeases fails unless exactly one live relay lease exists, held by
// one of the serves, every lease is held by one of them, and the serve
// without the relay lease never published.
func checkLeases(t *testing.T, db *topoDB, serves map[string]*topoServe) {
	t.Helper()
	ctx, cancel := ctxOf(t)
	defer cancel()
	rows, err := db.pool.Query(ctx, `SELECT name, holder, expires_at > clock_timestamp() FROM leases ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	type lease struct {
		name, holder string
		live         bool
	}
	leases, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (lease, error) {
		var l lease
		return l, r.Scan(&l.name, &l.holder, &l.live)
	})
	if err != nil {
		t.Fatal(err)
	}
	relays := 0
	var relayHolder string
	for _, l := range leases {
		if _, ok := serves[l.holder]; !ok {
			t.Errorf("lease %s held by %s, neither serve", l.name, l.holder)
		}
		if l.name == eventstore.RelayLeaseName {
			relays++
			relayHolder = l.holder
			if !l.live {
				t.Errorf("the relay lease of %s has expired while both serves run", l.holder)
			}
		}
	}
	if relays != 1 {
		t.Fatalf("%d relay leases, want exactly 1: %+v", relays, leases)
	}
	t.Logf("leases: %+v", leases)
	for holder, s := range serves {
		published := len(s.records("relay publishing")) > 0
		if holder == relayHolder && !published {
			t.Errorf("serve %s holds the relay lease but did not log that it publishes", s.name)
		}
		if holder != relayHolder && published {
			t.Errorf("serve %s logged relay publishing without the relay lease (held by %s)", s.name, relayHolder)
		}
	}
}

// checkJetStream fails unless the MANA_EVENTS stream on the NATS server at
// natsURL holds n messages.
func checkJetStream(t *testing.T, natsURL string, n int) {
	t.Helper()
	ctx, cancel := ctxOf(t)
	defer cancel()
	c, err := natsx.Connect(ctx, natsx.Config{URL: natsURL, Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.JS.Stream(ctx, natsx.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(n) {
		t.Errorf("stream %s holds %d messages, the log %d events", natsx.StreamName, info.State.Msgs, n)
	}
}
