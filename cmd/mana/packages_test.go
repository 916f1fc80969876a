package main

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
)

// The package tests drive the catalogue of SPEC §6 on a real `mana serve`:
// the seeded packages, the admin endpoints and `mana admin packages`.

// adminPackage is a package as the admin endpoints answer it.
type adminPackage struct {
	ID         uuid.UUID `json:"id"`
	Name       string    `json:"name"`
	Credits    int64     `json:"credits"`
	PriceCents int64     `json:"priceCents"`
	Currency   string    `json:"currency"`
	SortOrder  int       `json:"sortOrder"`
	Active     bool      `json:"active"`
	Replayed   bool      `json:"replayed"`
}

// wire returns p as GET /credits/packages shows it, decoded into a map.
func wire(p adminPackage) map[string]any {
	return map[string]any{"id": p.ID.String(), "name": p.Name, "credits": float64(p.Credits), "priceCents": float64(p.PriceCents),
		"currency": p.Currency, "sortOrder": float64(p.SortOrder)}
}

// seeded returns the default packages as the admin endpoints show them.
func seeded() []adminPackage {
	var out []adminPackage
	for _, p := range domain.DefaultPackages() {
		out = append(out, adminPackage{ID: p.PackageID, Name: p.Name, Credits: p.Credits, PriceCents: p.PriceCents,
			Currency: p.Currency, SortOrder: p.SortOrder, Active: p.Active})
	}
	return out
}

// catalogue reads GET /credits/packages (plus query) as u and returns the
// raw array.
func catalogue(t *testing.T, s *authServer, u creditUser, query string) []map[string]any {
	t.Helper()
	r := s.c.Do(http.MethodGet, "/api/v1/credits/packages"+query, nil, u.auth())
	if r.Status != http.StatusOK {
		t.Fatalf("GET /credits/packages%s = %d %s", query, r.Status, r.Body)
	}
	if !strings.HasPrefix(strings.TrimSpace(string(r.Body)), "[") {
		t.Fatalf("GET /credits/packages is not a plain array: %s", r.Body)
	}
	var list []map[string]any
	r.JSON(t, &list)
	return list
}

func wantCatalogue(t *testing.T, what string, got []map[string]any, want ...adminPackage) {
	t.Helper()
	exp := []map[string]any{}
	for _, p := range want {
		exp = append(exp, wire(p))
	}
	if got == nil {
		got = []map[string]any{}
	}
	if !reflect.DeepEqual(got, exp) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(exp)
		t.Errorf("%s:\n got %s\nwant %s", what, g, w)
	}
}

func getAdminPackages(t *testing.T, s *authServer, adm creditUser) []adminPackage {
	t.Helper()
	r := s.c.Do(http.MethodGet, "/api/v1/admin/packages", nil, adm.auth())
	if r.Status != http.StatusOK {
		t.Fatalf("GET /admin/packages = %d %s", r.Status, r.Body)
	}
	var list []adminPackage
	r.JSON(t, &list)
	return list
}

// newAdmin registers a user, makes them an admin and logs them in again.
func newAdmin(t *testing.T, s *authServer) creditUser {
	t.Helper()
	adm := newCreditUser(t, s, "pkgadmin")
	if r := runCmd(t, s.vars, "admin", "set-role", adm.email, "admin"); r.code != 0 {
		t.Fatalf("admin set-role: %d %s", r.code, r.stderr)
	}
	adm.token = s.login(t, adm.email, adm.password, "").AccessToken
	return adm
}

// waitSeeded waits until the packages read model lists the four seeded
// packages: serve seeds them before it listens, but the projection applies
// them in the background.
func waitSeeded(t *testing.T, s *authServer, u creditUser) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(authWait)
	for {
		list := catalogue(t, s, u, "")
		if len(list) >= 4 || time.Now().After(deadline) {
			return list
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPackagesOverHTTP(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil)
	u := newCreditUser(t, s, "buyer")
	seed := seeded()

	// A fresh server offers the four seeded packages, cheapest first, in
	// exactly the shape of SPEC §6.
	wantCatalogue(t, "the seeded catalogue", waitSeeded(t, s, u), seed...)
	if seed[0].Name != "Starter" || seed[0].Credits != 100 || seed[0].PriceCents != 100 || seed[3].Credits != 5000 || seed[3].PriceCents != 5000 {
		t.Errorf("default packages %+v", seed)
	}
	r := s.c.Do(http.MethodGet, "/api/v1/credits/packages", nil)
	wantAuthError(t, r, http.StatusUnauthorized, "UNAUTHORIZED")
	r = s.c.Do(http.MethodGet, "/api/v1/credits/packages?minPosition=yesterday", nil, u.auth())
	wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")

	// The admin endpoints are for admins only.
	someID := seed[1].ID.String()
	for _, tc := range []struct {
		method, path string
		body         any
	}{
		{http.MethodGet, "/api/v1/admin/packages", nil},
		{http.MethodPost, "/api/v1/admin/packages", map[string]any{"name": "Nope", "credits": 1, "priceCents": 1}},
		{http.MethodPatch, "/api/v1/admin/packages/" + someID, map[string]any{"priceCents": 1}},
	} {
		r := s.c.Do(tc.method, tc.path, tc.body, u.auth())
		wantAuthError(t, r, http.StatusForbidden, "FORBIDDEN")
		r = s.c.Do(tc.method, tc.path, tc.body)
		wantAuthError(t, r, http.StatusUnauthorized, "UNAUTHORIZED")
	}

	adm := newAdmin(t, s)
	if got := getAdminPackages(t, s, adm); !reflect.DeepEqual(got, seed) {
		t.Errorf("GET /admin/packages = %+v, want %+v", got, seed)
	}

	// Create, idempotently.
	create := map[string]any{"name": " Mega ", "credits": 10000, "priceCents": 8000, "sortOrder": 5}
	r = s.c.Do(http.MethodPost, "/api/v1/admin/packages", create, adm.auth(), idemKey("mega-1"))
	if r.Status != http.StatusCreated {
		t.Fatalf("POST /admin/packages = %d %s", r.Status, r.Body)
	}
	wantPosition(t, r)
	var mega adminPackage
	r.JSON(t, &mega)
	if mega.ID == uuid.Nil || mega.Name != "Mega" || mega.Credits != 10000 || mega.PriceCents != 8000 || mega.Currency != "eur" ||
		mega.SortOrder != 5 || !mega.Active || mega.Replayed {
		t.Errorf("created %+v", mega)
	}
	r = s.c.Do(http.MethodPost, "/api/v1/admin/packages", create, adm.auth(), idemKey("mega-1"))
	var again adminPackage
	r.JSON(t, &again)
	if r.Status != http.StatusCreated || r.Header.Get("Idempotent-Replayed") != "true" || !again.Replayed || again.ID != mega.ID {
		t.Errorf("replayed create = %d %s", r.Status, r.Body)
	}
	r = s.c.Do(http.MethodPost, "/api/v1/admin/packages", map[string]any{"name": "Mega", "credits": 10000, "priceCents": 7000}, adm.auth(), idemKey("mega-1"))
	wantAuthError(t, r, http.StatusConflict, "IDEMPOTENCY_KEY_REUSED")

	// A new price for Basic, Starter off sale.
	basic, starter := seed[1], seed[0]
	r = s.c.Do(http.MethodPatch, "/api/v1/admin/packages/"+basic.ID.String(), map[string]any{"priceCents": 450}, adm.auth())
	if r.Status != http.StatusOK {
		t.Fatalf("PATCH Basic = %d %s", r.Status, r.Body)
	}
	wantPosition(t, r)
	basic.PriceCents = 450
	var got adminPackage
	r.JSON(t, &got)
	if got != basic {
		t.Errorf("PATCH Basic = %+v, want %+v", got, basic)
	}
	r = s.c.Do(http.MethodPatch, "/api/v1/admin/packages/"+starter.ID.String(), map[string]any{"active": false}, adm.auth())
	if r.Status != http.StatusOK {
		t.Fatalf("PATCH Starter = %d %s", r.Status, r.Body)
	}
	last := wantPosition(t, r)
	starter.Active = false
	got = adminPackage{}
	r.JSON(t, &got)
	if got != starter {
		t.Errorf("PATCH Starter = %+v, want %+v", got, starter)
	}
	// Nothing to change: 200, nothing recorded, no position.
	r = s.c.Do(http.MethodPatch, "/api/v1/admin/packages/"+starter.ID.String(), map[string]any{"active": false, "currency": "eur"}, adm.auth())
	if r.Status != http.StatusOK || r.Header.Get("X-Mana-Position") != "" {
		t.Errorf("no-op PATCH = %d %s (position %q)", r.Status, r.Body, r.Header.Get("X-Mana-Position"))
	}

	// The admin sees their own changes at once; a user with the position.
	mega.Replayed = false
	wantCatalogue(t, "the admin's catalogue after the changes", catalogue(t, s, adm, ""), basic, seed[2], seed[3], mega)
	wantCatalogue(t, "the user's catalogue at the last position", catalogue(t, s, u, "?minPosition="+last), basic, seed[2], seed[3], mega)
	if got, want := getAdminPackages(t, s, adm), []adminPackage{starter, basic, seed[2], seed[3], mega}; !reflect.DeepEqual(got, want) {
		t.Errorf("GET /admin/packages = %+v, want %+v", got, want)
	}

	// Validation.
	for _, tc := range []struct {
		what string
		body any
	}{
		{"no name", map[string]any{"credits": 1, "priceCents": 1}},
		{"a blank name", map[string]any{"name": "  ", "credits": 1, "priceCents": 1}},
		{"a long name", map[string]any{"name": strings.Repeat("x", 101), "credits": 1, "priceCents": 1}},
		{"zero credits", map[string]any{"name": "Zero", "credits": 0, "priceCents": 1}},
		{"no price", map[string]any{"name": "Free", "credits": 1}},
		{"a negative price", map[string]any{"name": "Neg", "credits": 1, "priceCents": -1}},
		{"credits as a string", map[string]any{"name": "Str", "credits": "1", "priceCents": 1}},
		{"usd", map[string]any{"name": "Dollar", "credits": 1, "priceCents": 1, "currency": "usd"}},
		{"an unknown field", map[string]any{"name": "Odd", "credits": 1, "priceCents": 1, "discount": 5}},
		{"a negative sort order", map[string]any{"name": "Neg", "credits": 1, "priceCents": 1, "sortOrder": -1}},
	} {
		r := s.c.Do(http.MethodPost, "/api/v1/admin/packages", tc.body, adm.auth())
		if r.Status != http.StatusBadRequest {
			t.Errorf("POST with %s = %d %s", tc.what, r.Status, r.Body)
		}
		wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	}
	for _, tc := range []struct {
		what string
		body any
	}{
		{"an empty body", map[string]any{}},
		{"a zero price", map[string]any{"priceCents": 0}},
		{"negative credits", map[string]any{"credits": -10}},
		{"an empty name", map[string]any{"name": ""}},
		{"usd", map[string]any{"currency": "usd"}},
		{"active as a string", map[string]any{"active": "no"}},
		{"an unknown field", map[string]any{"id": uuid.New()}},
	} {
		r := s.c.Do(http.MethodPatch, "/api/v1/admin/packages/"+basic.ID.String(), tc.body, adm.auth())
		if r.Status != http.StatusBadRequest {
			t.Errorf("PATCH with %s = %d %s", tc.what, r.Status, r.Body)
		}
		wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
	}
	r = s.c.Do(http.MethodPatch, "/api/v1/admin/packages/"+uuid.NewString(), map[string]any{"active": true}, adm.auth())
	wantAuthError(t, r, http.StatusNotFound, "NOT_FOUND")
	r = s.c.Do(http.MethodPatch, "/api/v1/admin/packages/not-a-uuid", map[string]any{"active": true}, adm.auth())
	wantAuthError(t, r, http.StatusNotFound, "NOT_FOUND")
	r = s.c.Do(http.MethodPost, "/api/v1/admin/packages", "name=x", adm.auth(), http.Header{"Content-Type": {"text/plain"}})
	wantAuthError(t, r, http.StatusUnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE")

	// None of the rejected requests changed the catalogue.
	if got, want := getAdminPackages(t, s, adm), []adminPackage{starter, basic, seed[2], seed[3], mega}; !reflect.DeepEqual(got, want) {
		t.Errorf("GET /admin/packages after the rejected requests = %+v, want %+v", got, want)
	}
	if n := countEvents(t, s.vars["DATABASE_URL"], "package.created"); n != 5 {
		t.Errorf("%d package.created events, want 5", n)
	}
	if n := countEvents(t, s.vars["DATABASE_URL"], "package.updated"); n != 2 {
		t.Errorf("%d package.updated events, want 2", n)
	}
}

// parseWrite splits the output of `admin packages create|update`: the
// package, and the position when the command recorded anything.
func parseWrite(t *testing.T, out string) (adminPackage, string) {
	t.Helper()
	ls := lines(out)
	if len(ls) == 0 {
		t.Fatalf("no output")
	}
	var p adminPackage
	if err := json.Unmarshal([]byte(ls[0]), &p); err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	pos := ""
	if len(ls) > 1 {
		var ok bool
		pos, ok = strings.CutPrefix(ls[1], "position: ")
		if !ok || !positionPattern.MatchString(pos) {
			t.Fatalf("output %q has no position line", out)
		}
	}
	return p, pos
}

// listed returns the fields of the line of package id in the output of
// `admin packages list`, nil when it is not listed.
func listed(t *testing.T, out string, id uuid.UUID) []string {
	t.Helper()
	ls := lines(out)
	if len(ls) == 0 || strings.Join(strings.Fields(ls[0]), " ") != "ID NAME CREDITS PRICE_CENTS CURRENCY SORT_ORDER ACTIVE" {
		t.Fatalf("list output has no header:\n%s", out)
	}
	for _, l := range ls[1:] {
		if f := strings.Fields(l); len(f) > 0 && f[0] == id.String() {
			return f
		}
	}
	return nil
}

func TestPackagesCLI(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil)
	u := newCreditUser(t, s, "clibuyer")
	waitSeeded(t, s, u)

	r := runCmd(t, s.vars, "admin", "packages", "create", "Team", "--credits", "20000", "--price-cents", "18000", "--sort-order", "7")
	if r.code != 0 {
		t.Fatalf("admin packages create: %d %s", r.code, r.stderr)
	}
	team, pos := parseWrite(t, r.stdout)
	if team.Name != "Team" || team.Credits != 20000 || team.PriceCents != 18000 || team.Currency != "eur" || team.SortOrder != 7 || !team.Active || pos == "" {
		t.Errorf("created %+v at %q", team, pos)
	}
	r = runCmd(t, s.vars, "admin", "packages", "list", "--min-position", pos)
	if r.code != 0 {
		t.Fatalf("admin packages list: %d %s", r.code, r.stderr)
	}
	if f := listed(t, r.stdout, team.ID); strings.Join(f, " ") != team.ID.String()+" Team 20000 18000 eur 7 true" {
		t.Errorf("Team is listed as %q:\n%s", f, r.stdout)
	}
	for _, p := range seeded() {
		if listed(t, r.stdout, p.ID) == nil {
			t.Errorf("seeded %s is not listed:\n%s", p.Name, r.stdout)
		}
	}

	r = runCmd(t, s.vars, "admin", "packages", "update", team.ID.String(), "--price-cents", "17000", "--active=false")
	if r.code != 0 {
		t.Fatalf("admin packages update: %d %s", r.code, r.stderr)
	}
	updated, pos := parseWrite(t, r.stdout)
	team.PriceCents, team.Active = 17000, false
	if updated != team || pos == "" {
		t.Errorf("updated %+v at %q, want %+v", updated, pos, team)
	}
	r = runCmd(t, s.vars, "admin", "packages", "list", "--min-position", pos)
	if f := listed(t, r.stdout, team.ID); r.code != 0 || strings.Join(f, " ") != team.ID.String()+" Team 20000 17000 eur 7 false" {
		t.Errorf("Team after the update is listed as %q (%d %s)", f, r.code, r.stderr)
	}
	// Off sale: the HTTP catalogue at that position no longer offers it.
	for _, p := range catalogue(t, s, u, "?minPosition="+pos) {
		if p["id"] == team.ID.String() {
			t.Errorf("the deactivated package is still on sale: %v", p)
		}
	}
	// Back on sale, renamed.
	r = runCmd(t, s.vars, "admin", "packages", "update", team.ID.String(), "--active", "--name", "Team Plus")
	if r.code != 0 {
		t.Fatalf("admin packages update: %d %s", r.code, r.stderr)
	}
	updated, pos = parseWrite(t, r.stdout)
	team.Active, team.Name = true, "Team Plus"
	if updated != team {
		t.Errorf("updated %+v, want %+v", updated, team)
	}
	wantCatalogue(t, "the catalogue after the CLI's changes", catalogue(t, s, u, "?minPosition="+pos), append(seeded(), team)...)
	// The same values again record nothing.
	r = runCmd(t, s.vars, "admin", "packages", "update", team.ID.String(), "--active=true")
	if _, pos := parseWrite(t, r.stdout); r.code != 0 || pos != "" {
		t.Errorf("a no-op update: %d %q %s", r.code, r.stdout, r.stderr)
	}

	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"create", "NoCredits", "--price-cents", "100"}, 1, "VALIDATION_FAILED"},
		{[]string{"create", "Dear", "--credits", "1", "--price-cents", "0"}, 1, "priceCents"},
		{[]string{"create", "--credits", "1", "--price-cents", "1"}, 2, "NAME"},
		{[]string{"update", "not-a-uuid", "--credits", "5"}, 2, "UUID"},
		{[]string{"update", uuid.NewString(), "--credits", "5"}, 1, "NOT_FOUND"},
		{[]string{"update", team.ID.String()}, 1, "VALIDATION_FAILED"},
		{[]string{"rename"}, 2, "want list, create or update"},
		{nil, 2, "want list, create or update"},
	} {
		r := runCmd(t, s.vars, append([]string{"admin", "packages"}, tc.args...)...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
			t.Errorf("admin packages %q = %d %q, want %d and %q", tc.args, r.code, r.stderr, tc.code, tc.stderr)
		}
	}
	for _, args := range [][]string{{"--help"}, {"create", "--help"}, {"update", "--help"}, {"list", "--help"}} {
		r := runCmd(t, s.vars, append([]string{"admin", "packages"}, args...)...)
		if r.code != 0 || !strings.Contains(r.stdout, "admin packages") {
			t.Errorf("admin packages %q = %d %q", args, r.code, r.stdout)
		}
	}
}
