package identity_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pquerna/otp/totp"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/credits"
	"github.com/manacore/mana/internal/identity"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/projections"
)

// eraseEnv is an identity service with the credit ledger account deletion
// closes, on one database, under one settable clock.
type eraseEnv struct {
	f       *fixture
	clock   *fakeClock
	ids     *identity.Service
	credits *credits.Service
	store   *eventstore.Store
}

func newEraseEnv(t *testing.T) *eraseEnv {
	t.Helper()
	f := newFixture(t)
	clock := &fakeClock{now: time.Now().UTC().Truncate(time.Second)}
	ids, store := f.service(t, clock)
	cs, err := credits.New(credits.Config{Store: store, Freshness: projections.NewFreshness(f.pool, nil, time.Second),
		Clock: clock, DailyFree: 5})
	if err != nil {
		t.Fatal(err)
	}
	ids.SetCreditAccounts(cs)
	return &eraseEnv{f: f, clock: clock, ids: ids, credits: cs, store: store}
}

// member is a registered user with one logged-in session.
type member struct {
	id       uuid.UUID
	email    string
	password string
	p        domain.Principal
	pair     domain.TokenPair
}

func (e *eraseEnv) register(t *testing.T, prefix string) member {
	t.Helper()
	m := member{email: prefix + "." + uuid.NewString()[:8] + "@example.com", password: goodPassword}
	u, _, err := e.ids.Register(ctxT(t), domain.RegisterInput{Email: m.email, Password: m.password, Name: "Name of " + m.email}, domain.RequestMeta{})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	m.id = u.ID
	m.pair, m.p = e.login(t, m, "laptop")
	return m
}

func (e *eraseEnv) login(t *testing.T, m member, device string) (domain.TokenPair, domain.Principal) {
	t.Helper()
	pair, _, err := e.ids.Login(ctxT(t), domain.LoginInput{Email: m.email, Password: m.password, DeviceID: device, DeviceName: device + " of " + m.email},
		domain.RequestMeta{IP: "198.51.100.7", UserAgent: "agent of " + m.email})
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	p, _, err := e.ids.Authenticate(ctxT(t), pair.AccessToken)
	if err != nil {
		t.Fatalf("authenticate: %v", err)
	}
	return pair, p
}

// startPurchase records a pending purchase of m as Purchases.Start does
// after Stripe created its payment: purchase.created and the
// purchase_orders row.
func (e *eraseEnv) startPurchase(t *testing.T, m member) uuid.UUID {
	t.Helper()
	id := uuid.New()
	_, err := e.store.Execute(ctxT(t), eventstore.Command{Name: "test.purchase", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}},
		func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamPurchase, StreamID: id.String(), Users: []uuid.UUID{m.id},
				Events: []domain.Event{domain.PurchaseCreated{PurchaseID: id, UserID: m.id, PackageID: uuid.New(), Credits: 500,
					AmountCents: 500, Currency: "eur", Kind: "payment_intent", Provider: domain.PaymentProviderStripe, ProviderID: "pi_" + id.String()}}})
			if err != nil {
				return domain.Receipt{}, err
			}
			_, err = tx.Exec(ctx, `INSERT INTO purchase_orders (purchase_id, user_id, package_id, credits, amount_cents, currency, kind, provider_id, status, version, created_at)
VALUES ($1, $2, gen_random_uuid(), 500, 500, 'eur', 'payment_intent', $3, 'pending', 1, $4)`, id, m.id, "pi_"+id.String(), tx.Now())
			return domain.Receipt{Status: 201}, err
		})
	if err != nil {
		t.Fatalf("start purchase: %v", err)
	}
	return id
}

// count runs a count(*) query as the test's superuser.
func count(t *testing.T, pool *pgxpool.Pool, q string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(ctxT(t), q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// plaintextColumns lists every column of every table (text, json, bytea
// and the like) whose value, as text or as bytes, contains needle. It runs
// with row_security off, so a table whose policies would hide rows from
// this role fails loudly instead of passing unseen.
func plaintextColumns(t *testing.T, pool *pgxpool.Pool, needle string) []string {
	t.Helper()
	ctx := ctxT(t)
	rows, err := pool.Query(ctx, `SELECT c.table_schema, c.table_name, c.column_name, c.data_type
FROM information_schema.columns c
JOIN information_schema.tables tb USING (table_catalog, table_schema, table_name)
WHERE tb.table_type = 'BASE TABLE' AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
  AND c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea', 'ARRAY', 'USER-DEFINED')
ORDER BY 1, 2, 3`)
	if err != nil {
		t.Fatal(err)
	}
	type column struct{ schema, table, name, typ string }
	cols, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (column, error) {
		var c column
		return c, r.Scan(&c.schema, &c.table, &c.name, &c.typ)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(cols) < 20 {
		t.Fatalf("only %d columns to scan: the scan is broken", len(cols))
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET row_security = off`); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = conn.Exec(context.Background(), `RESET row_security`) }()
	var found []string
	for _, c := range cols {
		col := pgx.Identifier{c.name}.Sanitize()
		cond := `strpos(lower(` + col + `::text), lower($1)) > 0`
		if c.typ == "bytea" {
			cond = `position(convert_to($1, 'UTF8') IN ` + col + `) > 0`
		}
		var n int
		q := `SELECT count(*) FROM ` + pgx.Identifier{c.schema, c.table}.Sanitize() + ` WHERE ` + cond
		if err := conn.QueryRow(ctx, q, needle).Scan(&n); err != nil {
			t.Fatalf("scan %s.%s.%s: %v", c.schema, c.table, c.name, err)
		}
		if n > 0 {
			found = append(found, fmt.Sprintf("%s.%s (%d rows)", c.table, c.name, n))
		}
	}
	return found
}

// TestDeleteAccount: given a user with two sessions, a spend whose
// description names their email (kept under an idempotency key), a
// running hold, a hold past its time, paid credits and a pending purchase,
// when they delete the account with a wrong password, then nothing but a
// failed login is recorded; when with the right one, then every session
// is revoked and gone, the holds return, the purchase fails, the balance
// is written off, the personal data cannot be decrypted, no table holds
// the address, the ledger verifies, and the address registers again
// without a second bonus.
func TestDeleteAccount(t *testing.T) {
	t.Parallel()
	e := newEraseEnv(t)
	ctx := ctxT(t)
	m := e.register(t, "erase")
	other := e.register(t, "bystander")
	second, _ := e.login(t, m, "phone")

	user := domain.Caller{Kind: "user", UserID: m.id}
	if _, err := e.credits.Use(ctx, user, m.id, domain.UseInput{Amount: 30, AppID: "chat", Description: "lunch for " + m.email,
		Metadata: map[string]any{"contact": m.email}, IdempotencyKey: "spend-1"}); err != nil {
		t.Fatalf("use: %v", err)
	}
	admin := domain.Caller{Kind: "admin", UserID: other.id}
	if _, err := e.credits.Grant(ctx, admin, domain.AdminCreditInput{UserID: m.id, Amount: 40, Bucket: "paid", Reason: "goodwill"}); err != nil {
		t.Fatalf("grant: %v", err)
	}
	if _, err := e.credits.PlaceHold(ctx, user, m.id, domain.HoldInput{Amount: 20, AppID: "chat", TTLSeconds: 3600}); err != nil {
		t.Fatalf("hold: %v", err)
	}
	if _, err := e.credits.PlaceHold(ctx, user, m.id, domain.HoldInput{Amount: 10, AppID: "chat", TTLSeconds: 60}); err != nil {
		t.Fatalf("short hold: %v", err)
	}
	purchase := e.startPurchase(t, m)
	e.clock.Advance(2 * time.Minute) // the short hold is due, unrecorded
	before, err := e.credits.Balance(ctx, m.id, "")
	if err != nil {
		t.Fatal(err)
	}
	if before.Balance != 150-30+40-30 || before.HeldCredits != 30 {
		t.Fatalf("balance before: %+v", before)
	}
	// Before: the stored response of the idempotent spend repeats its
	// description, the address, in bytes (a positive control of the scan).
	if found := plaintextColumns(t, e.f.pool, m.email); !slices.Contains(found, "idempotency_keys.response (1 rows)") {
		t.Errorf("before the deletion the scan finds the address in %v, want idempotency_keys.response among them", found)
	}
	events := count(t, e.f.pool, `SELECT count(*) FROM events`)

	// A wrong password changes nothing but the failure count.
	_, err = e.ids.DeleteAccount(ctx, m.p, wrongPassword, "", domain.RequestMeta{IP: "198.51.100.7"})
	if code(err) != domain.CodeInvalidCredentials {
		t.Fatalf("wrong password: %v, want INVALID_CREDENTIALS", err)
	}
	if n := count(t, e.f.pool, `SELECT count(*) FROM events`); n != events+1 {
		t.Errorf("a wrong password appended %d events, want 1 (user.login_failed)", n-events)
	}
	if n := count(t, e.f.pool, `SELECT count(*) FROM events WHERE event_type = 'user.login_failed' AND stream_id = $1`, m.id.String()); n != 1 {
		t.Errorf("%d user.login_failed events, want 1", n)
	}
	for _, tok := range []string{m.pair.AccessToken, second.AccessToken} {
		if _, _, err := e.ids.Authenticate(ctx, tok); err != nil {
			t.Errorf("after a wrong password a token is refused: %v", err)
		}
	}
	if b, _ := e.credits.Balance(ctx, m.id, ""); b != before {
		t.Errorf("after a wrong password the balance is %+v, want %+v", b, before)
	}

	w, err := e.ids.DeleteAccount(ctx, m.p, goodPassword, "", domain.RequestMeta{RequestID: "req-delete"})
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	if w.Position == "" {
		t.Error("no position for the deletion")
	}
	// The lockout counters of the address go with it (a later login of
	// the address counts anew, as for any unknown address).
	if n := count(t, e.f.pool, `SELECT count(*) FROM login_attempts WHERE email_hmac = $1`, e.f.kr.EmailIndex(m.email)); n != 0 {
		t.Errorf("the address keeps %d lockout rows", n)
	}

	// Every token and refresh token of the account is refused.
	for _, tok := range []string{m.pair.AccessToken, second.AccessToken} {
		if _, _, err := e.ids.Authenticate(ctx, tok); code(err) != domain.CodeTokenInvalid {
			t.Errorf("old access token: %v, want TOKEN_INVALID", err)
		}
	}
	if _, _, err := e.ids.Refresh(ctx, second.RefreshToken, domain.RequestMeta{}); code(err) != domain.CodeTokenInvalid {
		t.Errorf("old refresh token: %v, want TOKEN_INVALID", err)
	}
	if _, _, err := e.ids.Login(ctx, domain.LoginInput{Email: m.email, Password: goodPassword}, domain.RequestMeta{}); code(err) != domain.CodeInvalidCredentials {
		t.Errorf("login after deletion: %v, want INVALID_CREDENTIALS", err)
	}
	if _, err := e.ids.DeleteAccount(ctx, m.p, goodPassword, "", domain.RequestMeta{}); code(err) != domain.CodeTokenInvalid {
		t.Errorf("second deletion: %v, want TOKEN_INVALID", err)
	}
	// The account is closed: commands on it find no user.
	if _, err := e.credits.Grant(ctx, admin, domain.AdminCreditInput{UserID: m.id, Amount: 5, Reason: "late"}); code(err) != domain.CodeNotFound {
		t.Errorf("grant after deletion: %v, want NOT_FOUND", err)
	}
	if _, err := e.credits.Use(ctx, user, m.id, domain.UseInput{Amount: 1, AppID: "chat"}); code(err) != domain.CodeNotFound {
		t.Errorf("spend after deletion: %v, want NOT_FOUND", err)
	}

	// What the erasure recorded, in its one transaction.
	recs := userEvents(t, e, m.id)
	var erasure uint64
	for _, r := range recs {
		if r.EventType == "user.erased" {
			erasure = r.Cursor.TxID
		}
	}
	tail := map[string]int{}
	for _, r := range recs {
		if r.Cursor.TxID == erasure {
			tail[r.EventType]++
		}
	}
	for typ, want := range map[string]int{"purchase.failed": 1, "credit.hold_expired": 1, "credit.hold_released": 1,
		"credit.written_off": 1, "session.revoked": 2, "user.erased": 1} {
		if tail[typ] != want {
			t.Errorf("the erasure appended %d %s, want %d (all: %v)", tail[typ], typ, want, tail)
		}
	}
	decoded, err := e.store.Decode(ctx, recs)
	if err != nil {
		t.Fatal(err)
	}
	acct := domain.Account{UserID: m.id}
	for _, d := range decoded {
		switch ev := d.Event.(type) {
		case *domain.UserRegistered:
			if ev.Email != "" || ev.Name != "" {
				t.Errorf("user.registered still decodes to %q, %q", ev.Email, ev.Name)
			}
		case *domain.SessionStarted:
			if ev.DeviceName != "" || ev.IPAddress != "" || ev.UserAgent != "" {
				t.Errorf("session.started still decodes its personal fields: %+v", ev)
			}
		case *domain.CreditSpent:
			if ev.Description != "" || ev.Metadata != nil {
				t.Errorf("credit.spent still decodes its description or metadata: %+v", ev)
			}
		case *domain.SessionRevoked:
			if d.Cursor.TxID == erasure && ev.Reason != domain.RevokedAccountDeleted {
				t.Errorf("session.revoked reason %q, want %q", ev.Reason, domain.RevokedAccountDeleted)
			}
		case *domain.PurchaseFailed:
			if ev.PurchaseID != purchase || ev.Reason != domain.PurchaseFailedAccountDeleted {
				t.Errorf("purchase.failed %+v, want purchase %s, reason %q", ev, purchase, domain.PurchaseFailedAccountDeleted)
			}
		case *domain.CreditWrittenOff:
			if ev.Amount != before.Balance+before.HeldCredits {
				t.Errorf("written off %d, want the balance plus the held credits, %d", ev.Amount, before.Balance+before.HeldCredits)
			}
		}
		if ce, ok := d.Event.(domain.CreditEvent); ok {
			acct.Apply(ce)
		}
	}
	if acct.Free != 0 || acct.Paid != 0 || acct.Held != 0 {
		t.Errorf("the account folds to %+v, want every bucket empty", acct)
	}

	// The write side keeps no personal data and no credentials.
	for q, want := range map[string]int{
		`SELECT count(*) FROM data_keys WHERE subject_id = $1`:                                 0,
		`SELECT count(*) FROM email_claims WHERE user_id = $1`:                                 0,
		`SELECT count(*) FROM idempotency_keys WHERE user_id = $1`:                             0,
		`SELECT count(*) FROM password_credentials WHERE user_id = $1`:                         0,
		`SELECT count(*) FROM auth_sessions WHERE user_id = $1`:                                0,
		`SELECT count(*) FROM credit_accounts WHERE user_id = $1`:                              0,
		`SELECT count(*) FROM credit_holds WHERE user_id = $1 AND status = 'active'`:           0,
		`SELECT count(*) FROM purchase_orders WHERE user_id = $1 AND status = 'failed'`:        1,
		`SELECT count(*) FROM auth_users WHERE user_id = $1 AND erased AND email_hmac IS NULL`: 1,
	} {
		if n := count(t, e.f.pool, q, m.id); n != want {
			t.Errorf("%s: %d, want %d", q, n, want)
		}
	}
	hmac := e.f.kr.EmailIndex(m.email)
	if n := count(t, e.f.pool, `SELECT count(*) FROM signup_bonus_claims WHERE email_hmac = $1`, hmac); n != 1 {
		t.Errorf("the signup bonus claim is gone (%d rows)", n)
	}
	if found := plaintextColumns(t, e.f.pool, m.email); len(found) > 0 {
		t.Errorf("the address of the erased user is still in %v", found)
	}
	// The scan finds what is there: the erased user's id stays in the
	// ledger, pseudonymous.
	if found := plaintextColumns(t, e.f.pool, m.id.String()); len(found) == 0 {
		t.Error("the scan does not even find the user's id in the event log: it is broken")
	}
	checkLedger(t, e)

	// The bystander is untouched.
	if _, _, err := e.ids.Authenticate(ctx, other.pair.AccessToken); err != nil {
		t.Errorf("the bystander's token: %v", err)
	}

	// The address registers again: a new user, no second bonus.
	again, _, err := e.ids.Register(ctx, domain.RegisterInput{Email: strings.ToUpper(m.email), Password: "another password"}, domain.RequestMeta{})
	if err != nil {
		t.Fatalf("register again: %v", err)
	}
	if again.ID == m.id {
		t.Fatal("the new registration got the erased user's id")
	}
	if n := count(t, e.f.pool, `SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'credit.signup_bonus_granted'`, again.ID.String()); n != 0 {
		t.Errorf("the new registration got %d signup bonuses", n)
	}
	if b, err := e.credits.Balance(ctx, again.ID, ""); err != nil || b.Balance != 0 || b.TotalEarned != 0 {
		t.Errorf("the new account's balance: %+v, %v; want 0", b, err)
	}
	if _, _, err := e.ids.Login(ctx, domain.LoginInput{Email: m.email, Password: "another password"}, domain.RequestMeta{}); err != nil {
		t.Errorf("login of the new account: %v", err)
	}
	if _, _, err := e.ids.Register(ctx, domain.RegisterInput{Email: m.email, Password: "a third password"}, domain.RequestMeta{}); code(err) != domain.CodeEmailAlreadyRegistered {
		t.Errorf("a third registration: %v, want EMAIL_ALREADY_REGISTERED", err)
	}
	checkLedger(t, e)
}

// userEvents returns every event that names user (its user, session,
// credit account and purchase streams), in feed order. It reads the table
// itself: the feed stops at the cluster's snapshot horizon, which the
// parallel tests' transactions hold back.
func userEvents(t *testing.T, e *eraseEnv, user uuid.UUID) []eventstore.Record {
	t.Helper()
	rows, err := e.f.pool.Query(ctxT(t), `SELECT tx_id, position, event_id, stream_type, stream_id, stream_version,
    event_type, schema_version, occurred_at, recorded_at, metadata, payload, prev_hash, hash
FROM events WHERE stream_id = $1 OR payload::text LIKE '%' || $1 || '%' ORDER BY tx_id, position`, user.String())
	if err != nil {
		t.Fatal(err)
	}
	recs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (eventstore.Record, error) {
		var rec eventstore.Record
		err := r.Scan(&rec.TxID, &rec.Position, &rec.EventID, &rec.StreamType, &rec.StreamID, &rec.StreamVersion,
			&rec.EventType, &rec.SchemaVersion, &rec.OccurredAt, &rec.RecordedAt, &rec.Metadata, &rec.Payload, &rec.PrevHash, &rec.Hash)
		return rec, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 {
		t.Fatal("no events of the user")
	}
	return recs
}

// checkLedger verifies the hash chains, the postings and the trial
// balance.
func checkLedger(t *testing.T, e *eraseEnv) {
	t.Helper()
	r, d, err := e.store.VerifyLedger(ctxT(t), eventstore.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d != nil {
		t.Fatalf("ledger verify: %v", d)
	}
	if r.TrialBalance != "0" {
		t.Errorf("trial balance %s", r.TrialBalance)
	}
}

// TestDeleteAccountLockout: wrong passwords lock the account like failed
// logins do; a locked account is not deleted even with the right password.
func TestDeleteAccountLockout(t *testing.T) {
	t.Parallel()
	e := newEraseEnv(t)
	ctx := ctxT(t)
	m := e.register(t, "locked")
	for i := range identity.LockoutThreshold {
		if _, err := e.ids.DeleteAccount(ctx, m.p, wrongPassword, "", domain.RequestMeta{}); code(err) != domain.CodeInvalidCredentials {
			t.Fatalf("wrong password %d: %v", i+1, err)
		}
	}
	_, err := e.ids.DeleteAccount(ctx, m.p, goodPassword, "", domain.RequestMeta{})
	if code(err) != domain.CodeAccountLocked || retryAfter(err) <= 0 {
		t.Fatalf("right password on a locked account: %v, want ACCOUNT_LOCKED with Retry-After", err)
	}
	if _, _, err := e.ids.Login(ctx, domain.LoginInput{Email: m.email, Password: goodPassword}, domain.RequestMeta{}); code(err) != domain.CodeAccountLocked {
		t.Errorf("login: %v, want ACCOUNT_LOCKED: deletion attempts count like logins", err)
	}
	if n := count(t, e.f.pool, `SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'user.locked'`, m.id.String()); n != 1 {
		t.Errorf("%d user.locked events, want 1", n)
	}
	if n := count(t, e.f.pool, `SELECT count(*) FROM auth_users WHERE user_id = $1 AND NOT erased`, m.id); n != 1 {
		t.Error("the locked account was erased")
	}
	e.clock.Advance(identity.LockoutDuration + time.Second)
	if _, err := e.ids.DeleteAccount(ctx, m.p, goodPassword, "", domain.RequestMeta{}); err != nil {
		t.Fatalf("after the lock: %v", err)
	}
	checkLedger(t, e)
}

// TestDeleteAccountTwoFactor: with 2FA on, the code is required and
// checked; a wrong one counts as a failed login and erases nothing.
func TestDeleteAccountTwoFactor(t *testing.T) {
	t.Parallel()
	e := newEraseEnv(t)
	ctx := ctxT(t)
	m := e.register(t, "twofactor")
	enrol, err := e.ids.EnrollTwoFactor(ctx, m.p, domain.RequestMeta{})
	if err != nil {
		t.Fatal(err)
	}
	now := e.clock.Now()
	first, err := totp.GenerateCode(enrol.Secret, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.ids.ConfirmTwoFactor(ctx, m.p, first, domain.RequestMeta{}); err != nil {
		t.Fatalf("confirm: %v", err)
	}

	if _, err := e.ids.DeleteAccount(ctx, m.p, goodPassword, "", domain.RequestMeta{}); code(err) != domain.CodeTwoFactorRequired {
		t.Errorf("without a code: %v, want TWO_FACTOR_REQUIRED", err)
	}
	failures := count(t, e.f.pool, `SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'user.login_failed'`, m.id.String())
	if _, err := e.ids.DeleteAccount(ctx, m.p, goodPassword, first, domain.RequestMeta{}); code(err) != domain.CodeTwoFactorFailed {
		t.Errorf("with a used code: %v, want TWO_FACTOR_FAILED", err)
	}
	if n := count(t, e.f.pool, `SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'user.login_failed'`, m.id.String()); n != failures+1 {
		t.Errorf("a wrong code added %d failed logins, want 1", n-failures)
	}
	if n := count(t, e.f.pool, `SELECT count(*) FROM auth_users WHERE user_id = $1 AND NOT erased`, m.id); n != 1 {
		t.Fatal("a wrong code erased the account")
	}

	e.clock.Advance(identity.TOTPPeriod * time.Second)
	next, err := totp.GenerateCode(enrol.Secret, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.ids.DeleteAccount(ctx, m.p, goodPassword, next, domain.RequestMeta{}); err != nil {
		t.Fatalf("with a current code: %v", err)
	}
	for _, table := range []string{"two_factor", "recovery_codes", "two_factor_challenges"} {
		if n := count(t, e.f.pool, `SELECT count(*) FROM `+table+` WHERE user_id = $1`, m.id); n != 0 {
			t.Errorf("%s keeps %d rows of the erased user", table, n)
		}
	}
	checkLedger(t, e)
}

// TestDeleteAccountRacesLogins: logins of the account running while it is
// deleted end either before the erasure (their sessions revoked with it)
// or after (refused): no session of an erased account survives.
func TestDeleteAccountRacesLogins(t *testing.T) {
	t.Parallel()
	e := newEraseEnv(t)
	ctx := ctxT(t)
	m := e.register(t, "race")
	// Four logins and the deletion: within the lockout's five password
	// verifications per window.
	const logins = 4
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		tokens []string
	)
	start := make(chan struct{})
	for i := range logins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			pair, _, err := e.ids.Login(ctx, domain.LoginInput{Email: m.email, Password: m.password, DeviceID: fmt.Sprint("d", i)}, domain.RequestMeta{})
			if err == nil {
				mu.Lock()
				tokens = append(tokens, pair.AccessToken)
				mu.Unlock()
			} else if code(err) != domain.CodeInvalidCredentials {
				t.Errorf("login: %v", err)
			}
		}()
	}
	close(start)
	if _, err := e.ids.DeleteAccount(ctx, m.p, goodPassword, "", domain.RequestMeta{}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	wg.Wait()
	for _, tok := range append(tokens, m.pair.AccessToken) {
		if _, _, err := e.ids.Authenticate(ctx, tok); code(err) != domain.CodeTokenInvalid {
			t.Errorf("a token of the erased account: %v, want TOKEN_INVALID", err)
		}
	}
	if n := count(t, e.f.pool, `SELECT count(*) FROM auth_sessions WHERE user_id = $1`, m.id); n != 0 {
		t.Errorf("%d sessions of the erased account survive", n)
	}
	checkLedger(t, e)
}

// TestDeleteAccountWithoutLedger: an identity service that was never given
// the credit ledger refuses to erase rather than leave credits open.
func TestDeleteAccountWithoutLedger(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ids, _ := f.service(t, &fakeClock{now: time.Now().UTC()})
	_, _, err := ids.Register(ctxT(t), domain.RegisterInput{Email: "nobody." + uuid.NewString()[:8] + "@example.com", Password: goodPassword}, domain.RequestMeta{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ids.DeleteAccount(ctxT(t), domain.Principal{UserID: uuid.New()}, goodPassword, "", domain.RequestMeta{}); err == nil || code(err) == "" {
		t.Errorf("delete without a ledger: %v, want an error", err)
	}
	if _, err := ids.DeleteAccount(ctxT(t), domain.Principal{UserID: uuid.New()}, "", "", domain.RequestMeta{}); code(err) != domain.CodeValidationFailed {
		t.Errorf("delete without a password: %v, want VALIDATION_FAILED", err)
	}
}
