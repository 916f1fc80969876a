package api_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
)

// writeReceipt runs WriteReceipt against a recorder.
func writeReceipt(t *testing.T, r domain.Receipt) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	c := echo.New().NewContext(httptest.NewRequest(http.MethodPost, "/", nil), rec)
	if err := api.WriteReceipt(c, r); err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestWriteReceiptFirstTimeIsVerbatim(t *testing.T) {
	t.Parallel()
	body := `{"id":"tx-1","balance":90}`
	rec := writeReceipt(t, domain.Receipt{Status: http.StatusCreated, Body: json.RawMessage(body), Position: "0000000000000042"})

	if rec.Code != http.StatusCreated {
		t.Errorf("status %d, want 201", rec.Code)
	}
	if rec.Body.String() != body {
		t.Errorf("body %s, want the stored bytes %s", rec.Body, body)
	}
	if got := rec.Header().Get("X-Mana-Position"); got != "0000000000000042" {
		t.Errorf("X-Mana-Position %q", got)
	}
	if rec.Header().Get("Idempotent-Replayed") != "" {
		t.Error("a first answer is marked as replayed")
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
}

func TestWriteReceiptReplayAddsFieldAndHeader(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, stored, want string
	}{
		{"object", `{"id":"tx-1","balance":90}`, `{"id":"tx-1","balance":90,"replayed":true}`},
		{"empty object", `{}`, `{"replayed":true}`},
		{"already has the field", `{"replayed":false,"id":"x"}`, `{"id":"x","replayed":true}`},
		{"array stays as is", `[1,2]`, `[1,2]`},
	}
	for _, tt := range tests {
		rec := writeReceipt(t, domain.Receipt{Status: http.StatusOK, Body: json.RawMessage(tt.stored), Replayed: true})
		if rec.Body.String() != tt.want {
			t.Errorf("%s: body %s, want %s", tt.name, rec.Body, tt.want)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Errorf("%s: replayed body is not JSON: %s", tt.name, rec.Body)
		}
		if got := rec.Header().Get("Idempotent-Replayed"); got != "true" {
			t.Errorf("%s: Idempotent-Replayed %q, want true", tt.name, got)
		}
		if rec.Header().Get("X-Mana-Position") != "" {
			t.Errorf("%s: X-Mana-Position set without a position", tt.name)
		}
	}
}

func TestWriteReceiptWithoutBodyOrStatus(t *testing.T) {
	t.Parallel()
	rec := writeReceipt(t, domain.Receipt{Status: http.StatusNoContent})
	if rec.Code != http.StatusNoContent || rec.Body.Len() != 0 {
		t.Errorf("got %d %q, want 204 and no body", rec.Code, rec.Body)
	}
	rec = writeReceipt(t, domain.Receipt{Body: json.RawMessage(`{"ok":true}`)})
	if rec.Code != http.StatusOK {
		t.Errorf("zero status answered %d, want 200", rec.Code)
	}
}

func idempotencyKey(t *testing.T, headers []string, bodyKey string) (string, error) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/", nil)
	for _, h := range headers {
		req.Header.Add("Idempotency-Key", h)
	}
	c := echo.New().NewContext(req, httptest.NewRecorder())
	return api.IdempotencyKey(c, bodyKey)
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k", 255)
	tests := []struct {
		name    string
		headers []string
		body    string
		want    string
		invalid bool
	}{
		{"absent", nil, "", "", false},
		{"header", []string{"order-42:retry.1_a"}, "", "order-42:retry.1_a", false},
		{"body", nil, "order-42", "order-42", false},
		{"both agree", []string{"order-42"}, "order-42", "order-42", false},
		{"255 chars", []string{long}, "", long, false},
		{"both differ", []string{"order-42"}, "order-43", "", true},
		{"empty header", []string{""}, "", "", true},
		{"256 chars", []string{long + "k"}, "", "", true},
		{"space", []string{"order 42"}, "", "", true},
		{"non-ASCII", nil, "bestellung-ä", "", true},
		{"repeated header disagrees", []string{"a", "b"}, "", "", true},
		{"repeated header agrees", []string{"a", "a"}, "", "a", false},
	}
	for _, tt := range tests {
		got, err := idempotencyKey(t, tt.headers, tt.body)
		if tt.invalid {
			var de *domain.Error
			if !errors.As(err, &de) || de.Code != domain.CodeValidationFailed || len(de.Details) != 1 {
				t.Errorf("%s: error %v, want VALIDATION_FAILED with a detail", tt.name, err)
				continue
			}
			for _, k := range append(tt.headers, tt.body) {
				if len(k) > 3 && strings.Contains(de.Message+de.Details[0].Message, k) {
					t.Errorf("%s: the error repeats the key", tt.name)
				}
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: got %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}
