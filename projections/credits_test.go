package projections_test

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/natsx"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
	"github.com/manacore/mana/projections"
)

// creditProjections are the three credit read models.
func creditProjections() []projections.Projection {
	return []projections.Projection{projections.Balances(), projections.Transactions(), projections.UsageStats()}
}

var creditTables = []string{"balances", "transactions", "usage_stats"}

// testClock is a settable clock: it stamps the events' occurred_at, so a
// test can put them on the UTC days it wants.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// newClockEnv is newEnv with an event store whose occurred_at comes from
// the returned clock, set to start.
func newClockEnv(t *testing.T, start time.Time) (*env, *testClock) {
	t.Helper()
	clock := &testClock{now: start}
	pool := pgtest.NewPool(t)
	kek, idx := make([]byte, 32), make([]byte, 32)
	rand.Read(kek)
	rand.Read(idx)
	kr, err := keyring.New(kek, idx)
	if err != nil {
		t.Fatal(err)
	}
	store, err := eventstore.New(pool, eventstore.Options{Keyring: kr, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := natsx.Connect(ctxT(t), natsx.Config{DataDir: t.TempDir(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	return &env{pool: pool, store: store, js: conn.JS}, clock
}

// creditAccount plays the write side of one user's credit account in a
// test: it decides with domain.Account and domain.Hold, appends the events
// to the stream credit_account/<user>, folds them into acct with
// domain.Account.Apply, and records what the transactions and usage read
// models must then hold.
type creditAccount struct {
	t     *testing.T
	e     *env
	clock *testClock
	acct  domain.Account
	holds map[uuid.UUID]domain.Hold
	// txs are the expected transactions, oldest first.
	txs []domain.Transaction
	// usage is the expected usage, by day and app.
	usage map[[2]string]domain.UsageDay
	// last is the record of the account's last event.
	last eventstore.Record
	// events counts the events appended.
	events int
}

func (e *env) creditAccount(t *testing.T, clock *testClock, user uuid.UUID) *creditAccount {
	return &creditAccount{t: t, e: e, clock: clock, holds: map[uuid.UUID]domain.Hold{}, usage: map[[2]string]domain.UsageDay{},
		acct: domain.Account{UserID: user, CreatedAt: clock.Now()}}
}

func (c *creditAccount) user() uuid.UUID { return c.acct.UserID }

func strp(s string) *string { return &s }

// emit appends evs to the account's stream in one command, folds them
// into acct and records the expected rows.
func (c *creditAccount) emit(evs ...domain.CreditEvent) []eventstore.Record {
	c.t.Helper()
	list := make([]domain.Event, len(evs))
	for i, ev := range evs {
		if s := domain.SumPostings(ev.Entries()); s != 0 {
			c.t.Fatalf("%s: postings sum to %d", ev.EventType(), s)
		}
		list[i] = ev
	}
	recs, err := c.e.appendEvents(ctxT(c.t), domain.StreamCreditAccount, c.user().String(), list...)
	if err != nil {
		c.t.Fatal(err)
	}
	for i, ev := range evs {
		c.acct.Apply(ev)
		if a := c.acct; a.Free < 0 || a.Paid < 0 || a.Held < 0 || a.Free+a.Paid+a.Held != a.TotalEarned-a.TotalSpent {
			c.t.Fatalf("write side broke the invariant: %+v", a)
		}
		c.expect(ev, recs[i])
	}
	c.last = recs[len(recs)-1]
	c.events += len(recs)
	return recs
}

// expect records the transaction and usage ev must produce.
func (c *creditAccount) expect(ev domain.CreditEvent, rec eventstore.Record) {
	tx := domain.Transaction{ID: rec.EventID, CreatedAt: rec.OccurredAt}
	app := ""
	var used domain.Credits
	var count int64
	switch e := ev.(type) {
	case domain.CreditSignupBonusGranted:
		tx.Type, tx.Amount = "signup_bonus", e.Amount
	case domain.CreditDailyGranted:
		tx.Type, tx.Amount = "daily_grant", e.Amount
	case domain.CreditSpent:
		tx.ID, tx.Type, tx.Amount, tx.AppID, app = e.TransactionID, "spend", e.Amount, strp(e.AppID), e.AppID
		if e.Description != "" {
			tx.Description = strp(e.Description)
		}
		tx.Metadata = e.Metadata
		used, count = e.Amount, 1
	case domain.CreditRefunded:
		tx.ID, tx.Type, tx.Amount, tx.AppID, tx.Description, app = e.TransactionID, "refund", e.Amount, strp(e.AppID), strp(e.Reason), e.AppID
		used = -e.Amount
	case domain.CreditGranted:
		tx.ID, tx.Type, tx.Amount, tx.Description = e.TransactionID, "grant", e.Amount, strp(e.Reason)
	case domain.CreditAdjusted:
		tx.ID, tx.Type, tx.Amount, tx.Description = e.TransactionID, "adjustment", e.Amount, strp(e.Reason)
	case domain.CreditHoldPlaced:
		tx.Type, tx.Amount, tx.AppID, tx.HoldID = "hold", e.Amount, strp(e.AppID), &e.HoldID
	case domain.CreditHoldCaptured:
		tx.ID, tx.Type, tx.Amount, tx.AppID, tx.HoldID, app = e.TransactionID, "hold_capture", e.Captured.Total(), strp(e.AppID), &e.HoldID, e.AppID
		used, count = e.Captured.Total(), 1
	case domain.CreditHoldReleased:
		tx.Type, tx.Amount, tx.AppID, tx.HoldID = "hold_release", e.Returned.Total(), strp(e.AppID), &e.HoldID
	case domain.CreditHoldExpired:
		tx.Type, tx.Amount, tx.AppID, tx.HoldID = "hold_expiry", e.Returned.Total(), strp(e.AppID), &e.HoldID
	case domain.CreditWrittenOff:
		tx.Type, tx.Amount = "writeoff", e.Amount
	default:
		c.t.Fatalf("unexpected event %T", ev)
	}
	c.txs = append(c.txs, tx)
	if app != "" {
		k := [2]string{domain.Day(rec.OccurredAt), app}
		u := c.usage[k]
		u.Day, u.AppID = k[0], k[1]
		u.Credits += used
		u.Count += count
		c.usage[k] = u
	}
}

// debit emits ev after the day's free credits (5) when the debit is the
// first of the UTC day, in one command, as the write side does.
func (c *creditAccount) debit(ev domain.CreditEvent) {
	c.t.Helper()
	if g, ok := c.acct.DailyGrant(c.clock.Now(), 5); ok {
		c.emit(g, ev)
		return
	}
	c.emit(ev)
}

// dailyDue is the daily grant a debit now would bring first, or 0.
func (c *creditAccount) dailyDue() domain.Credits {
	if _, ok := c.acct.DailyGrant(c.clock.Now(), 5); ok {
		return 5
	}
	return 0
}

func (c *creditAccount) bonus(n domain.Credits) { c.emit(domain.NewSignupBonus(c.user(), n)) }

func (c *creditAccount) spend(app string, n domain.Credits, desc string, meta map[string]any) domain.CreditSpent {
	c.t.Helper()
	a := c.acct
	a.Free += c.dailyDue()
	ev, err := a.Spend(uuid.New(), app, n, desc, meta)
	if err != nil {
		c.t.Fatal(err)
	}
	c.debit(ev)
	return ev
}

func (c *creditAccount) hold(app string, n domain.Credits) domain.Hold {
	c.t.Helper()
	a := c.acct
	a.Free += c.dailyDue()
	expires := c.clock.Now().Add(time.Hour)
	ev, err := a.PlaceHold(uuid.New(), app, n, expires)
	if err != nil {
		c.t.Fatal(err)
	}
	c.debit(ev)
	h := domain.Hold{ID: ev.HoldID, UserID: c.user(), AppID: app, Amount: n, Split: ev.Split, Status: domain.HoldActive,
		ExpiresAt: expires, CreatedAt: c.clock.Now()}
	c.holds[h.ID] = h
	return h
}

func (c *creditAccount) capture(h domain.Hold, n domain.Credits) domain.CreditHoldCaptured {
	c.t.Helper()
	ev, err := h.Capture(uuid.New(), n)
	if err != nil {
		c.t.Fatal(err)
	}
	c.emit(ev)
	return ev
}

func (c *creditAccount) release(h domain.Hold) { c.emit(h.Release()) }

func (c *creditAccount) expire(h domain.Hold) { c.emit(h.Expire()) }

func (c *creditAccount) grant(n domain.Credits, bucket, reason string) {
	c.t.Helper()
	ev, err := c.acct.Grant(uuid.New(), n, bucket, reason)
	if err != nil {
		c.t.Fatal(err)
	}
	c.emit(ev)
}

func (c *creditAccount) adjust(n domain.Credits, reason string) {
	c.t.Helper()
	a := c.acct
	if n < 0 {
		a.Free += c.dailyDue()
	}
	ev, err := a.Adjust(uuid.New(), n, reason)
	if err != nil {
		c.t.Fatal(err)
	}
	if n < 0 {
		c.debit(ev)
		return
	}
	c.emit(ev)
}

// refund gives back n of spend sp, paid first, as the admin refund does.
func (c *creditAccount) refund(sp domain.CreditSpent, n domain.Credits, reason string) {
	u := c.user()
	split := domain.Split{Paid: min(sp.Split.Paid, n)}
	split.Free = n - split.Paid
	var ps []domain.Posting
	if split.Free > 0 {
		ps = append(ps, domain.Posting{Account: domain.UserFreeAccount(u), Amount: split.Free})
	}
	if split.Paid > 0 {
		ps = append(ps, domain.Posting{Account: domain.UserPaidAccount(u), Amount: split.Paid})
	}
	ps = append(ps, domain.Posting{Account: domain.AppRevenueAccount(sp.AppID), Amount: -n})
	c.emit(domain.CreditRefunded{TransactionID: uuid.New(), UserID: u, RefundOf: sp.TransactionID, AppID: sp.AppID, Amount: n,
		Split: split, Reason: reason, Postings: ps})
}

func (c *creditAccount) writeOff() {
	c.t.Helper()
	ev, ok := c.acct.WriteOff()
	if !ok {
		c.t.Fatal("nothing to write off")
	}
	c.emit(ev)
}

// play runs a history over three UTC days from day (midnight UTC): every
// kind of credit event, spends of two apps, a daily grant on each later
// day, holds captured, released and expired, a refund on a later day than
// its spend, and paid credits spent after the free ones.
func (c *creditAccount) play(day time.Time) {
	c.t.Helper()
	c.clock.set(day.Add(10 * time.Hour))
	c.acct.CreatedAt = c.clock.Now()
	c.bonus(50)
	first := c.spend("chat", 10, "first call", map[string]any{"model": "m-1", "tokens": 3})
	h1 := c.hold("chat", 20)
	c.capture(h1, 15)
	c.spend("img", 5, "", nil)

	c.clock.set(day.Add(33 * time.Hour)) // next day, 09:00
	c.spend("chat", 7, "second day", nil)
	h2 := c.hold("img", 8)
	c.release(h2)
	h3 := c.hold("chat", 4)
	c.expire(h3)
	c.grant(100, "paid", "promo")
	c.adjust(-30, "correction")
	c.adjust(3, "goodwill")
	c.refund(first, 4, "failed call")

	c.clock.set(day.Add(71 * time.Hour)) // third day, 23:00
	c.spend("chat", 60, "big", map[string]any{"batch": true})
}

// checkBalance checks that the balances row of c's user is the fold of the
// events (c.acct), keeps the invariant and was updated at the last event.
func (c *creditAccount) checkBalance() {
	c.t.Helper()
	got, ok, err := projections.UserBalance(ctxT(c.t), c.e.pool, c.user())
	if err != nil {
		c.t.Fatal(err)
	}
	want := domain.Account{UserID: c.user(), Free: c.acct.Free, Paid: c.acct.Paid, Held: c.acct.Held,
		TotalEarned: c.acct.TotalEarned, TotalSpent: c.acct.TotalSpent}
	if !ok || got != want {
		c.t.Errorf("balance %+v (found %v), want the fold %+v", got, ok, want)
	}
	if got.Free+got.Paid+got.Held != got.TotalEarned-got.TotalSpent {
		c.t.Errorf("balance breaks the invariant: %+v", got)
	}
	var updated time.Time
	if err := c.e.pool.QueryRow(ctxT(c.t), `SELECT updated_at FROM balances WHERE user_id = $1`, c.user()).Scan(&updated); err != nil {
		c.t.Fatal(err)
	}
	if !updated.Equal(c.last.OccurredAt) {
		c.t.Errorf("updated_at %v, want the last event's %v", updated, c.last.OccurredAt)
	}
}

// wantTransactions returns the expected transactions newest first.
func (c *creditAccount) wantTransactions() []domain.Transaction {
	out := slices.Clone(c.txs)
	slices.Reverse(out)
	return out
}

func txString(tx domain.Transaction) string {
	meta, _ := json.Marshal(tx.Metadata)
	hold := "<nil>"
	if tx.HoldID != nil {
		hold = tx.HoldID.String()
	}
	return strings.Join([]string{tx.ID.String(), tx.Type, strconv.FormatInt(tx.Amount, 10), str(tx.AppID), str(tx.Description),
		string(meta), hold, tx.CreatedAt.UTC().Format(time.RFC3339Nano)}, " ")
}

func txStrings(txs []domain.Transaction) []string {
	out := make([]string, len(txs))
	for i, tx := range txs {
		out[i] = txString(tx)
	}
	return out
}

// checkTransactions checks c's user's whole history, newest first.
func (c *creditAccount) checkTransactions() {
	c.t.Helper()
	got, err := projections.UserTransactions(ctxT(c.t), c.e.pool, c.user(), 200, 0)
	if err != nil {
		c.t.Fatal(err)
	}
	if g, w := txStrings(got), txStrings(c.wantTransactions()); !slices.Equal(g, w) {
		c.t.Errorf("transactions:\n%s\nwant:\n%s", strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
}

// wantUsage returns the expected usage on the days [from, to], by day and
// app.
func (c *creditAccount) wantUsage(from, to string) []domain.UsageDay {
	out := []domain.UsageDay{}
	for _, u := range c.usage {
		if u.Day >= from && u.Day <= to {
			out = append(out, u)
		}
	}
	slices.SortFunc(out, func(a, b domain.UsageDay) int {
		return strings.Compare(a.Day+" "+a.AppID, b.Day+" "+b.AppID)
	})
	return out
}

// TestCreditProjectionsEventTypes: balances and transactions handle every
// credit event and the erasure; usage_stats the charges, refunds and the
// erasure.
func TestCreditProjectionsEventTypes(t *testing.T) {
	t.Parallel()
	credit := []string{"credit.adjusted", "credit.daily_granted", "credit.granted", "credit.hold_captured", "credit.hold_expired",
		"credit.hold_placed", "credit.hold_released", "credit.refunded", "credit.signup_bonus_granted", "credit.spent", "credit.written_off"}
	for _, p := range []projections.Projection{projections.Balances(), projections.Transactions()} {
		for _, typ := range append(slices.Clone(credit), "user.erased") {
			if !slices.Contains(p.EventTypes(), typ) {
				t.Errorf("%s does not handle %s: %v", p.Name(), typ, p.EventTypes())
			}
		}
	}
	if got, want := projections.UsageStats().EventTypes(), []string{"credit.hold_captured", "credit.refunded", "credit.spent", "user.erased"}; !slices.Equal(got, want) {
		t.Errorf("usage_stats handles %v, want %v", got, want)
	}
	all := projections.All()
	for _, name := range creditTables {
		if _, ok := projections.Find(all, name); !ok {
			t.Errorf("All() lacks %s", name)
		}
	}
}

// TestCreditReadModels: after a history of every kind of credit event over
// three days, the balance is the fold of the events and keeps the
// invariant, the transactions are one per event, newest first, with their
// types, amounts, apps, holds, descriptions and metadata, and pages
// correctly, and usage sums the charges (net of refunds, on the refund's
// day) per app and UTC day.
func TestCreditReadModels(t *testing.T) {
	t.Parallel()
	day := time.Date(2026, 4, 10, 0, 0, 0, 0, time.UTC)
	e, clock := newClockEnv(t, day)
	projs := creditProjections()
	r, _ := e.newRunner(t, "node-a", projs, nil)
	start(t, r)
	c := e.creditAccount(t, clock, uuid.New())
	c.play(day)
	e.caughtUp(t, projs, c.events)

	c.checkBalance()
	// 50 + 5 + 5 (daily) + 100 + 3 earned; 10 + 15 + 5 + 7 + 30 + 60 − 4 spent.
	if c.acct.TotalEarned != 163 || c.acct.TotalSpent != 123 || c.acct.Held != 0 || c.acct.Free != 0 || c.acct.Paid != 40 {
		t.Fatalf("the scenario went elsewhere than planned: %+v", c.acct)
	}
	c.checkTransactions()

	all, err := projections.UserTransactions(ctxT(t), e.pool, c.user(), 200, 0)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, tx := range all {
		types = append(types, tx.Type)
	}
	wantTypes := []string{"spend", "daily_grant", "refund", "adjustment", "adjustment", "grant", "hold_expiry", "hold",
		"hold_release", "hold", "spend", "daily_grant", "spend", "hold_capture", "hold", "spend", "signup_bonus"}
	if !slices.Equal(types, wantTypes) {
		t.Errorf("types newest first %v, want %v", types, wantTypes)
	}
	if all[3].Amount != 3 || all[4].Amount != -30 {
		t.Errorf("adjustments %d and %d, want 3 and -30", all[3].Amount, all[4].Amount)
	}
	for _, tx := range all {
		if strings.HasPrefix(tx.Type, "hold") && tx.HoldID == nil {
			t.Errorf("%s without hold id", tx.Type)
		}
	}
	// Ids: the transaction id where the event has one, and distinct for
	// every event of a hold.
	ids := map[uuid.UUID]bool{}
	for _, tx := range all {
		ids[tx.ID] = true
	}
	if len(ids) != len(all) {
		t.Errorf("%d distinct ids for %d transactions", len(ids), len(all))
	}

	page, err := projections.UserTransactions(ctxT(t), e.pool, c.user(), 4, 3)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := txStrings(page), txStrings(all[3:7]); !slices.Equal(g, w) {
		t.Errorf("limit 4 offset 3:\n%s\nwant:\n%s", strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
	if page, err := projections.UserTransactions(ctxT(t), e.pool, c.user(), 10, 100); err != nil || page == nil || len(page) != 0 {
		t.Errorf("past the end: %#v, %v", page, err)
	}
	for _, lo := range [][2]int{{0, 0}, {5, -1}} {
		if _, err := projections.UserTransactions(ctxT(t), e.pool, c.user(), lo[0], lo[1]); err == nil {
			t.Errorf("limit %d offset %d accepted", lo[0], lo[1])
		}
	}

	d1, d2, d3 := domain.Day(day), domain.Day(day.AddDate(0, 0, 1)), domain.Day(day.AddDate(0, 0, 2))
	usage, err := projections.UserUsage(ctxT(t), e.pool, c.user(), day, day.AddDate(0, 0, 2).Add(23*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := []domain.UsageDay{
		{Day: d1, AppID: "chat", Credits: 25, Count: 2},
		{Day: d1, AppID: "img", Credits: 5, Count: 1},
		{Day: d2, AppID: "chat", Credits: 3, Count: 1}, // 7 spent − 4 refunded of day 1's spend
		{Day: d3, AppID: "chat", Credits: 60, Count: 1},
	}
	if !slices.Equal(usage, want) || !slices.Equal(usage, c.wantUsage(d1, d3)) {
		t.Errorf("usage %+v, want %+v (tracked %+v)", usage, want, c.wantUsage(d1, d3))
	}
	// Bounds are UTC days, both included, whatever the time of day.
	usage, err = projections.UserUsage(ctxT(t), e.pool, c.user(), day.Add(47*time.Hour), day.Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(usage, c.wantUsage(d2, d3)) || len(usage) != 2 {
		t.Errorf("usage of days 2–3 %+v, want %+v", usage, c.wantUsage(d2, d3))
	}
	if usage, err := projections.UserUsage(ctxT(t), e.pool, c.user(), day.AddDate(0, 0, 3), day.AddDate(0, 0, 9)); err != nil || usage == nil || len(usage) != 0 {
		t.Errorf("usage of days without charges: %#v, %v", usage, err)
	}

	// A user without credit events: no balance, empty lists.
	other := uuid.New()
	if b, ok, err := projections.UserBalance(ctxT(t), e.pool, other); err != nil || ok || b != (domain.Account{UserID: other}) {
		t.Errorf("balance of a user without events: %+v, %v, %v", b, ok, err)
	}
	if txs, err := projections.UserTransactions(ctxT(t), e.pool, other, 50, 0); err != nil || txs == nil || len(txs) != 0 {
		t.Errorf("transactions of a user without events: %#v, %v", txs, err)
	}
	if u, err := projections.UserUsage(ctxT(t), e.pool, other, day, day.AddDate(0, 0, 3)); err != nil || u == nil || len(u) != 0 {
		t.Errorf("usage of a user without events: %#v, %v", u, err)
	}
}

// TestCreditReadModelsErasure: user.erased deletes every row of the erased
// user from the three read models and leaves the other user's.
func TestCreditReadModelsErasure(t *testing.T) {
	t.Parallel()
	day := time.Date(2026, 4, 10, 0, 0, 0, 0, time.UTC)
	e, clock := newClockEnv(t, day)
	projs := creditProjections()
	r, _ := e.newRunner(t, "node-a", projs, nil)
	start(t, r)
	gone, _ := e.register(t, "gone@example.org", "Gone")
	kept, _ := e.register(t, "kept@example.org", "Kept")
	g := e.creditAccount(t, clock, gone)
	g.play(day)
	k := e.creditAccount(t, clock, kept)
	k.play(day.AddDate(0, 0, 5))
	g.writeOff()
	e.caughtUp(t, projs, 2+g.events+k.events)
	g.checkBalance()
	if g.acct.Free+g.acct.Paid != 0 || g.txs[len(g.txs)-1].Type != "writeoff" {
		t.Fatalf("after the write-off: %+v", g.acct)
	}
	g.checkTransactions()
	for _, tb := range creditTables {
		if n := e.count(t, `SELECT count(*) FROM `+tb+` WHERE user_id = $1`, gone); n == 0 {
			t.Fatalf("%s: no rows of the user before the erasure", tb)
		}
	}

	e.erase(t, gone)
	e.caughtUp(t, projs, 3+g.events+k.events)
	for _, tb := range creditTables {
		if n := e.count(t, `SELECT count(*) FROM `+tb+` WHERE user_id = $1`, gone); n != 0 {
			t.Errorf("%s: the erased user still has %d rows", tb, n)
		}
		if n := e.count(t, `SELECT count(*) FROM `+tb+` WHERE user_id = $1`, kept); n == 0 {
			t.Errorf("%s: the other user's rows are gone", tb)
		}
	}
	if _, ok, err := projections.UserBalance(ctxT(t), e.pool, gone); err != nil || ok {
		t.Errorf("balance of the erased user: %v, %v", ok, err)
	}
	k.checkBalance()
	k.checkTransactions()
}

// TestCreditReadModelsRowLevelSecurity: as a user, through mana_app, even
// a query without a WHERE clause sees only that user's balance,
// transactions and usage; a forged user id in the query sees nothing; and
// mana_app cannot write the read models.
func TestCreditReadModelsRowLevelSecurity(t *testing.T) {
	t.Parallel()
	day := time.Date(2026, 4, 10, 0, 0, 0, 0, time.UTC)
	e, clock := newClockEnv(t, day)
	projs := creditProjections()
	r, _ := e.newRunner(t, "node-a", projs, nil)
	start(t, r)
	a := e.creditAccount(t, clock, uuid.New())
	a.play(day)
	b := e.creditAccount(t, clock, uuid.New())
	b.play(day)
	e.caughtUp(t, projs, a.events+b.events)
	checkOnlyOwnCreditRows(t, e, a, b)
}

// checkOnlyOwnCreditRows checks that user a sees nothing of user b.
func checkOnlyOwnCreditRows(t *testing.T, e *env, a, b *creditAccount) {
	t.Helper()
	a.checkBalance()
	a.checkTransactions()
	for _, tb := range creditTables {
		if n := e.count(t, `SELECT count(*) FROM `+tb+` WHERE user_id = $1`, b.user()); n == 0 {
			t.Fatalf("b has no rows in %s: the checks below would prove nothing", tb)
		}
	}
	asA := pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: a.user()}
	err := pg.InTx(ctxT(t), e.pool, asA, func(tx pgx.Tx) error {
		for _, tb := range creditTables {
			rows, err := tx.Query(ctxT(t), `SELECT DISTINCT user_id FROM `+tb)
			if err != nil {
				return err
			}
			users, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
			if err != nil {
				return err
			}
			if len(users) != 1 || users[0] != a.user() {
				t.Errorf("as a, %s holds the rows of %v", tb, users)
			}
			var n int
			if err := tx.QueryRow(ctxT(t), `SELECT count(*) FROM `+tb+` WHERE user_id = $1`, b.user()).Scan(&n); err != nil {
				return err
			}
			if n != 0 {
				t.Errorf("as a, %d of b's rows in %s", n, tb)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		`UPDATE balances SET free = free + 1000`,
		`DELETE FROM transactions`,
		`INSERT INTO usage_stats (user_id, app_id, day, credits, count) VALUES ('` + a.user().String() + `', 'x', '2026-01-01', 1, 1)`,
	} {
		err := pg.InTx(ctxT(t), e.pool, asA, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctxT(t), stmt)
			return err
		})
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("%s as mana_app: %v, want permission denied", stmt, err)
		}
	}
}

// creditRows returns every row of a credit read model as text, NULLs
// distinct from empty strings, in key order.
func (e *env) creditRows(t *testing.T, table string) []string {
	t.Helper()
	order := map[string]string{"balances": "user_id", "transactions": "id", "usage_stats": "user_id, app_id, day"}[table]
	rows, err := e.pool.Query(ctxT(t), `SELECT format('%L', t) FROM `+pgx.Identifier{table}.Sanitize()+` t ORDER BY `+order)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCreditReadModelsRebuild: rebuilding balances, transactions and
// usage_stats from the log gives the same rows as the live projections (an
// erased user's rows stay gone, though the rebuild decodes their spends
// after the key was shredded) and the same shape, grants, row-level
// security and policies as the migrations; the live runner then goes on
// from the rebuilt checkpoint.
func TestCreditReadModelsRebuild(t *testing.T) {
	t.Parallel()
	day := time.Date(2026, 4, 10, 0, 0, 0, 0, time.UTC)
	e, clock := newClockEnv(t, day)
	projs := creditProjections()
	before := map[string][]string{}
	for _, tb := range creditTables {
		before[tb] = e.catalog(t, tb)
	}
	a := e.creditAccount(t, clock, uuid.New())
	a.play(day)
	b := e.creditAccount(t, clock, uuid.New())
	b.play(day.AddDate(0, 0, 1))
	gone, _ := e.register(t, "gone@example.org", "Gone")
	g := e.creditAccount(t, clock, gone)
	g.play(day)
	g.writeOff()
	e.erase(t, gone)
	n := a.events + b.events + g.events + 2

	r, _ := e.newRunner(t, "node-a", projs, nil)
	start(t, r)
	feed := e.caughtUp(t, projs, n)
	live := map[string][]string{}
	for _, tb := range creditTables {
		live[tb] = e.creditRows(t, tb)
		if len(live[tb]) == 0 {
			t.Fatalf("%s is empty", tb)
		}
		if n := e.count(t, `SELECT count(*) FROM `+tb+` WHERE user_id = $1`, gone); n != 0 {
			t.Errorf("%s: the erased user has %d rows", tb, n)
		}
	}
	a.checkBalance()
	a.checkTransactions()
	b.checkBalance()

	for _, p := range projs {
		cur, err := projections.Rebuild(ctxT(t), e.store, p, "rebuilder")
		if err != nil {
			t.Fatal(err)
		}
		if cur != feed[len(feed)-1].Cursor {
			t.Errorf("%s rebuilt to %s, want %s", p.Name(), cur, feed[len(feed)-1].Cursor)
		}
	}
	for _, tb := range creditTables {
		if got := e.creditRows(t, tb); !slices.Equal(got, live[tb]) {
			t.Errorf("rebuilt %s:\n%s\nlive:\n%s", tb, strings.Join(got, "\n"), strings.Join(live[tb], "\n"))
		}
		if after := e.catalog(t, tb); !slices.Equal(before[tb], after) {
			t.Errorf("%s changed by the rebuild:\nbefore %q\n after %q", tb, before[tb], after)
		}
	}
	if n := e.count(t, `SELECT count(*) FROM pg_class WHERE relname LIKE '%\_rebuild'`); n != 0 {
		t.Errorf("%d shadow tables left", n)
	}
	checkOnlyOwnCreditRows(t, e, a, b)

	// The live runner takes its leases back and goes on from the rebuilt
	// checkpoint, folding onto the rebuilt balance.
	had := a.events
	a.spend("chat", 1, "after the rebuild", nil)
	e.caughtUp(t, projs, n+a.events-had)
	a.checkBalance()
	a.checkTransactions()
	if got, err := projections.UserUsage(ctxT(t), e.pool, a.user(), day, clock.Now()); err != nil || !slices.Equal(got, a.wantUsage(domain.Day(day), domain.Day(clock.Now()))) {
		t.Errorf("usage after the rebuild %+v, %v; want %+v", got, err, a.wantUsage(domain.Day(day), domain.Day(clock.Now())))
	}
}
