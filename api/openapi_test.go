package api_test

import (
	"bytes"
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/apitest"
	"github.com/manacore/mana/domain"
)

func loadDoc(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPISpec())
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the OpenAPI document is invalid: %v", err)
	}
	return doc
}

func TestOpenAPIDocumentIsServedAndValid(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, api.Config{})
	r := apitest.New(t, s.Handler()).Do(http.MethodGet, "/api/v1/openapi.json", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("status %d", r.Status)
	}
	if !bytes.Equal(r.Body, api.OpenAPISpec()) {
		t.Error("the served document differs from the embedded one")
	}
	doc, err := openapi3.NewLoader().LoadFromData(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("served document is invalid: %v", err)
	}
	if !doc.IsOpenAPI31OrLater() || doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi = %q, want 3.1.0", doc.OpenAPI)
	}
	if doc.Components.Schemas["Error"] == nil {
		t.Error("components.schemas.Error is missing")
	}
}

func TestOpenAPISpecReturnsACopy(t *testing.T) {
	t.Parallel()
	b := api.OpenAPISpec()
	b[0] = 'X'
	if api.OpenAPISpec()[0] == 'X' {
		t.Error("OpenAPISpec exposes the embedded bytes")
	}
}

// echoParam matches Echo's ":name" path parameters.
var echoParam = regexp.MustCompile(`:([A-Za-z0-9_]+)`)

// TestOpenAPICoversEveryRoute fails when a route registered by New is not
// documented, or a documented operation is not served.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	t.Parallel()
	doc := loadDoc(t)
	// Ports that are never called: they only make the server register the
	// routes of every Set* method, which are documented too. A new Set*
	// method fails the test until it is called here (or listed as
	// registering no routes).
	id := struct{ domain.Identity }{}
	s, _ := newServer(t, api.Config{})
	registrars := map[string]func(){
		"SetIdentity":  func() { s.SetIdentity(id) },
		"SetCredits":   func() { s.SetCredits(struct{ domain.CreditsService }{}, id) },
		"SetCatalog":   func() { s.SetCatalog(struct{ api.Catalog }{}, id) },
		"SetPurchases": func() { s.SetPurchases(struct{ domain.Purchases }{}, id) },
		"SetLedger":    func() { s.SetLedger(struct{ domain.Checkpoints }{}, id) },
		"SetEvents":    func() { s.SetEvents(struct{ api.EventLog }{}, id) },
		"SetAccount":   func() { s.SetAccount(struct{ domain.AccountRecovery }{}, id) },
		"SetTwoFactor": func() { s.SetTwoFactor(struct{ domain.TwoFactor }{}, id) },
		"SetAccountDeletion": func() {
			s.SetAccountDeletion(struct{ domain.AccountDeletion }{}, id)
		},
		"SetConsole": func() { s.SetConsole(consoleStub{}) },
	}
	// Server methods named Set* that register no routes.
	notRegistrars := map[string]bool{"SetReady": true, "SetRateLimits": true}
	st := reflect.TypeOf(s)
	for i := range st.NumMethod() {
		name := st.Method(i).Name
		if strings.HasPrefix(name, "Set") && registrars[name] == nil && !notRegistrars[name] {
			t.Errorf("(*api.Server).%s is new: call it here if it registers routes, or list it in notRegistrars", name)
		}
	}
	for _, register := range registrars {
		register()
	}

	served := map[string]bool{}
	for _, r := range s.Echo().Router().Routes() {
		if r.Method == echo.RouteNotFound || r.Method == echo.RouteAny {
			continue
		}
		// The web console serves HTML pages and form posts to browsers,
		// not the JSON API: it is outside the OpenAPI document by design
		// (SPEC §5; docs/console.md).
		if r.Path == api.ConsolePath || strings.HasPrefix(r.Path, api.ConsolePath+"/") {
			continue
		}
		key := r.Method + " " + echoParam.ReplaceAllString(r.Path, "{$1}")
		served[key] = true
		p := doc.Paths.Find(echoParam.ReplaceAllString(r.Path, "{$1}"))
		if p == nil || p.GetOperation(r.Method) == nil {
			t.Errorf("route %s is not in openapi.json", key)
		}
	}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			if !served[method+" "+path] {
				t.Errorf("openapi.json documents %s %s, which the server does not serve", method, path)
			}
		}
	}
}

// consoleStub registers one page, so the test sees that console routes
// are left out of the comparison.
type consoleStub struct{}

func (consoleStub) Mount(g *echo.Group, _ api.ConsoleEdge) {
	g.GET("/", func(c *echo.Context) error { return c.NoContent(http.StatusOK) })
}

// domainCodes parses domain/error.go for the Code constants, so that a code
// added there without a status or a place in the document fails here.
func domainCodes(t *testing.T) []domain.Code {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "../domain/error.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var codes []domain.Code
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok {
			return true
		}
		if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Code" {
			return true
		}
		for _, v := range vs.Values {
			if lit, ok := v.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				s, _ := strconv.Unquote(lit.Value)
				codes = append(codes, domain.Code(s))
			}
		}
		return true
	})
	if len(codes) < 30 {
		t.Fatalf("found only %d codes in domain/error.go; the parser is out of date", len(codes))
	}
	return codes
}

func TestEveryDomainCodeHasAStatusAndIsDocumented(t *testing.T) {
	t.Parallel()
	codes := domainCodes(t)
	doc := loadDoc(t)

	var documented []string
	for _, v := range doc.Components.Schemas["ErrorCode"].Value.Enum {
		documented = append(documented, v.(string))
	}
	for _, code := range codes {
		status, ok := api.StatusForCode(code)
		if !ok || status < 400 || status > 599 {
			t.Errorf("code %s has no error status (got %d, %v)", code, status, ok)
		}
		if !slices.Contains(documented, string(code)) {
			t.Errorf("code %s is missing from the ErrorCode enum in openapi.json", code)
		}
	}
	if len(documented) != len(codes) {
		t.Errorf("openapi.json lists %d codes, domain defines %d", len(documented), len(codes))
	}

	// Spot checks against SPEC §8, so a wrong status is caught too.
	for code, want := range map[domain.Code]int{
		domain.CodeValidationFailed: 400, domain.CodeCaptureExceedsHold: 400, domain.CodeTwoFactorFailed: 401,
		domain.CodeInsufficientCredits: 402, domain.CodeEmailNotVerified: 403, domain.CodeHoldNotFound: 404,
		domain.CodeMethodNotAllowed: 405, domain.CodeRefreshInProgress: 409, domain.CodeConflict: 409,
		domain.CodePayloadTooLarge: 413, domain.CodeUnsupportedMediaType: 415, domain.CodeAccountLocked: 429,
		domain.CodeInternal: 500, domain.CodePaymentsNotConfigured: 503, domain.CodeReadModelLagging: 503,
		domain.CodeUnavailable: 503,
	} {
		if got, _ := api.StatusForCode(code); got != want {
			t.Errorf("%s → %d, SPEC says %d", code, got, want)
		}
	}
}
