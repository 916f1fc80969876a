package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/pgtest"
)

// The credit HTTP tests drive the credit endpoints of SPEC §6 on a real
// `mana serve`, every response checked against the OpenAPI document.

// positionPattern is the shape of X-Mana-Position (SPEC §3).
var positionPattern = regexp.MustCompile(`^[0-9]+-[0-9]+$`)

type creditBalance struct {
	Balance              int64 `json:"balance"`
	FreeCreditsRemaining int64 `json:"freeCreditsRemaining"`
	PaidBalance          int64 `json:"paidBalance"`
	HeldCredits          int64 `json:"heldCredits"`
	TotalEarned          int64 `json:"totalEarned"`
	TotalSpent           int64 `json:"totalSpent"`
	DailyFreeCredits     int64 `json:"dailyFreeCredits"`
}

type creditTx struct {
	ID          uuid.UUID      `json:"id"`
	Type        string         `json:"type"`
	Amount      int64          `json:"amount"`
	AppID       *string        `json:"appId"`
	Description *string        `json:"description"`
	Metadata    map[string]any `json:"metadata"`
	HoldID      *uuid.UUID     `json:"holdId"`
	CreatedAt   time.Time      `json:"createdAt"`
}

type creditWrite struct {
	Success     bool          `json:"success"`
	Transaction creditTx      `json:"transaction"`
	NewBalance  creditBalance `json:"newBalance"`
	Replayed    bool          `json:"replayed"`
}

type creditHold struct {
	ID        uuid.UUID `json:"id"`
	Amount    int64     `json:"amount"`
	AppID     string    `json:"appId"`
	Status    string    `json:"status"`
	ExpiresAt time.Time `json:"expiresAt"`
	Captured  int64     `json:"captured"`
}

type holdPlaced struct {
	ID         uuid.UUID     `json:"id"`
	Amount     int64         `json:"amount"`
	AppID      string        `json:"appId"`
	Status     string        `json:"status"`
	ExpiresAt  time.Time     `json:"expiresAt"`
	NewBalance creditBalance `json:"newBalance"`
	Replayed   bool          `json:"replayed"`
}

type holdResult struct {
	Hold        creditHold    `json:"hold"`
	Transaction *creditTx     `json:"transaction"`
	NewBalance  creditBalance `json:"newBalance"`
	Replayed    bool          `json:"replayed"`
}

type usageRow struct {
	Day     string `json:"day"`
	AppID   string `json:"appId"`
	Credits int64  `json:"credits"`
	Count   int64  `json:"count"`
}

// fresh is the balance of a user registered today with the default
// CREDITS_SIGNUP_BONUS and CREDITS_DAILY_FREE.
var fresh = creditBalance{Balance: 150, FreeCreditsRemaining: 150, TotalEarned: 150, DailyFreeCredits: 5}

// startServe runs `mana serve --port 0` plus args with cheap argon2
// parameters plus extra on a cloned database (unless extra names a
// DATABASE_URL), waits until it listens and stops it when the test ends.
func startServe(t *testing.T, extra map[string]string, args ...string) *authServer {
	t.Helper()
	vars := map[string]string{
		"DATA_DIR":          t.TempDir(),
		"ARGON2_MEMORY_KIB": "1024",
		"ARGON2_TIME":       "1",
	}
	if _, ok := extra["DATABASE_URL"]; !ok {
		vars["DATABASE_URL"] = pgtest.NewDB(t)
	}
	for k, v := range extra {
		vars[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &authServer{vars: vars, log: newLogWriter()}
	done := make(chan int, 1)
	go func() {
		var stdout bytes.Buffer
		done <- run(ctx, append([]string{"serve", "--port", "0"}, args...), envOf(vars), &stdout, s.log)
	}()
	exited := false
	t.Cleanup(func() {
		cancel()
		if !exited {
			select {
			case <-done:
			case <-time.After(shutdownTimeout):
				t.Errorf("serve did not return within %v of cancellation", shutdownTimeout)
			}
		}
		if t.Failed() {
			t.Logf("serve log:\n%s", s.log)
		}
	})
	var addr string
	select {
	case addr = <-s.log.addr:
	case code := <-done:
		exited = true
		t.Fatalf("serve exited with %d before listening", code)
	case <-time.After(startupTimeout):
		t.Fatalf("serve did not listen within %v", startupTimeout)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listening addr %q: %v", addr, err)
	}
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", port)}
	s.c = apitest.New(t, &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }})
	s.base = target
	return s
}

// creditUser is a registered, logged-in user.
type creditUser struct {
	id       uuid.UUID
	email    string
	password string
	token    string
}

func (u creditUser) auth() http.Header { return authBearer(u.token) }

// newCreditUser registers and logs in a user with a unique email.
func newCreditUser(t *testing.T, s *authServer, prefix string) creditUser {
	t.Helper()
	u := creditUser{email: prefix + "." + uuid.NewString()[:8] + "@example.com", password: "credits password 1"}
	reg := s.register(t, u.email, u.password, prefix)
	u.id = reg.ID
	u.token = s.login(t, u.email, u.password, "").AccessToken
	return u
}

func idemKey(k string) http.Header { return http.Header{"Idempotency-Key": {k}} }

func merge(hs ...http.Header) http.Header {
	out := http.Header{}
	for _, h := range hs {
		for k, vs := range h {
			out[k] = vs
		}
	}
	return out
}

func getBalance(t *testing.T, s *authServer, u creditUser) creditBalance {
	t.Helper()
	r := s.c.Do(http.MethodGet, "/api/v1/credits/balance", nil, u.auth())
	if r.Status != http.StatusOK {
		t.Fatalf("GET /credits/balance = %d %s", r.Status, r.Body)
	}
	var b creditBalance
	r.JSON(t, &b)
	return b
}

// wantPosition checks that a write answered X-Mana-Position and returns it.
func wantPosition(t *testing.T, r *apitest.Response) string {
	t.Helper()
	p := r.Header.Get("X-Mana-Position")
	if !positionPattern.MatchString(p) {
		t.Errorf("X-Mana-Position = %q, want <tx_id>-<position>", p)
	}
	return p
}

// use spends amount for app and fails the test unless it answers 201.
func use(t *testing.T, s *authServer, u creditUser, amount int64, app, description string, hs ...http.Header) (creditWrite, *apitest.Response) {
	t.Helper()
	r := s.c.Do(http.MethodPost, "/api/v1/credits/use", map[string]any{"amount": amount, "appId": app, "description": description},
		append([]http.Header{u.auth()}, hs...)...)
	if r.Status != http.StatusCreated {
		t.Fatalf("POST /credits/use %d = %d %s", amount, r.Status, r.Body)
	}
	var w creditWrite
	r.JSON(t, &w)
	wantPosition(t, r)
	return w, r
}

func wantBalance(t *testing.T, what string, got, want creditBalance) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %+v, want %+v", what, got, want)
	}
	if got.Balance != got.FreeCreditsRemaining+got.PaidBalance || got.Balance+got.HeldCredits != got.TotalEarned-got.TotalSpent {
		t.Errorf("%s = %+v breaks the balance invariants", what, got)
	}
}

func transactions(t *testing.T, s *authServer, u creditUser, query string) []creditTx {
	t.Helper()
	r := s.c.Do(http.MethodGet, "/api/v1/credits/transactions"+query, nil, u.auth())
	if r.Status != http.StatusOK {
		t.Fatalf("GET /credits/transactions%s = %d %s", query, r.Status, r.Body)
	}
	var list []creditTx
	r.JSON(t, &list)
	return list
}

// TestCreditsOverHTTP drives every credit endpoint of one real server.
func TestCreditsOverHTTP(t *testing.T) {
	t.Parallel()
	testCreditSuite(t, startServe(t, nil))
}

// testCreditSuite runs every credit test on s in parallel.
// TestCreditsThroughPgBouncer runs it too.
func testCreditSuite(t *testing.T, s *authServer) {
	t.Run("balance and use", func(t *testing.T) { t.Parallel(); testCreditBalanceAndUse(t, s) })
	t.Run("idempotency", func(t *testing.T) { t.Parallel(); testCreditIdempotency(t, s) })
	t.Run("validation", func(t *testing.T) { t.Parallel(); testCreditValidation(t, s) })
	t.Run("overdraw", func(t *testing.T) { t.Parallel(); testCreditOverdraw(t, s) })
	t.Run("transactions and usage", func(t *testing.T) { t.Parallel(); testCreditHistory(t, s) })
	t.Run("holds", func(t *testing.T) { t.Parallel(); testCreditHolds(t, s) })
	t.Run("internal", func(t *testing.T) { t.Parallel(); testCreditInternal(t, s) })
	t.Run("admin", func(t *testing.T) { t.Parallel(); testCreditAdmin(t, s) })
}

func testCreditBalanceAndUse(t *testing.T, s *authServer) {
	u := newCreditUser(t, s, "use")
	wantBalance(t, "a new account's balance", getBalance(t, s, u), fresh)

	if r := s.c.Do(http.MethodGet, "/api/v1/credits/balance", nil); r.Status != http.StatusUnauthorized {
		t.Errorf("GET /credits/balance without a token = %d", r.Status)
	}

	meta := map[string]any{"model": "small", "tokens": float64(42)}
	r := s.c.Do(http.MethodPost, "/api/v1/credits/use",
		map[string]any{"amount": 10, "appId": "chat", "description": "a message", "metadata": meta}, u.auth())
	if r.Status != http.StatusCreated {
		t.Fatalf("POST /credits/use = %d %s", r.Status, r.Body)
	}
	wantPosition(t, r)
	if r.Header.Get("Idempotent-Replayed") != "" {
		t.Error("a first request carries Idempotent-Replayed")
	}
	var w creditWrite
	r.JSON(t, &w)
	tx := w.Transaction
	if !w.Success || w.Replayed || tx.ID == uuid.Nil || tx.Type != "spend" || tx.Amount != 10 ||
		tx.AppID == nil || *tx.AppID != "chat" || tx.Description == nil || *tx.Description != "a message" ||
		tx.Metadata["model"] != "small" || tx.Metadata["tokens"] != float64(42) || tx.HoldID != nil ||
		time.Since(tx.CreatedAt).Abs() > time.Minute {
		t.Errorf("use answered %s", r.Body)
	}
	want := creditBalance{Balance: 140, FreeCreditsRemaining: 140, TotalEarned: 150, TotalSpent: 10, DailyFreeCredits: 5}
	wantBalance(t, "newBalance", w.NewBalance, want)
	wantBalance(t, "balance right after the spend", getBalance(t, s, u), want)

	// Read-your-writes: every balance read right after a spend shows it.
	for i := range 20 {
		w, _ := use(t, s, u, 1, "chat", "")
		if w.Transaction.Description != nil {
			t.Errorf("an empty description reads %q, want null", *w.Transaction.Description)
		}
		want.Balance--
		want.FreeCreditsRemaining--
		want.TotalSpent++
		wantBalance(t, "newBalance "+strconv.Itoa(i), w.NewBalance, want)
		wantBalance(t, "balance after spend "+strconv.Itoa(i), getBalance(t, s, u), w.NewBalance)
	}
}

func testCreditIdempotency(t *testing.T, s *authServer) {
	u := newCreditUser(t, s, "idem")
	for _, via := range []string{"header", "body"} {
		key := "key:" + via + "-" + uuid.NewString()
		body := map[string]any{"amount": 7, "appId": "chat", "description": "once"}
		hs := []http.Header{u.auth()}
		if via == "header" {
			hs = append(hs, idemKey(key))
		} else {
			body["idempotencyKey"] = key
		}
		before := getBalance(t, s, u)
		first := s.c.Do(http.MethodPost, "/api/v1/credits/use", body, hs...)
		if first.Status != http.StatusCreated {
			t.Fatalf("%s: first use = %d %s", via, first.Status, first.Body)
		}
		var w1 creditWrite
		first.JSON(t, &w1)
		if w1.Replayed || first.Header.Get("Idempotent-Replayed") != "" {
			t.Errorf("%s: the first request is marked replayed", via)
		}
		for i := range 2 {
			again := s.c.Do(http.MethodPost, "/api/v1/credits/use", body, hs...)
			if again.Status != http.StatusCreated {
				t.Fatalf("%s: replay = %d %s", via, again.Status, again.Body)
			}
			var w2 creditWrite
			again.JSON(t, &w2)
			if !w2.Replayed || again.Header.Get("Idempotent-Replayed") != "true" {
				t.Errorf("%s: replay %d is not marked: %s, header %q", via, i, again.Body, again.Header.Get("Idempotent-Replayed"))
			}
			if w2.Transaction.ID != w1.Transaction.ID || w2.NewBalance != w1.NewBalance || !w2.Transaction.CreatedAt.Equal(w1.Transaction.CreatedAt) {
				t.Errorf("%s: replay %s differs from the original %s", via, again.Body, first.Body)
			}
			if !bytes.HasPrefix(again.Body, bytes.TrimSuffix(bytes.TrimSpace(first.Body), []byte("}"))) {
				t.Errorf("%s: the replay is not the original body plus replayed:\n%s\n%s", via, first.Body, again.Body)
			}
			if p1, p2 := first.Header.Get("X-Mana-Position"), wantPosition(t, again); p1 != p2 {
				t.Errorf("%s: replay position %q, original %q", via, p2, p1)
			}
		}
		// The same key with another body is refused and changes nothing.
		other := map[string]any{"amount": 8, "appId": "chat", "description": "once"}
		if via == "body" {
			other["idempotencyKey"] = key
		}
		r := s.c.Do(http.MethodPost, "/api/v1/credits/use", other, hs...)
		wantAuthError(t, r, http.StatusConflict, "IDEMPOTENCY_KEY_REUSED")
		before.Balance -= 7
		before.FreeCreditsRemaining -= 7
		before.TotalSpent += 7
		wantBalance(t, via+": balance after a spend and its replays", getBalance(t, s, u), before)
	}

	// A header and a body key must agree.
	r := s.c.Do(http.MethodPost, "/api/v1/credits/use", map[string]any{"amount": 1, "appId": "chat", "idempotencyKey": "a"},
		u.auth(), idemKey("b"))
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	r = s.c.Do(http.MethodPost, "/api/v1/credits/use", map[string]any{"amount": 1, "appId": "chat"}, u.auth(), idemKey("not a key"))
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")

	// Keys are per operation: a hold with a spend's key is a new request.
	key := "shared-" + uuid.NewString()
	use(t, s, u, 1, "chat", "", idemKey(key))
	r = s.c.Do(http.MethodPost, "/api/v1/credits/holds", map[string]any{"amount": 1, "appId": "chat", "ttlSeconds": 60}, u.auth(), idemKey(key))
	if r.Status != http.StatusCreated || r.Header.Get("Idempotent-Replayed") != "" {
		t.Errorf("a hold with a spend's key = %d %s", r.Status, r.Body)
	}
}

func testCreditValidation(t *testing.T, s *authServer) {
	u := newCreditUser(t, s, "valid")
	for _, tc := range []struct {
		name string
		body any
		code string
	}{
		{"string amount", map[string]any{"amount": "5", "appId": "chat"}, "VALIDATION_FAILED"},
		{"zero amount", map[string]any{"amount": 0, "appId": "chat"}, "VALIDATION_FAILED"},
		{"negative amount", map[string]any{"amount": -5, "appId": "chat"}, "VALIDATION_FAILED"},
		{"fractional amount", map[string]any{"amount": 1.5, "appId": "chat"}, "VALIDATION_FAILED"},
		{"missing amount", map[string]any{"appId": "chat"}, "VALIDATION_FAILED"},
		{"missing appId", map[string]any{"amount": 5}, "VALIDATION_FAILED"},
		{"bad appId", map[string]any{"amount": 5, "appId": "Chat App!"}, "VALIDATION_FAILED"},
		{"long appId", map[string]any{"amount": 5, "appId": strings.Repeat("a", 65)}, "VALIDATION_FAILED"},
		{"unknown field", map[string]any{"amount": 5, "appId": "chat", "amout": 5}, "VALIDATION_FAILED"},
		{"long description", map[string]any{"amount": 5, "appId": "chat", "description": strings.Repeat("d", 501)}, "VALIDATION_FAILED"},
		{"metadata not an object", map[string]any{"amount": 5, "appId": "chat", "metadata": []int{1}}, "VALIDATION_FAILED"},
		{"array body", []any{map[string]any{"amount": 5, "appId": "chat"}}, "VALIDATION_FAILED"},
		{"not JSON", "amount=5", "VALIDATION_FAILED"},
	} {
		r := s.c.Do(http.MethodPost, "/api/v1/credits/use", tc.body, u.auth())
		env := wantAuthError(t, r, http.StatusBadRequest, tc.code)
		if t.Failed() {
			t.Logf("case %s: %+v", tc.name, env)
		}
	}
	r := s.c.Do(http.MethodPost, "/api/v1/credits/use", `{"amount":5,"appId":"chat"}`, u.auth(), http.Header{"Content-Type": {"text/plain"}})
	wantAuthError(t, r, http.StatusUnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE")
	r = s.c.Do(http.MethodPost, "/api/v1/credits/use", map[string]any{"amount": 5, "appId": "chat"})
	wantAuthError(t, r, http.StatusUnauthorized, "UNAUTHORIZED")
	r = s.c.Do(http.MethodPost, "/api/v1/credits/use", map[string]any{"amount": 5, "appId": "chat"}, authBearer("not-a-token"))
	if r.Status != http.StatusUnauthorized {
		t.Errorf("use with a garbage token = %d %s", r.Status, r.Body)
	}
	for _, tc := range []struct{ name, body string }{
		{"zero ttl", `{"amount":5,"appId":"chat","ttlSeconds":0}`},
		{"long ttl", `{"amount":5,"appId":"chat","ttlSeconds":86401}`},
		{"zero amount", `{"amount":0,"appId":"chat","ttlSeconds":60}`},
		{"bad app", `{"amount":5,"appId":"-chat","ttlSeconds":60}`},
		{"unknown field", `{"amount":5,"appId":"chat","ttlSeconds":60,"x":1}`},
	} {
		r := s.c.Do(http.MethodPost, "/api/v1/credits/holds", tc.body, u.auth())
		if r.Status != http.StatusBadRequest {
			t.Errorf("hold with %s = %d %s", tc.name, r.Status, r.Body)
		}
	}
	for _, q := range []string{"?minPosition=nonsense", "?minPosition=1"} {
		r := s.c.Do(http.MethodGet, "/api/v1/credits/balance"+q, nil, u.auth())
		wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	}
	wantBalance(t, "balance after rejected requests", getBalance(t, s, u), fresh)
}

func testCreditOverdraw(t *testing.T, s *authServer) {
	u := newCreditUser(t, s, "overdraw")
	key := "over-" + uuid.NewString()
	for range 2 { // a 402 stores nothing: the retry is a new attempt
		r := s.c.Do(http.MethodPost, "/api/v1/credits/use", map[string]any{"amount": 151, "appId": "chat"}, u.auth(), idemKey(key))
		env := wantAuthError(t, r, http.StatusPaymentRequired, "INSUFFICIENT_CREDITS")
		if r.Header.Get("Idempotent-Replayed") != "" || r.Header.Get("X-Mana-Position") != "" {
			t.Errorf("a refused spend carries write headers: %v", r.Header)
		}
		if !strings.Contains(env.Message, "151") {
			t.Errorf("message %q does not say what was asked", env.Message)
		}
	}
	r := s.c.Do(http.MethodPost, "/api/v1/credits/holds", map[string]any{"amount": 151, "appId": "chat", "ttlSeconds": 60}, u.auth())
	wantAuthError(t, r, http.StatusPaymentRequired, "INSUFFICIENT_CREDITS")
	wantBalance(t, "balance after refused debits", getBalance(t, s, u), fresh)
	list := transactions(t, s, u, "")
	if len(list) != 1 || list[0].Type != "signup_bonus" || list[0].Amount != 150 {
		t.Errorf("transactions after refused debits = %+v, want only the signup bonus", list)
	}
	// The key of a refused spend is free for a spend that fits.
	w, _ := use(t, s, u, 150, "chat", "all of it", idemKey(key))
	if w.Replayed || w.NewBalance.Balance != 0 {
		t.Errorf("spend of everything = %+v", w)
	}
	r = s.c.Do(http.MethodPost, "/api/v1/credits/use", map[string]any{"amount": 1, "appId": "chat"}, u.auth())
	wantAuthError(t, r, http.StatusPaymentRequired, "INSUFFICIENT_CREDITS")
}

func testCreditHistory(t *testing.T, s *authServer) {
	u := newCreditUser(t, s, "history")
	var spent []creditWrite
	for i, app := range []string{"chat", "chat", "image"} {
		w, _ := use(t, s, u, int64(i+1), app, "spend "+strconv.Itoa(i))
		spent = append(spent, w)
	}
	list := transactions(t, s, u, "")
	if len(list) != 4 {
		t.Fatalf("transactions = %+v, want 3 spends and the signup bonus", list)
	}
	for i, w := range spent {
		got := list[2-i]
		want := w.Transaction
		if got.ID != want.ID || got.Type != want.Type || got.Amount != want.Amount || *got.AppID != *want.AppID ||
			*got.Description != *want.Description || !got.CreatedAt.Equal(want.CreatedAt) {
			t.Errorf("transaction %d = %+v, the spend answered %+v", i, got, want)
		}
	}
	if b := list[3]; b.Type != "signup_bonus" || b.Amount != 150 || b.AppID != nil || b.Description != nil {
		t.Errorf("oldest transaction = %+v, want the signup bonus", b)
	}
	if page := transactions(t, s, u, "?limit=2"); len(page) != 2 || page[0].ID != list[0].ID || page[1].ID != list[1].ID {
		t.Errorf("limit=2 = %+v", page)
	}
	if page := transactions(t, s, u, "?limit=1&offset=1"); len(page) != 1 || page[0].ID != list[1].ID {
		t.Errorf("limit=1&offset=1 = %+v", page)
	}
	if page := transactions(t, s, u, "?offset=10"); len(page) != 0 {
		t.Errorf("offset past the end = %+v", page)
	}
	if page := transactions(t, s, u, "?limit=200"); len(page) != 4 {
		t.Errorf("limit=200 = %d rows", len(page))
	}
	for _, q := range []string{"?limit=0", "?limit=201", "?limit=x", "?offset=-1", "?minPosition=x"} {
		r := s.c.Do(http.MethodGet, "/api/v1/credits/transactions"+q, nil, u.auth())
		wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	}

	today := domain.Day(time.Now())
	r := s.c.Do(http.MethodGet, "/api/v1/credits/usage", nil, u.auth())
	if r.Status != http.StatusOK {
		t.Fatalf("GET /credits/usage = %d %s", r.Status, r.Body)
	}
	var usage []usageRow
	r.JSON(t, &usage)
	want := []usageRow{{Day: today, AppID: "chat", Credits: 3, Count: 2}, {Day: today, AppID: "image", Credits: 3, Count: 1}}
	if len(usage) != 2 || usage[0] != want[0] || usage[1] != want[1] {
		t.Errorf("usage = %+v, want %+v", usage, want)
	}
	r = s.c.Do(http.MethodGet, "/api/v1/credits/usage?from="+today+"&to="+today, nil, u.auth())
	r.JSON(t, &usage)
	if r.Status != http.StatusOK || len(usage) != 2 {
		t.Errorf("usage of today = %d %s", r.Status, r.Body)
	}
	r = s.c.Do(http.MethodGet, "/api/v1/credits/usage?from=2000-01-01&to=2000-01-02", nil, u.auth())
	if r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != "[]" {
		t.Errorf("usage of another day = %d %s, want []", r.Status, r.Body)
	}
	for _, q := range []string{"?from=yesterday", "?to=2026-13-01", "?from=2026-02-02&to=2026-02-01"} {
		r := s.c.Do(http.MethodGet, "/api/v1/credits/usage"+q, nil, u.auth())
		wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	}
	if r := s.c.Do(http.MethodGet, "/api/v1/credits/transactions", nil); r.Status != http.StatusUnauthorized {
		t.Errorf("transactions without a token = %d", r.Status)
	}
}

func placeHold(t *testing.T, s *authServer, u creditUser, amount int64, ttl int, hs ...http.Header) holdPlaced {
	t.Helper()
	r := s.c.Do(http.MethodPost, "/api/v1/credits/holds", map[string]any{"amount": amount, "appId": "chat", "ttlSeconds": ttl},
		append([]http.Header{u.auth()}, hs...)...)
	if r.Status != http.StatusCreated {
		t.Fatalf("POST /credits/holds = %d %s", r.Status, r.Body)
	}
	wantPosition(t, r)
	var h holdPlaced
	r.JSON(t, &h)
	return h
}

func testCreditHolds(t *testing.T, s *authServer) {
	u := newCreditUser(t, s, "holds")
	h := placeHold(t, s, u, 30, 600)
	if h.ID == uuid.Nil || h.Amount != 30 || h.AppID != "chat" || h.Status != "active" || h.Replayed ||
		time.Until(h.ExpiresAt) < 9*time.Minute || time.Until(h.ExpiresAt) > 11*time.Minute {
		t.Errorf("hold = %+v", h)
	}
	held := creditBalance{Balance: 120, FreeCreditsRemaining: 120, HeldCredits: 30, TotalEarned: 150, DailyFreeCredits: 5}
	wantBalance(t, "newBalance of the hold", h.NewBalance, held)
	wantBalance(t, "balance with a hold", getBalance(t, s, u), held)

	// Capture part of it: the rest returns.
	capPath := "/api/v1/credits/holds/" + h.ID.String() + "/capture"
	r := s.c.Do(http.MethodPost, capPath, map[string]any{"amount": 31}, u.auth())
	wantAuthError(t, r, http.StatusBadRequest, "CAPTURE_EXCEEDS_HOLD")
	r = s.c.Do(http.MethodPost, capPath, map[string]any{"amount": 0}, u.auth())
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	key := "capture-" + uuid.NewString()
	r = s.c.Do(http.MethodPost, capPath, map[string]any{"amount": 20}, u.auth(), idemKey(key))
	if r.Status != http.StatusOK {
		t.Fatalf("capture = %d %s", r.Status, r.Body)
	}
	pos := wantPosition(t, r)
	var c holdResult
	r.JSON(t, &c)
	if c.Hold.ID != h.ID || c.Hold.Status != "captured" || c.Hold.Captured != 20 || c.Hold.Amount != 30 || c.Replayed ||
		c.Transaction == nil || c.Transaction.Type != "hold_capture" || c.Transaction.Amount != 20 ||
		c.Transaction.HoldID == nil || *c.Transaction.HoldID != h.ID || *c.Transaction.AppID != "chat" {
		t.Errorf("capture = %s", r.Body)
	}
	captured := creditBalance{Balance: 130, FreeCreditsRemaining: 130, TotalEarned: 150, TotalSpent: 20, DailyFreeCredits: 5}
	wantBalance(t, "newBalance of the capture", c.NewBalance, captured)
	wantBalance(t, "balance after the capture", getBalance(t, s, u), captured)

	// Its replay is the capture again; a new capture is refused.
	r = s.c.Do(http.MethodPost, capPath, map[string]any{"amount": 20}, u.auth(), idemKey(key))
	var again holdResult
	r.JSON(t, &again)
	if r.Status != http.StatusOK || !again.Replayed || r.Header.Get("Idempotent-Replayed") != "true" ||
		again.Transaction == nil || again.Transaction.ID != c.Transaction.ID || r.Header.Get("X-Mana-Position") != pos {
		t.Errorf("capture replay = %d %s", r.Status, r.Body)
	}
	r = s.c.Do(http.MethodPost, capPath, map[string]any{"amount": 5}, u.auth())
	wantAuthError(t, r, http.StatusConflict, "HOLD_NOT_ACTIVE")
	r = s.c.Do(http.MethodPost, "/api/v1/credits/holds/"+h.ID.String()+"/release", nil, u.auth())
	wantAuthError(t, r, http.StatusConflict, "HOLD_NOT_ACTIVE")

	// Release gives everything back; the body is optional.
	h2 := placeHold(t, s, u, 10, 600)
	relPath := "/api/v1/credits/holds/" + h2.ID.String() + "/release"
	r = s.c.Do(http.MethodPost, "/api/v1/credits/holds/"+h2.ID.String()+"/capture", map[string]any{"amount": 11}, u.auth())
	wantAuthError(t, r, http.StatusBadRequest, "CAPTURE_EXCEEDS_HOLD")
	r = s.c.Do(http.MethodPost, relPath, nil, u.auth())
	if r.Status != http.StatusOK {
		t.Fatalf("release = %d %s", r.Status, r.Body)
	}
	wantPosition(t, r)
	var rel holdResult
	r.JSON(t, &rel)
	if rel.Hold.Status != "released" || rel.Hold.Captured != 0 || rel.Transaction != nil {
		t.Errorf("release = %s", r.Body)
	}
	wantBalance(t, "newBalance of the release", rel.NewBalance, captured)
	r = s.c.Do(http.MethodPost, relPath, map[string]any{"idempotencyKey": "rel-" + uuid.NewString()}, u.auth())
	wantAuthError(t, r, http.StatusConflict, "HOLD_NOT_ACTIVE")

	// Unknown, malformed and other users' holds are not found.
	other := newCreditUser(t, s, "holds-other")
	for _, p := range []string{
		"/api/v1/credits/holds/" + uuid.NewString() + "/capture",
		"/api/v1/credits/holds/not-a-uuid/capture",
	} {
		r := s.c.Do(http.MethodPost, p, map[string]any{"amount": 1}, u.auth())
		wantAuthError(t, r, http.StatusNotFound, "HOLD_NOT_FOUND")
	}
	h3 := placeHold(t, s, u, 5, 600)
	r = s.c.Do(http.MethodPost, "/api/v1/credits/holds/"+h3.ID.String()+"/capture", map[string]any{"amount": 1}, other.auth())
	wantAuthError(t, r, http.StatusNotFound, "HOLD_NOT_FOUND")
	r = s.c.Do(http.MethodPost, "/api/v1/credits/holds/"+h3.ID.String()+"/release", nil, other.auth())
	wantAuthError(t, r, http.StatusNotFound, "HOLD_NOT_FOUND")

	// A hold past its expiry can no longer be captured, and its credits return.
	h4 := placeHold(t, s, u, 7, 1)
	time.Sleep(time.Until(h4.ExpiresAt) + 50*time.Millisecond)
	r = s.c.Do(http.MethodPost, "/api/v1/credits/holds/"+h4.ID.String()+"/capture", map[string]any{"amount": 7}, u.auth())
	wantAuthError(t, r, http.StatusConflict, "HOLD_EXPIRED")
	r = s.c.Do(http.MethodPost, "/api/v1/credits/holds/"+h4.ID.String()+"/release", nil, u.auth())
	wantAuthError(t, r, http.StatusConflict, "HOLD_EXPIRED")
	withH3 := captured
	withH3.Balance, withH3.FreeCreditsRemaining, withH3.HeldCredits = 125, 125, 5
	wantBalance(t, "balance after the expiry", getBalance(t, s, u), withH3)

	types := map[string]int{}
	for _, tx := range transactions(t, s, u, "?limit=200") {
		types[tx.Type]++
	}
	if types["hold"] != 4 || types["hold_capture"] != 1 || types["hold_release"] != 1 || types["hold_expiry"] != 1 {
		t.Errorf("transaction types = %v", types)
	}
}

// createServiceKey runs `mana admin service-key create` and returns the key.
func createServiceKey(t *testing.T, vars map[string]string, args ...string) string {
	t.Helper()
	r := runCmd(t, vars, append([]string{"admin", "service-key", "create"}, args...)...)
	if r.code != 0 {
		t.Fatalf("admin service-key create %v: %d %s", args, r.code, r.stderr)
	}
	for _, l := range lines(r.stdout) {
		if k, ok := strings.CutPrefix(l, "X-Service-Key: "); ok {
			return k
		}
	}
	t.Fatalf("admin service-key create printed no key:\n%s", r.stdout)
	return ""
}

func appHeaders(key, app string) http.Header {
	return http.Header{"X-Service-Key": {key}, "X-App-Id": {app}}
}

func testCreditInternal(t *testing.T, s *authServer) {
	key := createServiceKey(t, s.vars, "chat")
	app := appHeaders(key, "chat")
	u := newCreditUser(t, s, "internal")
	base := "/api/v1/internal/credits"

	r := s.c.Do(http.MethodGet, base+"/balance/"+u.id.String(), nil, app)
	var b creditBalance
	r.JSON(t, &b)
	if r.Status != http.StatusOK {
		t.Fatalf("internal balance = %d %s", r.Status, r.Body)
	}
	wantBalance(t, "internal balance", b, fresh)

	// Authentication: the key, its app and the header must agree.
	for _, tc := range []struct {
		name   string
		h      http.Header
		status int
		code   string
	}{
		{"no headers", nil, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"no app id", http.Header{"X-Service-Key": {key}}, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"wrong secret", appHeaders(key[:len(key)-2]+"xx", "chat"), http.StatusUnauthorized, "UNAUTHORIZED"},
		{"not a key", appHeaders("nonsense", "chat"), http.StatusUnauthorized, "UNAUTHORIZED"},
		{"a user token", merge(u.auth(), http.Header{"X-App-Id": {"chat"}}), http.StatusUnauthorized, "UNAUTHORIZED"},
		{"another app", appHeaders(key, "image"), http.StatusForbidden, "APP_MISMATCH"},
	} {
		r := s.c.Do(http.MethodPost, base+"/use", map[string]any{"userId": u.id, "amount": 1}, tc.h)
		if r.Status != tc.status {
			t.Errorf("%s: use = %d %s", tc.name, r.Status, r.Body)
			continue
		}
		wantAuthError(t, r, tc.status, tc.code)
		r = s.c.Do(http.MethodGet, base+"/balance/"+u.id.String(), nil, tc.h)
		wantAuthError(t, r, tc.status, tc.code)
	}

	// Spend: appId defaults to the key's app, and must match it.
	r = s.c.Do(http.MethodPost, base+"/use", map[string]any{"userId": u.id, "amount": 5, "description": "api call"}, app)
	if r.Status != http.StatusCreated {
		t.Fatalf("internal use = %d %s", r.Status, r.Body)
	}
	wantPosition(t, r)
	var w creditWrite
	r.JSON(t, &w)
	if w.Transaction.Type != "spend" || *w.Transaction.AppID != "chat" || w.NewBalance.Balance != 145 {
		t.Errorf("internal use = %s", r.Body)
	}
	wantBalance(t, "the user's balance after an app's spend", getBalance(t, s, u), w.NewBalance)
	r = s.c.Do(http.MethodPost, base+"/use", map[string]any{"userId": u.id, "amount": 5, "appId": "chat"}, app)
	if r.Status != http.StatusCreated {
		t.Errorf("internal use with its own appId = %d %s", r.Status, r.Body)
	}
	r = s.c.Do(http.MethodPost, base+"/use", map[string]any{"userId": u.id, "amount": 5, "appId": "image"}, app)
	wantAuthError(t, r, http.StatusForbidden, "APP_MISMATCH")
	r = s.c.Do(http.MethodPost, base+"/use", map[string]any{"amount": 5}, app)
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	r = s.c.Do(http.MethodPost, base+"/use", map[string]any{"userId": uuid.New(), "amount": 5}, app)
	wantAuthError(t, r, http.StatusNotFound, "NOT_FOUND")
	r = s.c.Do(http.MethodPost, base+"/use", map[string]any{"userId": u.id, "amount": 1000}, app)
	wantAuthError(t, r, http.StatusPaymentRequired, "INSUFFICIENT_CREDITS")
	r = s.c.Do(http.MethodGet, base+"/balance/not-a-uuid", nil, app)
	wantAuthError(t, r, http.StatusNotFound, "NOT_FOUND")

	// Refund of the app's own spend.
	r = s.c.Do(http.MethodPost, base+"/refund", map[string]any{"userId": u.id, "transactionId": w.Transaction.ID, "amount": 5}, app)
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED") // reason is required
	r = s.c.Do(http.MethodPost, base+"/refund", map[string]any{"userId": u.id, "transactionId": w.Transaction.ID, "amount": 5, "reason": "failed call"}, app)
	if r.Status != http.StatusCreated {
		t.Fatalf("internal refund = %d %s", r.Status, r.Body)
	}
	var rf creditWrite
	r.JSON(t, &rf)
	if rf.Transaction.Type != "refund" || rf.Transaction.Amount != 5 || rf.NewBalance.Balance != 145 || rf.NewBalance.TotalSpent != 5 {
		t.Errorf("internal refund = %s", r.Body)
	}

	// Holds placed by the app are the app's to capture or release.
	r = s.c.Do(http.MethodPost, base+"/holds", map[string]any{"userId": u.id, "amount": 20, "ttlSeconds": 600}, app)
	if r.Status != http.StatusCreated {
		t.Fatalf("internal hold = %d %s", r.Status, r.Body)
	}
	var h holdPlaced
	r.JSON(t, &h)
	if h.AppID != "chat" || h.Status != "active" || h.NewBalance.HeldCredits != 20 {
		t.Errorf("internal hold = %s", r.Body)
	}
	r = s.c.Do(http.MethodPost, base+"/holds", map[string]any{"userId": u.id, "amount": 20, "ttlSeconds": 600, "appId": "image"}, app)
	wantAuthError(t, r, http.StatusForbidden, "APP_MISMATCH")
	r = s.c.Do(http.MethodPost, "/api/v1/credits/holds/"+h.ID.String()+"/capture", map[string]any{"amount": 1}, u.auth())
	wantAuthError(t, r, http.StatusForbidden, "APP_MISMATCH")
	r = s.c.Do(http.MethodPost, "/api/v1/credits/holds/"+h.ID.String()+"/release", nil, u.auth())
	wantAuthError(t, r, http.StatusForbidden, "APP_MISMATCH")
	other := createServiceKey(t, s.vars, "image")
	r = s.c.Do(http.MethodPost, base+"/holds/"+h.ID.String()+"/capture", map[string]any{"userId": u.id, "amount": 1}, appHeaders(other, "image"))
	wantAuthError(t, r, http.StatusForbidden, "APP_MISMATCH")
	r = s.c.Do(http.MethodPost, base+"/holds/"+h.ID.String()+"/capture", map[string]any{"amount": 1}, app)
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	r = s.c.Do(http.MethodPost, base+"/holds/"+h.ID.String()+"/release", map[string]any{}, app)
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	r = s.c.Do(http.MethodPost, base+"/holds/"+h.ID.String()+"/capture", map[string]any{"userId": u.id, "amount": 21}, app)
	wantAuthError(t, r, http.StatusBadRequest, "CAPTURE_EXCEEDS_HOLD")
	r = s.c.Do(http.MethodPost, base+"/holds/"+h.ID.String()+"/capture", map[string]any{"userId": u.id, "amount": 15}, app)
	if r.Status != http.StatusOK {
		t.Fatalf("internal capture = %d %s", r.Status, r.Body)
	}
	var c holdResult
	r.JSON(t, &c)
	if c.Hold.Status != "captured" || c.Hold.Captured != 15 || c.Transaction == nil || c.NewBalance.Balance != 130 || c.NewBalance.HeldCredits != 0 {
		t.Errorf("internal capture = %s", r.Body)
	}
	r = s.c.Do(http.MethodPost, base+"/holds/"+h.ID.String()+"/release", map[string]any{"userId": u.id}, app)
	wantAuthError(t, r, http.StatusConflict, "HOLD_NOT_ACTIVE")
	r = s.c.Do(http.MethodPost, base+"/holds/"+uuid.NewString()+"/release", map[string]any{"userId": u.id}, app)
	wantAuthError(t, r, http.StatusNotFound, "HOLD_NOT_FOUND")
	r = s.c.Do(http.MethodPost, base+"/holds", map[string]any{"userId": u.id, "amount": 3, "ttlSeconds": 600}, app)
	r.JSON(t, &h)
	r = s.c.Do(http.MethodPost, base+"/holds/"+h.ID.String()+"/release", map[string]any{"userId": u.id}, app)
	var rel holdResult
	r.JSON(t, &rel)
	if r.Status != http.StatusOK || rel.Hold.Status != "released" || rel.Transaction != nil || rel.NewBalance.Balance != 130 {
		t.Errorf("internal release = %d %s", r.Status, r.Body)
	}

	// A key's daily cap per user.
	capped := appHeaders(createServiceKey(t, s.vars, "capped", "--max-per-user-per-day", "10"), "capped")
	r = s.c.Do(http.MethodPost, base+"/use", map[string]any{"userId": u.id, "amount": 8}, capped)
	if r.Status != http.StatusCreated {
		t.Fatalf("capped use = %d %s", r.Status, r.Body)
	}
	r = s.c.Do(http.MethodPost, base+"/use", map[string]any{"userId": u.id, "amount": 3}, capped)
	wantAuthError(t, r, http.StatusForbidden, "SPEND_LIMIT_EXCEEDED")
	r = s.c.Do(http.MethodPost, base+"/use", map[string]any{"userId": u.id, "amount": 2}, capped)
	if r.Status != http.StatusCreated {
		t.Errorf("capped use within the cap = %d %s", r.Status, r.Body)
	}
	wantBalance(t, "balance after the app's writes", getBalance(t, s, u),
		creditBalance{Balance: 120, FreeCreditsRemaining: 120, TotalEarned: 150, TotalSpent: 30, DailyFreeCredits: 5})
}

func testCreditAdmin(t *testing.T, s *authServer) {
	target := newCreditUser(t, s, "target")
	plain := newCreditUser(t, s, "plain")
	grant := map[string]any{"userId": target.id, "amount": 100, "reason": "promo"}
	for _, tc := range []struct{ method, path string }{
		{http.MethodPost, "/api/v1/admin/credits/grant"},
		{http.MethodPost, "/api/v1/admin/credits/adjust"},
		{http.MethodPost, "/api/v1/admin/credits/refund"},
		{http.MethodGet, "/api/v1/admin/accounts/" + target.id.String() + "/balance"},
		{http.MethodGet, "/api/v1/admin/users?email=" + url.QueryEscape(target.email)},
	} {
		var body any
		if tc.method == http.MethodPost {
			body = grant
		}
		r := s.c.Do(tc.method, tc.path, body, plain.auth())
		wantAuthError(t, r, http.StatusForbidden, "FORBIDDEN")
		r = s.c.Do(tc.method, tc.path, body)
		wantAuthError(t, r, http.StatusUnauthorized, "UNAUTHORIZED")
	}

	adm := newCreditUser(t, s, "admin")
	if r := runCmd(t, s.vars, "admin", "set-role", adm.email, "admin"); r.code != 0 {
		t.Fatalf("admin set-role: %d %s", r.code, r.stderr)
	}
	if r := s.c.Do(http.MethodGet, "/api/v1/admin/accounts/"+target.id.String()+"/balance", nil, adm.auth()); r.Status != http.StatusUnauthorized {
		t.Errorf("the token from before set-role = %d, want 401", r.Status)
	}
	pair := s.login(t, adm.email, adm.password, "")
	if pair.User.Role != "admin" {
		t.Fatalf("role after set-role = %q", pair.User.Role)
	}
	adm.token = pair.AccessToken

	// A spend to refund later, and the position of the balance then.
	spend, sr := use(t, s, target, 10, "chat", "to refund")
	then, thenBalance := sr.Header.Get("X-Mana-Position"), spend.NewBalance

	r := s.c.Do(http.MethodPost, "/api/v1/admin/credits/grant", map[string]any{"userId": target.id, "amount": 100}, adm.auth())
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/grant", map[string]any{"userId": target.id, "amount": 100, "reason": " "}, adm.auth())
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/grant", map[string]any{"userId": target.id, "amount": 0, "reason": "x"}, adm.auth())
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/grant", map[string]any{"userId": target.id, "amount": 1, "reason": "x", "bucket": "gold"}, adm.auth())
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/grant", map[string]any{"amount": 1, "reason": "x"}, adm.auth())
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/grant", map[string]any{"userId": uuid.New(), "amount": 1, "reason": "x"}, adm.auth())
	wantAuthError(t, r, http.StatusNotFound, "NOT_FOUND")

	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/grant", grant, adm.auth())
	if r.Status != http.StatusCreated {
		t.Fatalf("grant = %d %s", r.Status, r.Body)
	}
	wantPosition(t, r)
	var g creditWrite
	r.JSON(t, &g)
	if !g.Success || g.Transaction.Type != "grant" || g.Transaction.Amount != 100 || g.Transaction.Description == nil || *g.Transaction.Description != "promo" {
		t.Errorf("grant = %s", r.Body)
	}
	want := creditBalance{Balance: 240, FreeCreditsRemaining: 240, TotalEarned: 250, TotalSpent: 10, DailyFreeCredits: 5}
	wantBalance(t, "newBalance of the grant", g.NewBalance, want)
	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/grant", map[string]any{"userId": target.id, "amount": 50, "bucket": "paid", "reason": "goodwill"}, adm.auth())
	r.JSON(t, &g)
	want.Balance, want.PaidBalance, want.TotalEarned = 290, 50, 300
	wantBalance(t, "newBalance of a paid grant", g.NewBalance, want)

	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/adjust", map[string]any{"userId": target.id, "amount": -20, "reason": "correction"}, adm.auth())
	if r.Status != http.StatusCreated {
		t.Fatalf("adjust = %d %s", r.Status, r.Body)
	}
	var a creditWrite
	r.JSON(t, &a)
	want.Balance, want.FreeCreditsRemaining, want.TotalSpent = 270, 220, 30
	if a.Transaction.Type != "adjustment" || a.Transaction.Amount != -20 {
		t.Errorf("adjust = %s", r.Body)
	}
	wantBalance(t, "newBalance of the adjustment", a.NewBalance, want)
	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/adjust", map[string]any{"userId": target.id, "amount": 0, "reason": "nothing"}, adm.auth())
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/adjust", map[string]any{"userId": target.id, "amount": -100000, "reason": "too much"}, adm.auth())
	wantAuthError(t, r, http.StatusPaymentRequired, "INSUFFICIENT_CREDITS")
	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/adjust", map[string]any{"userId": target.id, "amount": 5}, adm.auth())
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")

	refund := map[string]any{"userId": target.id, "transactionId": spend.Transaction.ID, "amount": 10, "reason": "refund"}
	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/refund", refund, adm.auth())
	if r.Status != http.StatusCreated {
		t.Fatalf("refund = %d %s", r.Status, r.Body)
	}
	var rf creditWrite
	r.JSON(t, &rf)
	want.Balance, want.FreeCreditsRemaining, want.TotalSpent = 280, 230, 20
	if rf.Transaction.Type != "refund" || rf.Transaction.Amount != 10 || *rf.Transaction.AppID != "chat" {
		t.Errorf("refund = %s", r.Body)
	}
	wantBalance(t, "newBalance of the refund", rf.NewBalance, want)
	refund["amount"] = 1
	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/refund", refund, adm.auth())
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	refund["transactionId"] = uuid.New()
	r = s.c.Do(http.MethodPost, "/api/v1/admin/credits/refund", refund, adm.auth())
	wantAuthError(t, r, http.StatusNotFound, "NOT_FOUND")
	wantBalance(t, "the user's own balance", getBalance(t, s, target), want)

	// Balances now and at an earlier position.
	balancePath := "/api/v1/admin/accounts/" + target.id.String() + "/balance"
	adminBalance := func(query string) creditBalance {
		t.Helper()
		r := s.c.Do(http.MethodGet, balancePath+query, nil, adm.auth())
		if r.Status != http.StatusOK {
			t.Fatalf("GET admin balance%s = %d %s", query, r.Status, r.Body)
		}
		var b creditBalance
		r.JSON(t, &b)
		return b
	}
	wantBalance(t, "admin balance now", adminBalance(""), want)
	wantBalance(t, "admin balance at the spend", adminBalance("?at="+then), thenBalance)
	wantBalance(t, "admin balance at the future", adminBalance("?at="+url.QueryEscape(time.Now().Add(time.Hour).Format(time.RFC3339))), want)
	wantBalance(t, "admin balance before the account", adminBalance("?at=2000-01-01T00:00:00Z"),
		creditBalance{DailyFreeCredits: 5})
	for _, q := range []string{"?at=yesterday", "?at=1-"} {
		r := s.c.Do(http.MethodGet, balancePath+q, nil, adm.auth())
		wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	}
	r = s.c.Do(http.MethodGet, "/api/v1/admin/accounts/not-a-uuid/balance", nil, adm.auth())
	wantAuthError(t, r, http.StatusNotFound, "NOT_FOUND")

	// Admin user search by exact email (the users read model may lag).
	deadline := time.Now().Add(authWait)
	for {
		r = s.c.Do(http.MethodGet, "/api/v1/admin/users?email="+url.QueryEscape(strings.ToUpper(target.email)), nil, adm.auth())
		if r.Status != http.StatusNotFound || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var found struct {
		ID    uuid.UUID `json:"id"`
		Email string    `json:"email"`
		Role  string    `json:"role"`
	}
	r.JSON(t, &found)
	if r.Status != http.StatusOK || found.ID != target.id || found.Email != target.email || found.Role != "user" {
		t.Errorf("admin users = %d %s", r.Status, r.Body)
	}
	r = s.c.Do(http.MethodGet, "/api/v1/admin/users", nil, adm.auth())
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	r = s.c.Do(http.MethodGet, "/api/v1/admin/users?email=nobody."+uuid.NewString()[:8]+"@example.com", nil, adm.auth())
	wantAuthError(t, r, http.StatusNotFound, "NOT_FOUND")
}

// TestCreditsWithoutProjections serves the API with no projections
// running: the balance still reflects every write (from the write side),
// while the history answers 503 READ_MODEL_LAGGING.
func TestCreditsWithoutProjections(t *testing.T) {
	t.Parallel()
	s := startServe(t, map[string]string{"RYW_TIMEOUT": "200ms"}, "--components=api,relay,workers")
	u := newCreditUser(t, s, "lagging")
	wantBalance(t, "a new account's balance", getBalance(t, s, u), fresh)
	w, _ := use(t, s, u, 10, "chat", "")
	wantBalance(t, "balance after a spend", getBalance(t, s, u), w.NewBalance)
	if w.NewBalance.Balance != 140 {
		t.Errorf("newBalance = %+v", w.NewBalance)
	}
	for _, p := range []string{"/api/v1/credits/transactions", "/api/v1/credits/usage"} {
		r := s.c.Do(http.MethodGet, p, nil, u.auth())
		wantAuthError(t, r, http.StatusServiceUnavailable, "READ_MODEL_LAGGING")
		if r.Header.Get("Retry-After") != "1" {
			t.Errorf("%s: Retry-After = %q", p, r.Header.Get("Retry-After"))
		}
	}
}
