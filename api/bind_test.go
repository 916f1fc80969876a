package api_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
)

type registerRequest struct {
	Email    string     `json:"email"`
	Password string     `json:"password"`
	Age      int        `json:"age"`
	Born     *time.Time `json:"born"`
}

// bind runs Bind on a request built from contentType and body.
func bind(t *testing.T, contentType, body string) (registerRequest, error) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	c := echo.New().NewContext(req, httptest.NewRecorder())
	var v registerRequest
	err := api.Bind(c, &v)
	return v, err
}

func TestBindAcceptsAJSONObject(t *testing.T) {
	t.Parallel()
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON"} {
		v, err := bind(t, ct, " {\"email\":\"a@example.com\",\"password\":\"pw\",\"age\":7}\n")
		if err != nil {
			t.Fatalf("%s: %v", ct, err)
		}
		if v.Email != "a@example.com" || v.Password != "pw" || v.Age != 7 {
			t.Errorf("%s: decoded %+v", ct, v)
		}
	}
}

func TestBindRejections(t *testing.T) {
	t.Parallel()
	const secret = "hunter2-SECRET"
	tests := []struct {
		name        string
		contentType string
		body        string
		code        domain.Code
		field       string // the detail's field, when one is expected
	}{
		{"no content type", "", `{"email":"a"}`, domain.CodeUnsupportedMediaType, ""},
		{"text/plain", "text/plain", `{"email":"a"}`, domain.CodeUnsupportedMediaType, ""},
		{"form", "application/x-www-form-urlencoded", `email=a`, domain.CodeUnsupportedMediaType, ""},
		{"latin1", "application/json; charset=latin1", `{"email":"a"}`, domain.CodeUnsupportedMediaType, ""},
		{"unknown field", "application/json", `{"email":"a","passwort":"` + secret + `"}`, domain.CodeValidationFailed, "passwort"},
		{"trailing garbage", "application/json", `{"email":"a"} x`, domain.CodeValidationFailed, ""},
		{"two objects", "application/json", `{"email":"a"}{"email":"b"}`, domain.CodeValidationFailed, ""},
		{"empty body", "application/json", "", domain.CodeValidationFailed, ""},
		{"whitespace body", "application/json", " \n ", domain.CodeValidationFailed, ""},
		{"array", "application/json", `[{"email":"a"}]`, domain.CodeValidationFailed, ""},
		{"null", "application/json", `null`, domain.CodeValidationFailed, ""},
		{"string", "application/json", `"` + secret + `"`, domain.CodeValidationFailed, ""},
		{"syntax error", "application/json", `{"password":"` + secret + `",}`, domain.CodeValidationFailed, ""},
		{"truncated", "application/json", `{"password":"` + secret, domain.CodeValidationFailed, ""},
		{"wrong type", "application/json", `{"age":"` + secret + `"}`, domain.CodeValidationFailed, "age"},
		{"number for string", "application/json", `{"password":123456789}`, domain.CodeValidationFailed, "password"},
		{"custom unmarshal error", "application/json", `{"born":"` + secret + `"}`, domain.CodeValidationFailed, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := bind(t, tt.contentType, tt.body)
			var de *domain.Error
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a *domain.Error", err)
			}
			if de.Code != tt.code {
				t.Errorf("code %s, want %s (%s)", de.Code, tt.code, de.Message)
			}
			if de.Message == "" {
				t.Error("no message")
			}
			if tt.field != "" && (len(de.Details) != 1 || de.Details[0].Field != tt.field) {
				t.Errorf("details %+v, want one naming %q", de.Details, tt.field)
			}
			for _, leak := range []string{secret, "123456789"} {
				if strings.Contains(de.Error(), leak) || strings.Contains(strings.Join(detailText(de), " "), leak) {
					t.Errorf("error repeats the submitted value: %v %+v", de, de.Details)
				}
			}
		})
	}
}

func detailText(e *domain.Error) []string {
	var out []string
	for _, d := range e.Details {
		out = append(out, d.Field, d.Message)
	}
	return out
}

func TestBindErrorsReachTheClientAsEnvelopes(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	s.API().POST("/test/bind", func(c *echo.Context) error {
		var v registerRequest
		if err := api.Bind(c, &v); err != nil {
			return err
		}
		return c.NoContent(http.StatusNoContent)
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/v1/test/bind", strings.NewReader(`{"emial":"a"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, body := do(t, srv.Client(), req)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d, want 400", resp.StatusCode)
	}
	env := checkEnvelope(t, body, http.StatusBadRequest, domain.CodeValidationFailed, "/api/v1/test/bind")
	if len(env.Details) != 1 || env.Details[0].Field != "emial" {
		t.Errorf("details %+v, want the unknown field named", env.Details)
	}

	req, _ = http.NewRequest(http.MethodPost, srv.URL+"/api/v1/test/bind", strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "text/plain")
	resp, body = do(t, srv.Client(), req)
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Fatalf("status %d, want 415", resp.StatusCode)
	}
	checkEnvelope(t, body, http.StatusUnsupportedMediaType, domain.CodeUnsupportedMediaType, "/api/v1/test/bind")
}
