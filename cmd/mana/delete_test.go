package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/pg"
)

// projectionWait bounds how long the test waits for the read models to
// apply the erasure.
const projectionWait = 30 * time.Second

// perUserReadModels are the read-model tables that hold rows of one user,
// with the column naming the user.
var perUserReadModels = map[string]string{
	"users": "id", "sessions": "user_id", "security_events": "user_id", "balances": "user_id",
	"transactions": "user_id", "usage_stats": "user_id", "purchases": "user_id",
}

// TestDeleteAccountOverHTTP erases an account on a real `mana serve` (with
// the default rate limits and a stripe-mock): a user with two logged-in
// devices, a spend whose description and metadata name their address, a
// running hold and a pending purchase. A wrong password answers 401 and
// changes nothing but the failure count; the right one answers 204. Then
// every token of the account is refused, a late payment of the purchase
// goes to system:unclaimed, the read models drop every row of the user,
// `mana ledger verify` passes and the trial balance is zero, the user's
// events decode without personal data, no column of any table holds the
// address, and the address registers again with a zero balance.
func TestDeleteAccountOverHTTP(t *testing.T) {
	t.Parallel()
	secret := "whsec_" + randomHex(16)
	s := startServe(t, map[string]string{
		"STRIPE_SECRET_KEY":     "sk_test_" + randomHex(12),
		"STRIPE_WEBHOOK_SECRET": secret,
		"STRIPE_API_BASE":       stripeMock(t),
		"RATE_LIMITS":           "", // the defaults: the deletion draws on the login budget
	})
	dsn := s.vars["DATABASE_URL"]
	db := connect(t, dsn)
	u := newCreditUser(t, s, "leaver")
	s.remember(u.email, u.password)
	phone := s.login(t, u.email, u.password, "phone")
	stayer := newCreditUser(t, s, "stayer")

	spend := s.c.Do(http.MethodPost, "/api/v1/credits/use", map[string]any{"amount": 25, "appId": "chat",
		"description": "a gift for " + u.email, "metadata": map[string]any{"contact": u.email}}, u.auth(), idemKey("leaver-spend-1"))
	if spend.Status != http.StatusCreated {
		t.Fatalf("spend = %d %s", spend.Status, spend.Body)
	}
	hold := s.c.Do(http.MethodPost, "/api/v1/credits/holds", map[string]any{"amount": 40, "appId": "chat", "ttlSeconds": 3600}, u.auth())
	if hold.Status != http.StatusCreated {
		t.Fatalf("hold = %d %s", hold.Status, hold.Body)
	}
	basic := domain.DefaultPackages()[1]
	pending := startPurchase(t, s, u, "/api/v1/credits/purchase", basic.PackageID)
	pi := providerID(t, dsn, pending.PurchaseID)
	before := getBalance(t, s, u)
	wantBalance(t, "balance before", before, creditBalance{Balance: 85, FreeCreditsRemaining: 85, HeldCredits: 40,
		TotalEarned: 150, TotalSpent: 25, DailyFreeCredits: 5})
	// Every read model has rows of the user by now (each read waits for
	// the user's writes).
	if txs := transactions(t, s, u, ""); len(txs) != 3 {
		t.Fatalf("transactions before: %+v", txs)
	}
	if got := s.sessions(t, u.token); len(got) != 2 {
		t.Fatalf("sessions before: %d, want 2", len(got))
	}
	if evs := securityEvents(t, s, u); len(evs) == 0 {
		t.Fatal("no security events before")
	}
	if v := getPurchase(t, s, u, pending.PurchaseID); v.Status != "pending" {
		t.Fatalf("purchase before: %+v", v)
	}
	if r := s.c.Do(http.MethodGet, "/api/v1/credits/usage", nil, u.auth()); r.Status != http.StatusOK || !strings.Contains(string(r.Body), `"chat"`) {
		t.Fatalf("usage before = %d %s", r.Status, r.Body)
	}
	// As the other tests do, wait until the users read model has the user.
	waitFor(t, "the users read model to have the user", func() bool {
		return countRows(t, db, `SELECT count(*) FROM users WHERE id = $1`, u.id) == 1
	})

	// Requests that delete nothing.
	events := allEvents(t, dsn)
	del := func(body any, hs ...http.Header) *apitest.Response {
		return s.c.Do(http.MethodDelete, "/api/v1/auth/account", body, hs...)
	}
	wantAuthError(t, del(map[string]any{"password": u.password}), http.StatusUnauthorized, "UNAUTHORIZED")
	wantAuthError(t, del(map[string]any{}, u.auth()), http.StatusBadRequest, "VALIDATION_FAILED")
	wantAuthError(t, del(map[string]any{"password": u.password, "extra": 1}, u.auth()), http.StatusBadRequest, "VALIDATION_FAILED")
	if n := allEvents(t, dsn); n != events {
		t.Errorf("refused requests appended %d events", n-events)
	}
	wantAuthError(t, del(map[string]any{"password": "not the password"}, u.auth()), http.StatusUnauthorized, "INVALID_CREDENTIALS")
	if n := allEvents(t, dsn); n != events+1 {
		t.Errorf("a wrong password appended %d events, want 1 (user.login_failed)", n-events)
	}
	wantBalance(t, "balance after a wrong password", getBalance(t, s, u), before)
	if got := s.sessions(t, phone.AccessToken); len(got) != 2 {
		t.Errorf("after a wrong password %d sessions, want 2", len(got))
	}

	r := del(map[string]any{"password": u.password}, u.auth())
	if r.Status != http.StatusNoContent || len(r.Body) != 0 {
		t.Fatalf("DELETE /auth/account = %d %s", r.Status, r.Body)
	}
	position := wantPosition(t, r)

	// Every token of the account is refused.
	for name, tok := range map[string]string{"the deleting device": u.token, "the phone": phone.AccessToken} {
		if r := s.c.Do(http.MethodGet, "/api/v1/credits/balance", nil, authBearer(tok)); r.Status != http.StatusUnauthorized {
			t.Errorf("%s's access token after deletion = %d %s", name, r.Status, r.Body)
		}
	}
	if r := s.refresh(t, phone.RefreshToken); r.Status != http.StatusUnauthorized {
		t.Errorf("refresh after deletion = %d %s", r.Status, r.Body)
	}
	if r := s.c.Do(http.MethodPost, "/api/v1/auth/login", map[string]string{"email": u.email, "password": u.password}); r.Status != http.StatusUnauthorized {
		t.Errorf("login after deletion = %d %s", r.Status, r.Body)
	}
	if r := del(map[string]any{"password": u.password}, u.auth()); r.Status != http.StatusUnauthorized {
		t.Errorf("a second deletion = %d %s", r.Status, r.Body)
	}

	// A payment of the purchase the deletion failed still arrives: it
	// goes to system:unclaimed, and no read model gets the user back.
	paid := stripeEvent(t, "payment_intent.succeeded", paymentIntent(pi, 500, pending.PurchaseID, u.id))
	wantReceived(t, postWebhook(s, paid, signStripe(paid, secret, time.Time{})))
	if n := countRows(t, db, `SELECT count(*) FROM ledger_entries WHERE event_type = 'credit.purchased' AND stream_id = $1 AND account = $2`,
		u.id.String(), domain.AccountUnclaimed); n != 1 {
		t.Errorf("%d postings of the late payment to system:unclaimed, want 1", n)
	}
	for typ, want := range map[string]int{"user.erased": 1, "credit.written_off": 1, "credit.hold_released": 1, "purchase.failed": 1} {
		if n := countRows(t, db, `SELECT count(*) FROM events WHERE event_type = $1 AND (stream_id = $2 OR stream_id = $3)`,
			typ, u.id.String(), pending.PurchaseID.String()); n != want {
			t.Errorf("%d %s events, want %d", n, typ, want)
		}
	}
	if n := countRows(t, db, `SELECT count(*) FROM events WHERE event_type = 'session.revoked' AND payload->>'userId' = $1 AND payload->>'reason' = $2`,
		u.id.String(), domain.RevokedAccountDeleted); n != 2 {
		t.Errorf("%d sessions revoked by the deletion, want 2", n)
	}

	// The read models apply the erasure (and the late payment after it).
	waitApplied(t, db, position)
	var left []string
	waitFor(t, "the read models to drop the user's rows", func() bool {
		left = left[:0]
		for table, col := range perUserReadModels {
			if n := countRows(t, db, `SELECT count(*) FROM `+table+` WHERE `+col+` = $1`, u.id); n > 0 {
				left = append(left, fmt.Sprintf("%s: %d", table, n))
			}
		}
		return len(left) == 0
	})
	if len(left) > 0 {
		t.Errorf("rows of the erased user left in the read models: %v", left)
	}

	if res := runCmd(t, map[string]string{"DATABASE_URL": dsn}, "ledger", "verify"); res.code != 0 {
		t.Errorf("ledger verify: %d %s%s", res.code, res.stdout, res.stderr)
	}
	var total string
	if err := db.QueryRow(t.Context(), `SELECT balance::text FROM trial_balance WHERE account IS NULL`).Scan(&total); err != nil || total != "0" {
		t.Errorf("trial balance total = %q, %v; want 0", total, err)
	}

	// The events of the user decode without personal data.
	checkShredded(t, s, u.id)
	// No column of any table holds the address, as text or as bytes.
	if found := tablesContaining(t, dsn, u.email); len(found) > 0 {
		t.Errorf("the erased user's address is still in %v", found)
	}
	if found := tablesContaining(t, dsn, stayer.email); len(found) == 0 {
		t.Error("the scan does not find the other user's address in the users read model: it is broken")
	}

	// The address registers again, without a second signup bonus.
	again := s.register(t, strings.ToUpper(u.email), "a new password 2", "")
	if again.ID == u.id {
		t.Fatal("the new account got the erased user's id")
	}
	back := creditUser{id: again.ID, email: u.email, password: "a new password 2"}
	back.token = s.login(t, back.email, back.password, "").AccessToken
	wantBalance(t, "balance of the new account", getBalance(t, s, back), creditBalance{DailyFreeCredits: 5})
	if txs := transactions(t, s, back, ""); len(txs) != 0 {
		t.Errorf("the new account has transactions: %+v", txs)
	}
	// The other user is untouched.
	wantBalance(t, "the other user's balance", getBalance(t, s, stayer), fresh)

	// Nothing the test sent reached the log: no address, password or token.
	log := s.log.String()
	for _, secret := range []string{u.email, u.password, u.token, phone.RefreshToken} {
		if strings.Contains(log, secret) {
			t.Errorf("the log contains %.12s…", secret)
		}
	}
	if !strings.Contains(log, `"account erased"`) {
		t.Error("no log line for the erasure")
	}
}

// countRows runs a count(*) query on conn.
func countRows(t *testing.T, conn *pgx.Conn, q string, args ...any) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(t.Context(), q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// waitFor polls cond until it holds, for at most projectionWait.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !poll(projectionWait, cond) {
		t.Errorf("gave up waiting %v for %s", projectionWait, what)
	}
}

// poll calls cond every 50 ms until it holds or limit has passed, and
// reports whether it held.
func poll(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// waitApplied waits until every projection's checkpoint is at or past
// position (<tx_id>-<position>).
func waitApplied(t *testing.T, conn *pgx.Conn, position string) {
	t.Helper()
	c, err := eventstore.ParseCursor(position)
	if err != nil {
		t.Fatalf("position %q: %v", position, err)
	}
	waitFor(t, "every projection to apply "+position, func() bool {
		return countRows(t, conn, `SELECT count(*) FROM projection_checkpoints WHERE (tx_id, position) < ($1::xid8, $2::bigint)`,
			c.TxID, c.Position) == 0 && countRows(t, conn, `SELECT count(*) FROM projection_checkpoints`) >= len(perUserReadModels)
	})
}

// checkShredded decodes every event that names user with the server's own
// keys: no personal field of the user opens any more.
func checkShredded(t *testing.T, s *authServer, user uuid.UUID) {
	t.Helper()
	cfg := &Config{DataDir: s.vars["DATA_DIR"]}
	if err := loadDevSecrets(cfg); err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.New(cfg.DataKEK, cfg.EmailIndexKey)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), commandTimeout)
	defer cancel()
	pool, err := pg.Open(ctx, s.vars["DATABASE_URL"], 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store, err := eventstore.New(pool, eventstore.Options{Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT tx_id, position, event_id, stream_type, stream_id, stream_version,
    event_type, schema_version, occurred_at, recorded_at, metadata, payload, prev_hash, hash
FROM events WHERE stream_id = $1 OR payload->>'userId' = $1 ORDER BY tx_id, position`, user.String())
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
	decoded, err := store.Decode(ctx, recs)
	if err != nil {
		t.Fatalf("decode the erased user's events: %v", err)
	}
	seen := map[string]bool{}
	for _, d := range decoded {
		seen[d.EventType] = true
		switch ev := d.Event.(type) {
		case *domain.UserRegistered:
			if ev.Email != "" || ev.Name != "" {
				t.Errorf("user.registered decodes to email %q, name %q", ev.Email, ev.Name)
			}
		case *domain.SessionStarted:
			if ev.DeviceName != "" || ev.IPAddress != "" || ev.UserAgent != "" {
				t.Errorf("session.started decodes its personal fields: %+v", ev)
			}
		case *domain.UserLoginSucceeded:
			if ev.IPAddress != "" {
				t.Errorf("user.login_succeeded decodes its IP address")
			}
		case *domain.UserLoginFailed:
			if ev.IPAddress != "" {
				t.Errorf("user.login_failed decodes its IP address")
			}
		case *domain.CreditSpent:
			if ev.Description != "" || ev.Metadata != nil {
				t.Errorf("credit.spent decodes its description or metadata: %+v", ev)
			}
		}
	}
	for _, typ := range []string{"user.registered", "session.started", "credit.spent", "user.erased"} {
		if !seen[typ] {
			t.Errorf("no %s among the erased user's events", typ)
		}
	}
}

// tablesContaining lists the columns of every table in the database at
// dsn (text, varchar, json, jsonb, bytea, arrays and the like, cast to
// text or searched as bytes) that contain needle, case-insensitively. It
// runs with row_security off: a table whose policies would hide rows from
// the connecting role fails the test instead of passing unseen.
func tablesContaining(t *testing.T, dsn, needle string) []string {
	t.Helper()
	conn := connect(t, dsn)
	ctx := t.Context()
	if _, err := conn.Exec(ctx, `SET row_security = off`); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, `SELECT c.table_schema, c.table_name, c.column_name, c.data_type
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
	if len(cols) < 50 {
		t.Fatalf("only %d columns to scan: the scan is broken", len(cols))
	}
	var found []string
	for _, c := range cols {
		col := pgx.Identifier{c.name}.Sanitize()
		cond := `strpos(lower(` + col + `::text), lower($1)) > 0`
		if c.typ == "bytea" {
			cond = `position(convert_to(lower($1), 'UTF8') IN ` + col + `) > 0`
		}
		n := countRows(t, conn, `SELECT count(*) FROM `+pgx.Identifier{c.schema, c.table}.Sanitize()+` WHERE `+cond, needle)
		if n > 0 {
			found = append(found, fmt.Sprintf("%s.%s (%d rows)", c.table, c.name, n))
		}
	}
	return found
}
