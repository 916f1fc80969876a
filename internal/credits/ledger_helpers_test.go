package credits_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/credits"
	"github.com/manacore/mana/internal/identity"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/password"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
)

// Test defaults: the signup bonus and daily amount the service runs with,
// and the day every test starts on (registrations happen on it).
const (
	signupBonus = 150
	dailyFree   = 20
)

var dayD = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

// wait bounds every wait and every test context.
const wait = 2 * time.Minute

// testClock is a settable clock shared by the store (occurred_at, tx.Now),
// the credits service (ExpireDue) and identity; safe for concurrent use.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t.UTC()
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// noTokens stands in for internal/tokens: registration signs nothing.
type noTokens struct{}

func (noTokens) Sign(domain.Claims) (string, error) { return "", errors.New("noTokens: unused") }
func (noTokens) Verify(string) (domain.Claims, error) {
	return domain.Claims{}, errors.New("noTokens: unused")
}
func (noTokens) JWKS() []byte { return []byte(`{"keys":[]}`) }

// lagging is a read-your-writes port whose read models never catch up, so
// Balance answers from the write side (credit_accounts).
type lagging struct{}

func (lagging) Await(context.Context, string, uuid.UUID, string) error {
	return &domain.Error{Code: domain.CodeReadModelLagging, Message: "lagging", RetryAfterSeconds: 1}
}

// env is one test's database with a keyring, a clock, an identity service
// for registrations and one credits service (one "node").
type env struct {
	dsn   string
	pool  *pgxpool.Pool
	kr    *keyring.Keyring
	clock *testClock
	store *eventstore.Store
	ids   *identity.Service
	svc   *credits.Service
	bonus int64
	seq   atomic.Int64
}

type envOpts struct {
	conns int32
	bonus int64
}

func newEnv(t testing.TB) *env { return newEnvWith(t, envOpts{}) }

func newEnvWith(t testing.TB, o envOpts) *env {
	t.Helper()
	if o.conns == 0 {
		o.conns = pgtest.PoolMaxConns
	}
	if o.bonus == 0 {
		o.bonus = signupBonus
	}
	kek, idx := make([]byte, keyring.KeySize), make([]byte, keyring.KeySize)
	_, _ = rand.Read(kek)
	_, _ = rand.Read(idx)
	kr, err := keyring.New(kek, idx)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{dsn: pgtest.NewDB(t), kr: kr, clock: &testClock{now: dayD}, bonus: o.bonus}
	e.pool = e.openPool(t, o.conns)
	e.store, e.svc = e.node(t, e.pool)
	e.ids, err = identity.New(identity.Config{
		Store: e.store, Tokens: noTokens{}, Hasher: password.New(password.Params{MemoryKiB: 1024, Time: 1, Threads: 1}, 0),
		Freshness: lagging{}, Clock: e.clock, SignupBonus: o.bonus, ReuseWindow: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	// After every test: the ledger balances, the chains verify and every
	// write-side account equals the fold of its events.
	if tt, ok := t.(*testing.T); ok {
		tt.Cleanup(func() {
			if !tt.Failed() {
				e.checkLedger(tt)
			}
		})
	}
	return e
}

func (e *env) openPool(t testing.TB, conns int32) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	pool, err := pg.Open(ctx, e.dsn, conns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// node returns a store and a credits service over pool: another API node
// when pool is a pool of its own on the same database.
func (e *env) node(t testing.TB, pool *pgxpool.Pool) (*eventstore.Store, *credits.Service) {
	t.Helper()
	store, err := eventstore.New(pool, eventstore.Options{Keyring: e.kr, Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := credits.New(credits.Config{Store: store, Freshness: lagging{}, Clock: e.clock, DailyFree: dailyFree})
	if err != nil {
		t.Fatal(err)
	}
	return store, svc
}

// secondNode is a credits service with its own pool and store on e's
// database, as a second API process would have.
func (e *env) secondNode(t testing.TB) *credits.Service {
	t.Helper()
	_, svc := e.node(t, e.openPool(t, pgtest.PoolMaxConns))
	return svc
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// register registers a new user the way the API does (user.registered
// and the signup bonus in one transaction) at the clock's time.
func (e *env) register(t testing.TB) uuid.UUID {
	t.Helper()
	n := e.seq.Add(1)
	u, _, err := e.ids.Register(ctxT(t), domain.RegisterInput{
		Email: fmt.Sprintf("user%d-%s@example.com", n, uuid.NewString()[:8]), Password: "a long enough password", Name: "User",
	}, domain.RequestMeta{RequestID: "req-test"})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	return u.ID
}

func userCaller(u uuid.UUID) domain.Caller { return domain.Caller{Kind: "user", UserID: u} }

func appCaller(app string) domain.Caller { return domain.Caller{Kind: "app", AppID: app} }

var adminID = uuid.MustParse("00000000-0000-7000-8000-00000000a0a0")

func adminCaller() domain.Caller { return domain.Caller{Kind: "admin", UserID: adminID} }

// code returns err's error code, "" for nil and "unexpected: …" for an
// error without one.
func code(err error) domain.Code {
	if err == nil {
		return ""
	}
	var de *domain.Error
	if errors.As(err, &de) {
		return de.Code
	}
	return domain.Code("unexpected: " + err.Error())
}

// account reads the write-side account row; false when it does not exist.
func (e *env) account(t testing.TB, u uuid.UUID) (domain.Account, bool) {
	t.Helper()
	a := domain.Account{UserID: u}
	found := false
	err := pg.InTx(ctxT(t), e.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		err := tx.QueryRow(context.Background(), `SELECT version, free, paid, held, total_earned, total_spent, created_at, last_daily_grant
FROM credit_accounts WHERE user_id = $1`, u).Scan(&a.Version, &a.Free, &a.Paid, &a.Held, &a.TotalEarned, &a.TotalSpent, &a.CreatedAt, &a.LastDailyGrant)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		found = err == nil
		return err
	})
	if err != nil {
		t.Fatalf("read account: %v", err)
	}
	return a, found
}

// mustAccount is account for an account that must exist.
func (e *env) mustAccount(t testing.TB, u uuid.UUID) domain.Account {
	t.Helper()
	a, ok := e.account(t, u)
	if !ok {
		t.Fatalf("no credit_accounts row for %s", u)
	}
	return a
}

// stream loads and decodes the account's events in version order.
func (e *env) stream(t testing.TB, u uuid.UUID) []eventstore.Decoded {
	t.Helper()
	var out []eventstore.Decoded
	_, err := e.store.Execute(ctxT(t), eventstore.Command{Name: "test.load", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}},
		func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			evs, _, err := tx.Load(ctx, domain.StreamCreditAccount, u.String(), 0)
			out = evs
			return domain.Receipt{Status: 200}, err
		})
	if err != nil {
		t.Fatalf("load stream: %v", err)
	}
	return out
}

// fold folds the account's stream with domain.Account.Apply.
func (e *env) fold(t testing.TB, u uuid.UUID) domain.Account {
	t.Helper()
	a := domain.Account{UserID: u}
	for _, ev := range e.stream(t, u) {
		ce, ok := ev.Event.(domain.CreditEvent)
		if !ok {
			t.Fatalf("%s v%d: %s is not a credit event", u, ev.StreamVersion, ev.EventType)
		}
		a.Apply(ce)
		a.Version = ev.StreamVersion
	}
	return a
}

// typesOf returns the event types of the account's stream, in order.
func (e *env) typesOf(t testing.TB, u uuid.UUID) []string {
	t.Helper()
	var out []string
	for _, ev := range e.stream(t, u) {
		out = append(out, ev.EventType)
	}
	return out
}

// countType counts events of type typ in u's stream.
func (e *env) countType(t testing.TB, u uuid.UUID, typ string) int {
	t.Helper()
	n := 0
	for _, ty := range e.typesOf(t, u) {
		if ty == typ {
			n++
		}
	}
	return n
}

// eventCount counts every event in the log.
func (e *env) eventCount(t testing.TB) int {
	t.Helper()
	var n int
	err := pg.InTx(ctxT(t), e.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		return tx.QueryRow(context.Background(), `SELECT count(*) FROM events`).Scan(&n)
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// sameBuckets compares the buckets, totals, version and last daily grant.
func sameBuckets(a, b domain.Account) bool {
	return a.Version == b.Version && a.Free == b.Free && a.Paid == b.Paid && a.Held == b.Held &&
		a.TotalEarned == b.TotalEarned && a.TotalSpent == b.TotalSpent && a.LastDailyGrant == b.LastDailyGrant
}

func showAccount(a domain.Account) string {
	return fmt.Sprintf("v%d free=%d paid=%d held=%d earned=%d spent=%d daily=%q",
		a.Version, a.Free, a.Paid, a.Held, a.TotalEarned, a.TotalSpent, a.LastDailyGrant)
}

// checkAccount fails unless u's write-side row equals the fold of its
// events and balance + held = earned − spent with no bucket negative.
func (e *env) checkAccount(t testing.TB, u uuid.UUID) domain.Account {
	t.Helper()
	row := e.mustAccount(t, u)
	folded := e.fold(t, u)
	if !sameBuckets(row, folded) {
		t.Fatalf("account %s: write side %s != fold %s", u, showAccount(row), showAccount(folded))
	}
	if row.Free < 0 || row.Paid < 0 || row.Held < 0 || row.Free+row.Paid+row.Held != row.TotalEarned-row.TotalSpent {
		t.Fatalf("account %s breaks balance + held = earned - spent: %s", u, showAccount(row))
	}
	return row
}

// checkLedger: each credit event's postings sum to zero and so do all
// postings of the log; every chain verifies; every write-side account
// equals its fold.
func (e *env) checkLedger(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	type row struct {
		id      uuid.UUID
		typ     string
		payload []byte
	}
	var rows []row
	var users []uuid.UUID
	err := pg.InTx(ctx, e.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		rs, err := tx.Query(ctx, `SELECT event_id, event_type, payload FROM events ORDER BY tx_id, position`)
		if err != nil {
			return err
		}
		rows, err = pgx.CollectRows(rs, func(r pgx.CollectableRow) (row, error) {
			var x row
			return x, r.Scan(&x.id, &x.typ, &x.payload)
		})
		if err != nil {
			return err
		}
		rs, err = tx.Query(ctx, `SELECT user_id FROM credit_accounts`)
		if err != nil {
			return err
		}
		users, err = pgx.CollectRows(rs, pgx.RowTo[uuid.UUID])
		return err
	})
	if err != nil {
		t.Fatalf("read events: %v", err)
	}
	var total domain.Credits
	creditEvents := 0
	for _, r := range rows {
		var p struct {
			Postings []domain.Posting `json:"postings"`
		}
		if err := json.Unmarshal(r.payload, &p); err != nil {
			t.Fatalf("event %s (%s): %v", r.id, r.typ, err)
		}
		isCredit := len(r.typ) > 7 && r.typ[:7] == "credit."
		if isCredit {
			creditEvents++
			if len(p.Postings) < 2 {
				t.Errorf("event %s (%s) has %d postings", r.id, r.typ, len(p.Postings))
			}
		}
		if s := domain.SumPostings(p.Postings); s != 0 {
			t.Errorf("event %s (%s): postings sum to %d: %+v", r.id, r.typ, s, p.Postings)
		}
		for _, ps := range p.Postings {
			if ps.Amount == 0 {
				t.Errorf("event %s (%s): zero posting on %s", r.id, r.typ, ps.Account)
			}
		}
		total += domain.SumPostings(p.Postings)
	}
	if total != 0 {
		t.Errorf("all postings of the log sum to %d", total)
	}
	checked, brk, err := e.store.VerifyChains(ctx)
	if err != nil || brk != nil {
		t.Fatalf("verify chains: %v %v", err, brk)
	}
	if checked != int64(len(rows)) {
		t.Errorf("verify checked %d events of %d", checked, len(rows))
	}
	for _, u := range users {
		e.checkAccount(t, u)
	}
	t.Logf("ledger: %d events (%d credit), %d accounts: balanced, chains verify, accounts = folds", len(rows), creditEvents, len(users))
}

// body decodes a receipt's JSON body.
func body(t testing.TB, r domain.Receipt) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("receipt body %q: %v", r.Body, err)
	}
	return m
}

// newBalance decodes a write receipt's newBalance.
func newBalance(t testing.TB, r domain.Receipt) domain.Balance {
	t.Helper()
	var m struct {
		NewBalance *domain.Balance `json:"newBalance"`
	}
	if err := json.Unmarshal(r.Body, &m); err != nil || m.NewBalance == nil {
		t.Fatalf("receipt body %q has no newBalance (%v)", r.Body, err)
	}
	return *m.NewBalance
}

// idOf returns the uuid at path (e.g. "transaction", "id") in a body.
func idOf(t testing.TB, r domain.Receipt, path ...string) uuid.UUID {
	t.Helper()
	var cur any = body(t, r)
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			t.Fatalf("body %s: no %v", r.Body, path)
		}
		cur = m[p]
	}
	s, _ := cur.(string)
	id, err := uuid.Parse(s)
	if err != nil {
		t.Fatalf("body %s: %v is not a uuid: %v", r.Body, path, err)
	}
	return id
}

// balanceOf is the balance object of the write-side account.
func balanceOf(a domain.Account) domain.Balance { return a.Balance(dailyFree) }

// wantBalance fails unless the service's Balance (the write side here)
// and the account row show free, paid and held.
func (e *env) wantBalance(t testing.TB, u uuid.UUID, free, paid, held domain.Credits) domain.Account {
	t.Helper()
	a := e.checkAccount(t, u)
	if a.Free != free || a.Paid != paid || a.Held != held {
		t.Fatalf("account %s: %s, want free=%d paid=%d held=%d", u, showAccount(a), free, paid, held)
	}
	b, err := e.svc.Balance(ctxT(t), u, "")
	if err != nil {
		t.Fatal(err)
	}
	if b != balanceOf(a) {
		t.Fatalf("Balance = %+v, want %+v", b, balanceOf(a))
	}
	return a
}

// use spends amount for app as the user.
func (e *env) use(t testing.TB, svc *credits.Service, u uuid.UUID, amount domain.Credits, key string) (domain.Receipt, error) {
	t.Helper()
	return svc.Use(ctxT(t), userCaller(u), u, domain.UseInput{Amount: amount, AppID: "app", Description: "test spend", IdempotencyKey: key})
}

// must returns a function that fails the test on err and returns r:
// must(t)(svc.Use(…)).
func must(t testing.TB) func(domain.Receipt, error) domain.Receipt {
	return func(r domain.Receipt, err error) domain.Receipt {
		t.Helper()
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return r
	}
}

// wantCode fails unless err has code want.
func wantCode(t testing.TB, err error, want domain.Code) {
	t.Helper()
	if got := code(err); got != want {
		t.Fatalf("error = %q (%v), want %s", got, err, want)
	}
}

// grant gives u amount in bucket as an admin.
func (e *env) grant(t testing.TB, u uuid.UUID, amount domain.Credits, bucket string) domain.Receipt {
	t.Helper()
	return must(t)(e.svc.Grant(ctxT(t), adminCaller(), domain.AdminCreditInput{UserID: u, Amount: amount, Bucket: bucket, Reason: "test grant"}))
}
