package eventstore_test

import (
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/projections"
)

// The auditor's ledger checks (eventstore.VerifyLedger, `mana ledger
// verify`) and SQL views (sql/migrations/0010_auditor_views.sql,
// docs/audit.md).

// ledgerFixture appends credit events through the store, one command each,
// deciding them on the accounts it folds as it goes, and remembers every
// event with its cursor.
type ledgerFixture struct {
	e      *testEnv
	accts  map[uuid.UUID]*domain.Account
	events []fixtureEvent
}

type fixtureEvent struct {
	rec eventstore.Record
	ev  domain.CreditEvent
}

func newLedgerFixture(e *testEnv) *ledgerFixture {
	return &ledgerFixture{e: e, accts: map[uuid.UUID]*domain.Account{}}
}

func (f *ledgerFixture) acct(u uuid.UUID) *domain.Account {
	a, ok := f.accts[u]
	if !ok {
		a = &domain.Account{UserID: u}
		f.accts[u] = a
	}
	return a
}

// add appends ev to its account's stream and folds it.
func (f *ledgerFixture) add(t *testing.T, ev domain.CreditEvent) eventstore.Record {
	t.Helper()
	recs, err := f.e.appendOne(t, domain.StreamCreditAccount, ev.Account().String(), eventstore.AnyVersion, ev)
	if err != nil {
		t.Fatalf("append %s: %v", ev.EventType(), err)
	}
	f.acct(ev.Account()).Apply(ev)
	f.events = append(f.events, fixtureEvent{rec: recs[0], ev: ev})
	return recs[0]
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// standard appends a small but complete history for two users: A gets the
// signup bonus, a paid grant, a spend (with sealed personal fields), a hold
// and its partial capture; B the bonus and a negative adjustment.
func (f *ledgerFixture) standard(t *testing.T) (a, b uuid.UUID) {
	t.Helper()
	a, b = uuid.New(), uuid.New()
	f.add(t, domain.NewSignupBonus(a, 150))
	f.add(t, must[domain.CreditGranted](t)(f.acct(a).Grant(uuid.New(), 500, "paid", "welcome")))
	f.add(t, must[domain.CreditSpent](t)(f.acct(a).Spend(uuid.New(), "chat", 200, "a long chat", map[string]any{"model": "x"})))
	holdID := uuid.New()
	placed := must[domain.CreditHoldPlaced](t)(f.acct(a).PlaceHold(holdID, "img", 100, time.Now().Add(time.Hour)))
	f.add(t, placed)
	hold := domain.Hold{ID: holdID, UserID: a, AppID: "img", Amount: placed.Amount, Split: placed.Split, Status: domain.HoldActive}
	f.add(t, must[domain.CreditHoldCaptured](t)(hold.Capture(uuid.New(), 60)))
	f.add(t, domain.NewSignupBonus(b, 150))
	f.add(t, must[domain.CreditAdjusted](t)(f.acct(b).Adjust(uuid.New(), -30, "correction")))
	return a, b
}

// last returns the cursor of the fixture's last event of user (the zero
// cursor when none); first the first.
func (f *ledgerFixture) last(user uuid.UUID) eventstore.Cursor {
	var c eventstore.Cursor
	for _, fe := range f.events {
		if fe.ev.Account() == user {
			c = fe.rec.Cursor
		}
	}
	return c
}

func (f *ledgerFixture) first(user uuid.UUID) eventstore.Cursor {
	for _, fe := range f.events {
		if fe.ev.Account() == user {
			return fe.rec.Cursor
		}
	}
	return eventstore.Cursor{}
}

// rebuildBalances rebuilds the balances read model until its checkpoint
// reaches want: a transaction of a parallel test may hold the feed's
// horizon back for a moment.
func rebuildBalances(t *testing.T, e *testEnv, want eventstore.Cursor) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := projections.Rebuild(ctxT(t), e.store, projections.Balances(), "ledger-test")
		if err != nil {
			t.Fatalf("rebuild balances: %v", err)
		}
		if c == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rebuild balances reached %s, want %s", c, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// verify runs VerifyLedger and records the checks that passed.
func verify(t *testing.T, e *testEnv, page int) (eventstore.LedgerReport, *eventstore.Discrepancy, []string) {
	t.Helper()
	var passed []string
	r, d, err := e.store.VerifyLedger(ctxT(t), eventstore.VerifyOptions{PageSize: page, Passed: func(check string, _ eventstore.LedgerReport) {
		passed = append(passed, check)
	}})
	if err != nil {
		t.Fatalf("VerifyLedger: %v", err)
	}
	return r, d, passed
}

func TestVerifyLedgerPassesACleanLedger(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	f := newLedgerFixture(e)
	f.standard(t)
	rebuildBalances(t, e, f.events[len(f.events)-1].rec.Cursor)
	// Events after the checkpoint are not in the read model yet, and are
	// not expected there.
	late := f.add(t, must[domain.CreditGranted](t)(f.acct(uuid.New()).Grant(uuid.New(), 5, "free", "late")))
	checkpoint := f.events[len(f.events)-2].rec.Cursor
	if !checkpoint.Less(late.Cursor) {
		t.Fatalf("the late event %s is not after the checkpoint %s", late.Cursor, checkpoint)
	}

	var postings int64
	for _, fe := range f.events {
		postings += int64(len(fe.ev.Entries()))
	}
	all := int64(e.count(t, "SELECT count(*) FROM events"))
	for _, page := range []int{0, 1, 3} {
		r, d, passed := verify(t, e, page)
		if d != nil {
			t.Fatalf("page %d: clean ledger: %v", page, d)
		}
		want := eventstore.LedgerReport{Events: all, CreditEvents: int64(len(f.events)), Postings: postings,
			TrialBalance: "0", Accounts: 2, Checkpoint: checkpoint}
		if r != want {
			t.Errorf("page %d: report %+v, want %+v", page, r, want)
		}
		if !slices.Equal(passed, []string{eventstore.CheckChains, eventstore.CheckPostings, eventstore.CheckBalances, eventstore.CheckAccounts}) {
			t.Errorf("page %d: passed %v", page, passed)
		}
		for check, line := range map[string]string{
			eventstore.CheckChains:   "hash chains: ok (" + itoa(all) + " events)",
			eventstore.CheckPostings: "postings: ok (" + itoa(int64(len(f.events))) + " credit events, trial balance 0)",
			eventstore.CheckBalances: "balances: ok (2 accounts at checkpoint " + checkpoint.String() + ")",
			eventstore.CheckAccounts: "accounts: ok (0 write-side accounts)",
		} {
			if got := r.Line(check); got != line {
				t.Errorf("Line(%s) = %q, want %q", check, got, line)
			}
		}
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestVerifyLedgerFindsBadPostings appends, properly hashed through the
// store, credit events whose postings are wrong: the chains verify, the
// postings check names the event's cursor.
func TestVerifyLedgerFindsBadPostings(t *testing.T) {
	t.Parallel()
	a, b := uuid.New(), uuid.New()
	grant := func(ps ...domain.Posting) domain.CreditGranted {
		return domain.CreditGranted{TransactionID: uuid.New(), UserID: a, Amount: 5, Bucket: "free", Reason: "bad", Postings: ps}
	}
	for _, tc := range []struct {
		name   string
		stream string // the credit_account stream's id; a's when empty
		ev     domain.CreditEvent
		want   string
	}{
		{"sum is not zero", "", grant(domain.Posting{Account: domain.UserFreeAccount(a), Amount: 5}), "postings sum to 5, not 0"},
		{"unbalanced legs", "", grant(
			domain.Posting{Account: domain.UserFreeAccount(a), Amount: 5},
			domain.Posting{Account: domain.AccountGrants, Amount: -4}), "postings sum to 1, not 0"},
		{"no postings", "", grant(), "no postings"},
		{"another user's bucket", "", grant(
			domain.Posting{Account: domain.UserFreeAccount(b), Amount: 5},
			domain.Posting{Account: domain.AccountGrants, Amount: -5}), "is not one of user " + a.String() + "'s buckets"},
		{"unknown account", "", grant(
			domain.Posting{Account: domain.UserFreeAccount(a), Amount: 5},
			domain.Posting{Account: "bank:vault", Amount: -5}), `unknown account "bank:vault"`},
		{"bad app id", "", grant(
			domain.Posting{Account: domain.UserFreeAccount(a), Amount: -5},
			domain.Posting{Account: "app:Not Valid:revenue", Amount: 5}), `unknown account "app:Not Valid:revenue"`},
		{"overflow", "", grant(
			domain.Posting{Account: domain.UserFreeAccount(a), Amount: math.MaxInt64},
			domain.Posting{Account: domain.AccountGrants, Amount: math.MaxInt64},
			domain.Posting{Account: domain.AccountAdjustments, Amount: 2}), "postings overflow int64"},
		{"outside its account's stream", b.String(), domain.NewSignupBonus(a, 5), "recorded outside its account's stream credit_account/" + a.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			f := newLedgerFixture(e)
			f.add(t, domain.NewSignupBonus(a, 150))
			stream := tc.stream
			if stream == "" {
				stream = a.String()
			}
			recs, err := e.appendOne(t, domain.StreamCreditAccount, stream, eventstore.AnyVersion, tc.ev)
			if err != nil {
				t.Fatal(err)
			}
			bad := recs[0]
			r, d, passed := verify(t, e, 0)
			if d == nil {
				t.Fatalf("verify passed a ledger with %s", tc.name)
			}
			if d.Check != eventstore.CheckPostings || d.Cursor != bad.Cursor || d.Good != 1 || !strings.Contains(d.Reason, tc.want) {
				t.Errorf("discrepancy %+v, want postings at %s after 1 good, reason containing %q", d, bad.Cursor, tc.want)
			}
			if !strings.Contains(d.Reason, bad.EventID.String()) {
				t.Errorf("reason %q does not name event %s", d.Reason, bad.EventID)
			}
			if want := "postings: FAILED at cursor " + bad.Cursor.String() + " after 1 good credit events: "; !strings.HasPrefix(d.Error(), want) {
				t.Errorf("Error() = %q, want prefix %q", d.Error(), want)
			}
			if !slices.Equal(passed, []string{eventstore.CheckChains}) || r.Events != 2 {
				t.Errorf("passed %v with %d events, want the hash chains of 2 events", passed, r.Events)
			}
		})
	}
}

// TestVerifyLedgerFindsBalanceMismatches edits the balances read model
// behind the projection's back.
func TestVerifyLedgerFindsBalanceMismatches(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// tamper changes the database after the rebuild and returns the
		// cursor and the reason verify must report.
		tamper func(t *testing.T, e *testEnv, f *ledgerFixture, a, b uuid.UUID, cp eventstore.Cursor) (eventstore.Cursor, string)
	}{
		{"changed bucket", func(t *testing.T, e *testEnv, f *ledgerFixture, a, _ uuid.UUID, _ eventstore.Cursor) (eventstore.Cursor, string) {
			exec(t, e, "UPDATE balances SET paid = paid + 7 WHERE user_id = $1", a)
			want := int64(f.accts[a].Paid)
			return f.last(a), "user " + a.String() + ": paid is " + itoa(want+7) + " in the read model, " + itoa(want) + " by the fold of its 5 credit events"
		}},
		{"changed total", func(t *testing.T, e *testEnv, f *ledgerFixture, _, b uuid.UUID, _ eventstore.Cursor) (eventstore.Cursor, string) {
			exec(t, e, "UPDATE balances SET total_spent = 0 WHERE user_id = $1", b)
			return f.last(b), "total_spent is 0 in the read model, 30 by the fold"
		}},
		{"missing row", func(t *testing.T, e *testEnv, f *ledgerFixture, _, b uuid.UUID, cp eventstore.Cursor) (eventstore.Cursor, string) {
			exec(t, e, "DELETE FROM balances WHERE user_id = $1", b)
			return f.first(b), "user " + b.String() + " has credit events up to checkpoint " + cp.String() + " but no balances row"
		}},
		{"row without events", func(t *testing.T, e *testEnv, _ *ledgerFixture, _, _ uuid.UUID, cp eventstore.Cursor) (eventstore.Cursor, string) {
			ghost := uuid.New()
			exec(t, e, "INSERT INTO balances (user_id, free, paid, held, total_earned, total_spent, updated_at) VALUES ($1, 1, 0, 0, 1, 0, now())", ghost)
			return cp, "user " + ghost.String() + " has a balances row but no credit events up to checkpoint"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			f := newLedgerFixture(e)
			a, b := f.standard(t)
			cp := f.events[len(f.events)-1].rec.Cursor
			rebuildBalances(t, e, cp)
			if _, d, _ := verify(t, e, 0); d != nil {
				t.Fatalf("before tampering: %v", d)
			}
			at, reason := tc.tamper(t, e, f, a, b, cp)
			for _, page := range []int{0, 1} {
				r, d, passed := verify(t, e, page)
				if d == nil {
					t.Fatalf("page %d: verify passed a tampered read model", page)
				}
				if d.Check != eventstore.CheckBalances || d.Cursor != at || !strings.Contains(d.Reason, reason) {
					t.Errorf("page %d: discrepancy %+v, want balances at %s with reason containing %q", page, d, at, reason)
				}
				if !slices.Equal(passed, []string{eventstore.CheckChains, eventstore.CheckPostings}) || r.Checkpoint != cp {
					t.Errorf("page %d: passed %v at checkpoint %s", page, passed, r.Checkpoint)
				}
			}
		})
	}
}

// TestVerifyLedgerErasedAccounts: the projection deletes an erased user's
// row, which verify expects; a row that comes back is a discrepancy.
func TestVerifyLedgerErasedAccounts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	f := newLedgerFixture(e)
	_, b := f.standard(t)
	f.add(t, must[domain.CreditWrittenOff](t)(func() (domain.CreditWrittenOff, error) {
		w, _ := f.acct(b).WriteOff()
		return w, nil
	}()))
	recs, err := e.appendOne(t, domain.StreamUser, b.String(), eventstore.AnyVersion, domain.UserErased{UserID: b, ErasedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	erased := recs[0].Cursor
	rebuildBalances(t, e, erased)
	if n := e.count(t, "SELECT count(*) FROM balances WHERE user_id = $1", b); n != 0 {
		t.Fatalf("the erased user still has %d balances rows", n)
	}
	r, d, _ := verify(t, e, 0)
	if d != nil || r.Accounts != 1 {
		t.Fatalf("verify after an erasure: %v, %d accounts", d, r.Accounts)
	}
	exec(t, e, "INSERT INTO balances (user_id, free, paid, held, total_earned, total_spent, updated_at) VALUES ($1, 0, 0, 0, 150, 150, now())", b)
	_, d, _ = verify(t, e, 0)
	if d == nil || d.Check != eventstore.CheckBalances || d.Cursor != erased || !strings.Contains(d.Reason, "was erased") {
		t.Fatalf("a row back for an erased user: %v, want balances at %s (was erased)", d, erased)
	}
}

func exec(t *testing.T, e *testEnv, sql string, args ...any) {
	t.Helper()
	if _, err := e.pool.Exec(ctxT(t), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// asRole runs fn in a transaction as role (auditor scope).
func asRole(t *testing.T, e *testEnv, role pg.Role, fn func(pgx.Tx) error) error {
	t.Helper()
	return pg.InTx(ctxT(t), e.pool, pg.Actor{Role: role, Scope: pg.ScopeAuditor}, fn)
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// TestAuditorViews reads ledger_entries, trial_balance and
// account_balances_at as mana_auditor and compares them with the events
// the fixture appended and with domain.Account.Apply.
func TestAuditorViews(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	f := newLedgerFixture(e)
	a, b := f.standard(t)

	type entry struct {
		cursor, eventType, streamID, account string
		eventID                              uuid.UUID
		leg, amount                          int64
	}
	var want []entry
	sums := map[string]int64{}
	for _, fe := range f.events {
		for i, p := range fe.ev.Entries() {
			want = append(want, entry{fe.rec.Cursor.String(), fe.ev.EventType(), fe.rec.StreamID, p.Account, fe.rec.EventID, int64(i + 1), p.Amount})
			sums[p.Account] += p.Amount
		}
	}
	// A non-credit event contributes nothing.
	if _, err := e.appendOne(t, "package", uuid.NewString(), 0, pkg("Plus")); err != nil {
		t.Fatal(err)
	}

	var got []entry
	err := asRole(t, e, pg.RoleAuditor, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctxT(t), `SELECT cursor, event_type, stream_id, account, event_id, leg, amount
FROM ledger_entries ORDER BY tx_id, position, leg`)
		if err != nil {
			return err
		}
		got, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (entry, error) {
			var x entry
			return x, r.Scan(&x.cursor, &x.eventType, &x.streamID, &x.account, &x.eventID, &x.leg, &x.amount)
		})
		return err
	})
	if err != nil {
		t.Fatalf("ledger_entries as mana_auditor: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("ledger_entries =\n%v\nwant\n%v", got, want)
	}

	trial := map[string]string{}
	total := "missing"
	err = asRole(t, e, pg.RoleAuditor, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctxT(t), `SELECT account, balance::text FROM trial_balance`)
		if err != nil {
			return err
		}
		var (
			acct *string
			bal  string
		)
		_, err = pgx.ForEachRow(rows, []any{&acct, &bal}, func() error {
			if acct == nil {
				total = bal
			} else {
				trial[*acct] = bal
			}
			return nil
		})
		return err
	})
	if err != nil {
		t.Fatalf("trial_balance as mana_auditor: %v", err)
	}
	if total != "0" {
		t.Errorf("trial balance total = %s, want 0", total)
	}
	if len(trial) != len(sums) {
		t.Errorf("trial_balance has %d accounts, want %d: %v", len(trial), len(sums), trial)
	}
	for acct, s := range sums {
		if trial[acct] != itoa(s) {
			t.Errorf("trial_balance[%s] = %q, want %d", acct, trial[acct], s)
		}
	}

	// account_balances_at at the cursor of A's spend (the third event).
	mid := f.events[2].rec.Cursor
	atMid := map[string]int64{}
	fold := domain.Account{UserID: a}
	for _, fe := range f.events[:3] {
		for _, p := range fe.ev.Entries() {
			atMid[p.Account] += p.Amount
		}
		fold.Apply(fe.ev)
	}
	var balances map[string]int64
	deadline := time.Now().Add(time.Minute)
	for {
		balances = map[string]int64{}
		err = asRole(t, e, pg.RoleAuditor, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctxT(t), `SELECT account, balance::bigint FROM account_balances_at($1)`, mid.String())
			if err != nil {
				return err
			}
			var (
				acct string
				bal  int64
			)
			_, err = pgx.ForEachRow(rows, []any{&acct, &bal}, func() error { balances[acct] = bal; return nil })
			return err
		})
		// 55000: a parallel test's transaction still holds the horizon
		// below the cursor.
		if sqlState(err) != "55000" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("account_balances_at as mana_auditor: %v", err)
	}
	if len(balances) != len(atMid) {
		t.Errorf("account_balances_at(%s) = %v, want %v", mid, balances, atMid)
	}
	for acct, s := range atMid {
		if balances[acct] != s {
			t.Errorf("account_balances_at(%s)[%s] = %d, want %d", mid, acct, balances[acct], s)
		}
	}
	for acct, v := range map[string]int64{domain.UserFreeAccount(a): fold.Free, domain.UserPaidAccount(a): fold.Paid} {
		if balances[acct] != v {
			t.Errorf("account_balances_at(%s)[%s] = %d, the fold %d", mid, acct, balances[acct], v)
		}
	}
	if _, ok := balances[domain.UserFreeAccount(b)]; ok {
		t.Errorf("account_balances_at(%s) holds B's bucket from a later event", mid)
	}

	// The start of the feed, malformed and not yet final cursors.
	for _, tc := range []struct{ cursor, state string }{
		{"0", ""}, {"", ""}, {"12-x", "22P02"}, {"-5", "22P02"}, {"18446744073709551615-1", "55000"},
	} {
		var n int
		err := asRole(t, e, pg.RoleAuditor, func(tx pgx.Tx) error {
			return tx.QueryRow(ctxT(t), `SELECT count(*) FROM account_balances_at($1)`, tc.cursor).Scan(&n)
		})
		if sqlState(err) != tc.state || tc.state == "" && (err != nil || n != 0) {
			t.Errorf("account_balances_at(%q): %d rows, err %v; want SQLSTATE %q", tc.cursor, n, err, tc.state)
		}
	}

	// Only the auditor holds them.
	for _, q := range []string{
		"SELECT count(*) FROM ledger_entries",
		"SELECT count(*) FROM trial_balance",
		"SELECT count(*) FROM account_balances_at('0')",
	} {
		for _, role := range []pg.Role{pg.RoleApp, pg.RoleProjector} {
			err := asRole(t, e, role, func(tx pgx.Tx) error {
				var n int
				return tx.QueryRow(ctxT(t), q).Scan(&n)
			})
			if sqlState(err) != "42501" {
				t.Errorf("%s as %s: err %v, want 42501", q, role, err)
			}
		}
	}
}

// TestVerifyLedgerChecksWriteSideAccounts: the credit_accounts rows the
// commands decide on must equal the fold of all their account's events;
// each column changed behind the events' back is caught.
func TestVerifyLedgerChecksWriteSideAccounts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, change, reason string
	}{
		{"bucket moved", "paid = paid + 7, total_earned = total_earned + 7", "paid is"},
		{"version", "version = version - 1", "version is"},
		{"head hash", "last_hash = decode(repeat('ab', 32), 'hex')", "last_hash is not the hash"},
		{"daily grant day", "last_daily_grant = '1999-01-01'", "last_daily_grant is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			f := newLedgerFixture(e)
			a, b := f.standard(t)
			rebuildBalances(t, e, f.events[len(f.events)-1].rec.Cursor)
			// The rows the credit commands would have written.
			for _, u := range []uuid.UUID{a, b} {
				acct := f.accts[u]
				exec(t, e, `INSERT INTO credit_accounts (user_id, version, free, paid, held, total_earned, total_spent, created_at, last_daily_grant, last_hash)
SELECT $1::uuid, stream_version, $2, $3, $4, $5, $6, now(), $7, hash FROM events
WHERE stream_type = 'credit_account' AND stream_id = $1::uuid::text ORDER BY stream_version DESC LIMIT 1`,
					u, acct.Free, acct.Paid, acct.Held, acct.TotalEarned, acct.TotalSpent, acct.LastDailyGrant)
			}
			r, d, _ := verify(t, e, 1)
			if d != nil || r.WriteSide != 2 {
				t.Fatalf("before tampering: %v, %d write-side accounts checked, want 2", d, r.WriteSide)
			}
			exec(t, e, "UPDATE credit_accounts SET "+tc.change+" WHERE user_id = $1", b)
			for _, page := range []int{0, 1} {
				_, d, passed := verify(t, e, page)
				if d == nil {
					t.Fatalf("page %d: verify passed a changed credit_accounts row", page)
				}
				if d.Check != eventstore.CheckAccounts || d.Cursor != f.last(b) || !strings.Contains(d.Reason, b.String()) || !strings.Contains(d.Reason, tc.reason) {
					t.Errorf("page %d: discrepancy %+v, want accounts at %s naming %s and %q", page, d, f.last(b), b, tc.reason)
				}
				if !slices.Equal(passed, []string{eventstore.CheckChains, eventstore.CheckPostings, eventstore.CheckBalances}) {
					t.Errorf("page %d: passed %v", page, passed)
				}
			}
		})
	}
}
