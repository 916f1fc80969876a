package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
)

// TestIdempotencyOverHTTP wires the API's idempotency helpers to the event
// store the way write endpoints do, on a route only this test registers,
// and checks the whole contract over HTTP: replay with "replayed": true and
// Idempotent-Replayed, 409 for another body, nothing stored for a 4xx, and
// 20 concurrent duplicates answered by one execution.
func TestIdempotencyOverHTTP(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	kr, err := keyring.New(bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32))
	if err != nil {
		t.Fatal(err)
	}
	store, err := eventstore.New(pool, eventstore.Options{Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	srv := api.New(api.Config{})
	user := uuid.New()
	var executed atomic.Int64
	srv.Echo().POST("/test/charge", func(c *echo.Context) error {
		var req struct {
			Amount         int64  `json:"amount"`
			IdempotencyKey string `json:"idempotencyKey"`
		}
		if err := api.Bind(c, &req); err != nil {
			return err
		}
		key, err := api.IdempotencyKey(c, req.IdempotencyKey)
		if err != nil {
			return err
		}
		cmd := eventstore.Command{
			Name:  "test.charge",
			Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user},
			Idempotency: &eventstore.Idempotency{
				Subject: "user:" + user.String(), Principal: "user:" + user.String(), Key: key,
				Request: map[string]int64{"amount": req.Amount},
			},
		}
		r, err := store.Execute(c.Request().Context(), cmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			if req.Amount <= 0 {
				return domain.Receipt{}, domain.Errorf(domain.CodeInsufficientCredits, "Not enough credits.")
			}
			recs, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: "package", StreamID: user.String(),
				ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{user},
				Events: []domain.Event{domain.PackageCreated{PackageID: uuid.New(), Name: "x", Credits: req.Amount, Currency: "eur"}}})
			if err != nil {
				return domain.Receipt{}, err
			}
			executed.Add(1)
			body, _ := json.Marshal(map[string]any{"success": true, "id": recs[0].EventID, "amount": req.Amount})
			return domain.Receipt{Status: http.StatusCreated, Body: body}, nil
		})
		if err != nil {
			return err
		}
		return api.WriteReceipt(c, r)
	})
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)

	post := func(body string, key string) (*http.Response, map[string]any) {
		req, _ := http.NewRequest(http.MethodPost, ts.URL+"/test/charge", bytes.NewBufferString(body))
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return nil, nil
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp, out
	}

	first, a := post(`{"amount": 5}`, "k-1")
	if first.StatusCode != 201 || a["replayed"] != nil || first.Header.Get("X-Mana-Position") == "" {
		t.Fatalf("first: %d %v pos=%q", first.StatusCode, a, first.Header.Get("X-Mana-Position"))
	}
	again, b := post(`{ "amount":5 }`, "k-1")
	if again.StatusCode != 201 || b["replayed"] != true || again.Header.Get("Idempotent-Replayed") != "true" || b["id"] != a["id"] {
		t.Fatalf("replay: %d %v %v", again.StatusCode, again.Header, b)
	}
	if again.Header.Get("X-Mana-Position") != first.Header.Get("X-Mana-Position") {
		t.Fatal("a replay carries another position")
	}
	other, c := post(`{"amount": 6}`, "k-1")
	if other.StatusCode != 409 || c["error"] != "IDEMPOTENCY_KEY_REUSED" {
		t.Fatalf("other body: %d %v", other.StatusCode, c)
	}
	// A 402 stores nothing: the same key may then succeed.
	failed, d := post(`{"amount": 0}`, "k-2")
	if failed.StatusCode != 402 || d["error"] != "INSUFFICIENT_CREDITS" {
		t.Fatalf("402: %d %v", failed.StatusCode, d)
	}
	if ok, e := post(`{"amount": 0, "idempotencyKey": "k-2"}`, ""); ok.StatusCode != 402 || e["replayed"] != nil {
		t.Fatalf("retry after 402 replayed: %d %v", ok.StatusCode, e)
	}

	executed.Store(0)
	const n = 20
	var wg sync.WaitGroup
	bodies := make([]map[string]any, n)
	statuses := make([]int, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			resp, body := post(`{"amount": 9}`, "dup")
			if resp != nil {
				statuses[i], bodies[i] = resp.StatusCode, body
			}
		}(i)
	}
	close(start)
	wg.Wait()
	replayed := 0
	for i := 0; i < n; i++ {
		if statuses[i] != 201 || bodies[i]["id"] != bodies[0]["id"] {
			t.Fatalf("duplicate %d: %d %v (first %v)", i, statuses[i], bodies[i], bodies[0])
		}
		if bodies[i]["replayed"] == true {
			replayed++
		}
	}
	if executed.Load() != 1 || replayed != n-1 {
		t.Fatalf("executed %d times with %d replays, want 1 and %d", executed.Load(), replayed, n-1)
	}
}
