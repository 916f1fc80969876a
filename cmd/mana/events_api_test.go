package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// The events API tests drive GET /api/v1/events (SPEC §4, docs/events.md)
// on a real `mana serve`: roles, NDJSON in feed order, cursor paging with
// X-Mana-Next-Cursor, the type filter and the limits, every line checked
// against the EventLine schema and its own hash, and the whole log against
// `mana events export`.

// eventLineSchema returns the OpenAPI document's EventLine schema.
func eventLineSchema(t *testing.T) *openapi3.Schema {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPISpec())
	if err != nil {
		t.Fatal(err)
	}
	ref := doc.Components.Schemas["EventLine"]
	if ref == nil || ref.Value == nil {
		t.Fatal("openapi.json has no EventLine schema")
	}
	return ref.Value
}

// eventsPage is one answer of GET /api/v1/events.
type eventsPage struct {
	next  string
	lines []eventstore.EventLine
}

// getEvents reads one page as h and checks the answer's form: NDJSON, each
// line an EventLine whose hash verifies, in feed order, the last one at
// X-Mana-Next-Cursor.
func getEvents(t *testing.T, s *authServer, schema *openapi3.Schema, query string, h http.Header) eventsPage {
	t.Helper()
	r := s.c.Do(http.MethodGet, "/api/v1/events"+query, nil, h)
	if r.Status != http.StatusOK {
		t.Fatalf("GET /api/v1/events%s = %d %s", query, r.Status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); ct != api.ContentTypeNDJSON {
		t.Errorf("Content-Type %q", ct)
	}
	p := eventsPage{next: r.Header.Get(api.HeaderNextCursor)}
	if len(r.Body) > 0 && !bytes.HasSuffix(r.Body, []byte("\n")) {
		t.Errorf("the body does not end with a newline")
	}
	sc := bufio.NewScanner(bytes.NewReader(r.Body))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var v any
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if err := schema.VisitJSON(v, openapi3.EnableJSONSchema2020(), openapi3.VisitAsResponse()); err != nil {
			t.Errorf("line %s does not match EventLine: %v", sc.Text(), err)
		}
		var l eventstore.EventLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		rec, err := l.Record()
		if err != nil {
			t.Fatal(err)
		}
		if h, err := eventstore.ComputeHash(&rec); err != nil || !bytes.Equal(h, rec.Hash) {
			t.Errorf("line %s: its hash does not verify (%v)", l.EventID, err)
		}
		if n := len(p.lines); n > 0 {
			prev, _ := eventstore.ParseCursor(p.lines[n-1].Cursor)
			if !prev.Less(rec.Cursor) {
				t.Errorf("line %d (%s) out of feed order after %s", n, l.Cursor, p.lines[n-1].Cursor)
			}
		}
		p.lines = append(p.lines, l)
	}
	if n := len(p.lines); n > 0 && p.next != p.lines[n-1].Cursor {
		t.Errorf("X-Mana-Next-Cursor %q, last line at %s", p.next, p.lines[n-1].Cursor)
	}
	return p
}

// getEventsUpTo repeats a read until its page reaches the cursor upTo: the
// feed shows an event only once every transaction that might precede it
// has ended, anywhere in the cluster (the test server is shared), so a
// committed event may take a moment to be readable.
func getEventsUpTo(t *testing.T, s *authServer, schema *openapi3.Schema, query string, h http.Header, upTo string) eventsPage {
	t.Helper()
	target, err := eventstore.ParseCursor(upTo)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(authWait)
	for {
		p := getEvents(t, s, schema, query, h)
		if n := len(p.lines); n > 0 {
			if last, _ := eventstore.ParseCursor(p.lines[n-1].Cursor); !last.Less(target) {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /api/v1/events%s did not reach %s within %v", query, upTo, authWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pageAll follows X-Mana-Next-Cursor from the start with limit and types
// until an empty page, and returns every line.
func pageAll(t *testing.T, s *authServer, schema *openapi3.Schema, h http.Header, limit, types string) (all []eventstore.EventLine, pages int) {
	t.Helper()
	after := ""
	for {
		q := url.Values{"limit": {limit}}
		if after != "" {
			q.Set("after", after)
		}
		if types != "" {
			q.Set("types", types)
		}
		p := getEvents(t, s, schema, "?"+q.Encode(), h)
		if len(p.lines) == 0 {
			want := after
			if want == "" {
				want = "0-0"
			}
			if p.next != want {
				t.Errorf("an empty page after %q answered X-Mana-Next-Cursor %q", after, p.next)
			}
			return all, pages
		}
		pages++
		all = append(all, p.lines...)
		after = p.next
		if pages > 1000 {
			t.Fatal("paging does not end")
		}
	}
}

// prefix returns the first n lines, failing the test when there are fewer.
func prefix(t *testing.T, lines []eventstore.EventLine, n int) []eventstore.EventLine {
	t.Helper()
	if len(lines) < n {
		t.Fatalf("%d lines, want at least %d", len(lines), n)
	}
	return lines[:n]
}

func sameLines(t *testing.T, what string, got, want []eventstore.EventLine) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d lines, want %d", what, len(got), len(want))
	}
	for i := range got {
		g, _ := json.Marshal(got[i])
		w, _ := json.Marshal(want[i])
		if !bytes.Equal(g, w) {
			t.Fatalf("%s: line %d\n got %s\nwant %s", what, i, g, w)
		}
	}
}

func TestEventsOverHTTP(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil)
	schema := eventLineSchema(t)

	// Some history: the seeded packages, three registrations and their
	// logins, two role changes and a spend.
	u := newCreditUser(t, s, "events-user")
	use(t, s, u, 3, "chat", "an event")
	adm := newAdmin(t, s)
	aud := newCreditUser(t, s, "events-auditor")
	if r := runCmd(t, s.vars, "admin", "set-role", aud.email, "auditor"); r.code != 0 {
		t.Fatalf("admin set-role auditor: %d %s", r.code, r.stderr)
	}
	aud.token = s.login(t, aud.email, aud.password, "").AccessToken

	// Only admins and auditors read the log.
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/events", nil), http.StatusUnauthorized, "UNAUTHORIZED")
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/events", nil, u.auth()), http.StatusForbidden, "FORBIDDEN")
	// The auditor role opens this endpoint only, not the admin ones.
	wantAuthError(t, s.c.Do(http.MethodGet, "/api/v1/admin/packages", nil, aud.auth()), http.StatusForbidden, "FORBIDDEN")

	// The whole log, one page: feed order, every line as export prints it.
	// (An export includes every event committed before it started.)
	exported := authExport(t, s.vars)
	if len(exported) < 10 {
		t.Fatalf("only %d events", len(exported))
	}
	full := getEventsUpTo(t, s, schema, "", adm.auth(), exported[len(exported)-1].Cursor)
	sameLines(t, "the log against export", full.lines, authExport(t, s.vars, "--to", full.next))
	types := map[string]bool{}
	for _, l := range full.lines {
		types[l.EventType] = true
	}
	for _, typ := range []string{"package.created", "user.registered", "credit.spent", "user.role_changed"} {
		if !types[typ] {
			t.Errorf("the log has no %s: %v", typ, types)
		}
	}
	for _, l := range full.lines {
		if strings.Contains(string(l.Payload), u.email) {
			t.Fatalf("a personal field is in the clear: %s", l.Payload)
		}
	}

	// Pages of 3 cover the log exactly once, for the auditor too.
	paged, pages := pageAll(t, s, schema, aud.auth(), "3", "")
	sameLines(t, "pages of 3", prefix(t, paged, len(full.lines)), full.lines)
	if pages < len(full.lines)/3 {
		t.Errorf("%d events came in %d pages of 3", len(full.lines), pages)
	}
	seen := map[string]bool{}
	for _, l := range paged {
		if seen[l.EventID.String()] {
			t.Errorf("event %s came twice", l.EventID)
		}
		seen[l.EventID.String()] = true
	}
	// Resuming after any cursor gives the rest.
	mid := full.lines[4].Cursor
	rest := getEvents(t, s, schema, "?after="+mid, adm.auth())
	sameLines(t, "after the fifth event", prefix(t, rest.lines, len(full.lines)-5), full.lines[5:])

	// The type filter, as one list or repeated; paging works on it too.
	filtered := getEvents(t, s, schema, "?types=user.registered,package.created", adm.auth())
	want := authExport(t, s.vars, "--to", full.next, "--types", "user.registered,package.created")
	sameLines(t, "types filter", prefix(t, filtered.lines, len(want)), want)
	repeated := getEvents(t, s, schema, "?types=user.registered&types=package.created", adm.auth())
	sameLines(t, "repeated types", prefix(t, repeated.lines, len(want)), want)
	pagedTypes, _ := pageAll(t, s, schema, adm.auth(), "2", "user.registered,package.created")
	sameLines(t, "filtered pages of 2", prefix(t, pagedTypes, len(want)), want)
	if len(want) != 4+3 {
		t.Errorf("%d packages and registrations, want 7", len(want))
	}

	// The limit.
	one := getEvents(t, s, schema, "?limit=1", adm.auth())
	if len(one.lines) != 1 || one.next != full.lines[0].Cursor {
		t.Errorf("limit=1: %d lines, next %q", len(one.lines), one.next)
	}
	if max := getEvents(t, s, schema, "?limit=10000", adm.auth()); len(max.lines) < len(full.lines) {
		t.Errorf("limit=10000: %d lines", len(max.lines))
	}

	// Bad parameters are 400 before anything streams.
	for _, q := range []string{"?limit=0", "?limit=10001", "?limit=-1", "?limit=ten", "?after=yesterday", "?after=1-2-3",
		"?after=99999999999999999999-1", "?types=no.such_type", "?types=credit.spent,bogus"} {
		r := s.c.Do(http.MethodGet, "/api/v1/events"+q, nil, adm.auth())
		env := wantAuthError(t, r, http.StatusBadRequest, "VALIDATION_FAILED")
		if len(env.Details) == 0 {
			t.Errorf("%s: no details in %s", q, r.Body)
		}
	}

	// A page's end is fixed when it is chosen: events appended while a
	// client pages show up on a later page, never twice or out of order.
	head := full.next
	_, r := use(t, s, u, 1, "chat", "later")
	later := getEventsUpTo(t, s, schema, "?after="+head, adm.auth(), r.Header.Get("X-Mana-Position"))
	if got := later.lines[len(later.lines)-1]; got.EventType != "credit.spent" || got.Cursor != r.Header.Get("X-Mana-Position") {
		t.Errorf("the spend after %s is not on the next page: %+v", head, later.lines)
	}
}

// TestEventsPortReadsInPieces checks the store adapter on its own: a page
// larger than one read comes out whole, in order, once; a type filter
// holds across pieces.
func TestEventsPortReadsInPieces(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil)
	for _, p := range []string{"piece-a", "piece-b", "piece-c"} {
		newCreditUser(t, s, p)
	}
	full := authExport(t, s.vars)
	ctx := t.Context()
	pool, err := pg.Open(ctx, s.vars["DATABASE_URL"], 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := eventstore.New(pool, eventstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := eventLogAPI{store: store, piece: 2}
	read := func(after, end string, types []string) []eventstore.EventLine {
		t.Helper()
		var got []eventstore.EventLine
		if err := l.Lines(ctx, after, end, types, func(b []byte) error {
			var e eventstore.EventLine
			if err := json.Unmarshal(b, &e); err != nil {
				return err
			}
			got = append(got, e)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	end, n, err := l.Page(ctx, "", nil, len(full))
	if err != nil || n != len(full) || end != full[len(full)-1].Cursor {
		t.Fatalf("Page = %s %d %v, want %s %d", end, n, err, full[len(full)-1].Cursor, len(full))
	}
	sameLines(t, "one page read 2 at a time", read("", end, nil), full)

	// Three registrations: three user.registered, read one at a time.
	types := []string{"user.registered"}
	end, n, err = l.Page(ctx, "0", types, 100)
	if err != nil || n != 3 {
		t.Fatalf("Page(user.registered) = %s %d %v", end, n, err)
	}
	got := read("0", end, types)
	sameLines(t, "user.registered", got, authExport(t, s.vars, "--types", "user.registered"))

	// An empty page names the cursor it was asked for.
	if end, n, err := l.Page(ctx, full[len(full)-1].Cursor, nil, 10); err != nil || n != 0 || end != full[len(full)-1].Cursor {
		t.Errorf("empty Page = %s %d %v", end, n, err)
	}
	if end, n, err := l.Page(ctx, "", nil, 0); err != nil || n != 0 || end != "0-0" {
		t.Errorf("Page with limit 0 = %s %d %v", end, n, err)
	}
	if _, _, err := l.Page(ctx, "99999999999999999999-1", nil, 1); domain.ErrorCode(err) != domain.CodeValidationFailed {
		t.Errorf("an overflowing cursor: %v", err)
	}
}
