package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
)

// TestLedgerVerifyAllChecks drives `mana ledger verify` over a ledger with
// credit events and a rebuilt balances read model: all three checks pass
// (also for a login role that is only a member of mana_auditor); a changed
// balances row fails the balances check at the account's last cursor; a
// credit event whose postings do not sum to zero, appended properly hashed,
// fails the postings check at its cursor.
func TestLedgerVerifyAllChecks(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)
	vars := map[string]string{"DATABASE_URL": dsn, "DATA_DIR": t.TempDir()}
	if res := runCmd(t, vars, "migrate"); res.code != 0 {
		t.Fatalf("migrate exited %d; stderr %q", res.code, res.stderr)
	}
	ctx, cancel := context.WithTimeout(t.Context(), commandTimeout)
	defer cancel()
	pool, err := pg.Open(ctx, dsn, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// No personal data in these events: the store needs no keyring.
	store, err := eventstore.New(pool, eventstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	appendCredit := func(ev domain.CreditEvent) eventstore.Cursor {
		t.Helper()
		var recs []eventstore.Record
		_, err := store.Execute(ctx, eventstore.Command{Name: "test.credit", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem},
			Metadata: domain.Metadata{Actor: domain.SystemActor, RequestID: "req-test"}},
			func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
				var err error
				recs, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamCreditAccount, StreamID: ev.Account().String(),
					ExpectedVersion: eventstore.AnyVersion, Events: []domain.Event{ev}})
				return domain.Receipt{Status: http.StatusCreated}, err
			})
		if err != nil {
			t.Fatalf("append %s: %v", ev.EventType(), err)
		}
		return recs[0].Cursor
	}

	a, b := uuid.New(), uuid.New()
	accA, accB := domain.Account{UserID: a}, domain.Account{UserID: b}
	var lastA, last eventstore.Cursor
	credit := 0
	add := func(acct *domain.Account, ev domain.CreditEvent, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		last = appendCredit(ev)
		acct.Apply(ev)
		if acct == &accA {
			lastA = last
		}
		credit++
	}
	add(&accA, domain.NewSignupBonus(a, 150), nil)
	g, err := accA.Grant(uuid.New(), 300, "paid", "welcome")
	add(&accA, g, err)
	holdID := uuid.New()
	h, err := accA.PlaceHold(holdID, "img", 200, time.Now().Add(time.Hour))
	add(&accA, h, err)
	c, err := domain.Hold{ID: holdID, UserID: a, AppID: "img", Amount: h.Amount, Split: h.Split, Status: domain.HoldActive}.Capture(uuid.New(), 120)
	add(&accA, c, err)
	add(&accB, domain.NewSignupBonus(b, 150), nil)
	adj, err := accB.Adjust(uuid.New(), -20, "correction")
	add(&accB, adj, err)

	// Bring the balances read model to the last event; a transaction of a
	// parallel test may hold the feed's horizon back for a moment.
	deadline := time.Now().Add(time.Minute)
	for {
		res := runCmd(t, vars, "projections", "rebuild", "balances")
		if res.code != 0 {
			t.Fatalf("projections rebuild balances exited %d; stderr %q", res.code, res.stderr)
		}
		if res.stdout == "rebuilt balances up to "+last.String()+"\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("projections rebuild balances: %q, want it up to %s", res.stdout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}

	var events int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM events").Scan(&events); err != nil {
		t.Fatal(err)
	}
	chainsOK := fmt.Sprintf("hash chains: ok (%d events)\n", events)
	postingsOK := fmt.Sprintf("postings: ok (%d credit events, trial balance 0)\n", credit)
	clean := chainsOK + postingsOK + "balances: ok (2 accounts at checkpoint " + last.String() + ")\n" +
		"accounts: ok (0 write-side accounts)\n"

	res := runCmd(t, vars, "ledger", "verify")
	if res.code != 0 || res.stdout != clean || res.stderr != "" {
		t.Fatalf("ledger verify on a clean ledger = %d, stdout %q, stderr %q; want 0 and %q", res.code, res.stdout, res.stderr, clean)
	}

	// An auditor's own login role, member of mana_auditor and nothing
	// else, runs the same verification.
	auditor := auditorLogin(t, dsn)
	res = runCmd(t, map[string]string{"DATABASE_URL": auditor, "DATA_DIR": t.TempDir()}, "ledger", "verify")
	if res.code != 0 || res.stdout != clean || res.stderr != "" {
		t.Fatalf("ledger verify as a member of mana_auditor = %d, stdout %q, stderr %q; want 0 and %q", res.code, res.stdout, res.stderr, clean)
	}

	// The balances read model disagrees with the events.
	conn := connect(t, dsn)
	if _, err := conn.Exec(ctx, "UPDATE balances SET held = held + 3 WHERE user_id = $1", a); err != nil {
		t.Fatal(err)
	}
	res = runCmd(t, vars, "ledger", "verify")
	wantHeld := fmt.Sprintf("held is %d in the read model, %d by the fold", accA.Held+3, accA.Held)
	expectVerifyFailure(t, res, chainsOK+postingsOK, "mana ledger: balances: FAILED at cursor "+lastA.String()+" after ", wantHeld)
	if _, err := conn.Exec(ctx, "UPDATE balances SET held = held - 3 WHERE user_id = $1", a); err != nil {
		t.Fatal(err)
	}
	if res := runCmd(t, vars, "ledger", "verify"); res.code != 0 || res.stdout != clean {
		t.Fatalf("ledger verify after the repair = %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}

	// A credit event whose postings do not balance, properly hashed.
	bad := appendCredit(domain.CreditGranted{TransactionID: uuid.New(), UserID: b, Amount: 9, Bucket: "free", Reason: "forged",
		Postings: []domain.Posting{{Account: domain.UserFreeAccount(b), Amount: 9}}})
	res = runCmd(t, vars, "ledger", "verify")
	expectVerifyFailure(t, res, fmt.Sprintf("hash chains: ok (%d events)\n", events+1),
		fmt.Sprintf("mana ledger: postings: FAILED at cursor %s after %d good credit events: credit.granted ", bad, credit),
		"postings sum to 9, not 0")
}

// expectVerifyFailure checks a failed `ledger verify`: exit 1, the passed
// checks' lines on stdout, one line on stderr with prefix and containing
// reason.
func expectVerifyFailure(t *testing.T, res result, stdout, prefix, reason string) {
	t.Helper()
	t.Logf("ledger verify: %s", res.stderr)
	if res.code != 1 {
		t.Errorf("ledger verify exited %d, want 1", res.code)
	}
	if res.stdout != stdout {
		t.Errorf("ledger verify printed %q, want %q", res.stdout, stdout)
	}
	errLines := lines(res.stderr)
	if len(errLines) != 1 || !strings.HasSuffix(res.stderr, "\n") {
		t.Fatalf("stderr is %d lines, want one: %q", len(errLines), res.stderr)
	}
	if !strings.HasPrefix(errLines[0], prefix) || !strings.Contains(errLines[0], reason) {
		t.Errorf("stderr %q, want prefix %q and %q", errLines[0], prefix, reason)
	}
}

// auditorLogin creates a login role that is a member of mana_auditor only,
// dropped when the test ends, and returns dsn connecting as it.
func auditorLogin(t *testing.T, dsn string) string {
	t.Helper()
	b := make([]byte, 22)
	_, _ = rand.Read(b)
	role, password := "mana_t_auditor_"+hex.EncodeToString(b[:6]), hex.EncodeToString(b[6:])
	conn := connect(t, dsn)
	ident := pgx.Identifier{role}.Sanitize()
	if _, err := conn.Exec(t.Context(), "CREATE ROLE "+ident+" LOGIN PASSWORD '"+password+"' IN ROLE mana_auditor"); err != nil {
		t.Fatalf("create auditor role: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("drop %s: %v", role, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP ROLE IF EXISTS "+ident); err != nil {
			t.Errorf("drop %s: %v", role, err)
		}
	})
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("user", role)
		q.Set("password", password)
		u.User, u.RawQuery = nil, q.Encode()
		return u.String()
	}
	return dsn + " user=" + role + " password=" + password
}
