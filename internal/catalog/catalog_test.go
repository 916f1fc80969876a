package catalog_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/catalog"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
	"github.com/manacore/mana/projections"
)

// wait bounds every test context.
const wait = time.Minute

type env struct {
	store *eventstore.Store
	svc   *catalog.Service
}

// newEnv returns a catalogue service on a fresh database, with the
// packages projection running on the PostgreSQL feed in this process.
func newEnv(t *testing.T) *env {
	t.Helper()
	pool := pgtest.NewPool(t)
	kek, idx := make([]byte, keyring.KeySize), make([]byte, keyring.KeySize)
	_, _ = rand.Read(kek)
	_, _ = rand.Read(idx)
	kr, err := keyring.New(kek, idx)
	if err != nil {
		t.Fatal(err)
	}
	store, err := eventstore.New(pool, eventstore.Options{Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	runner, err := projections.NewRunner(projections.Config{Store: store, Projections: []projections.Projection{projections.Packages()},
		Holder: "catalog-test", LeaseTTL: time.Second, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runner.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("runner: %v", err)
			}
		case <-time.After(wait):
			t.Errorf("runner did not stop within %v", wait)
		}
	})
	svc, err := catalog.New(catalog.Config{Store: store, Freshness: projections.NewFreshness(pool, runner, 10*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	return &env{store: store, svc: svc}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

func admin() domain.Caller {
	return domain.Caller{Kind: "admin", UserID: uuid.New(), Meta: domain.RequestMeta{RequestID: "req-test"}}
}

func ptr[T any](v T) *T { return &v }

// stream loads the events of package id.
func (e *env) stream(t *testing.T, id uuid.UUID) []eventstore.Decoded {
	t.Helper()
	var evs []eventstore.Decoded
	_, err := e.store.Execute(ctxT(t), eventstore.Command{Name: "test.load", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}},
		func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			var err error
			evs, _, err = tx.Load(ctx, domain.StreamPackage, id.String(), 0)
			return domain.Receipt{Status: 200}, err
		})
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func body(t *testing.T, r domain.Receipt) catalog.Package {
	t.Helper()
	var p catalog.Package
	if err := json.Unmarshal(r.Body, &p); err != nil {
		t.Fatalf("body %s: %v", r.Body, err)
	}
	return p
}

func wantCode(t *testing.T, what string, err error, code domain.Code, field string) {
	t.Helper()
	var de *domain.Error
	if !errors.As(err, &de) || de.Code != code {
		t.Errorf("%s: %v, want %s", what, err, code)
		return
	}
	if field != "" && (len(de.Details) != 1 || de.Details[0].Field != field) {
		t.Errorf("%s: details %+v, want the field %s", what, de.Details, field)
	}
}

func TestCreate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	adm := admin()
	r, err := e.svc.Create(ctxT(t), adm, catalog.NewPackage{Name: "  Mega  ", Credits: 10000, PriceCents: 9000, SortOrder: 5, Active: true}, "")
	if err != nil {
		t.Fatal(err)
	}
	p := body(t, r)
	if r.Status != 201 || r.Position == "" || r.Replayed {
		t.Errorf("receipt %+v", r)
	}
	want := catalog.Package{Package: domain.Package{ID: p.ID, Name: "Mega", Credits: 10000, PriceCents: 9000, Currency: "eur", SortOrder: 5}, Active: true}
	if p != want || p.ID.Version() != 7 {
		t.Errorf("created %+v, want %+v (a v7 id)", p, want)
	}
	evs := e.stream(t, p.ID)
	if len(evs) != 1 || evs[0].StreamVersion != 1 {
		t.Fatalf("stream %+v, want one event", evs)
	}
	ev, ok := evs[0].Event.(*domain.PackageCreated)
	if !ok || *ev != (domain.PackageCreated{PackageID: p.ID, Name: "Mega", Credits: 10000, PriceCents: 9000, Currency: "eur", SortOrder: 5, Active: true}) {
		t.Errorf("event %#v", evs[0].Event)
	}
	var meta domain.Metadata
	if err := json.Unmarshal(evs[0].Metadata, &meta); err != nil || meta.Actor != "admin:"+adm.UserID.String() || meta.RequestID != "req-test" {
		t.Errorf("metadata %s (%v)", evs[0].Metadata, err)
	}

	// The admin reads their own write at once; anyone else may wait with
	// the position.
	list, err := e.svc.Packages(ctxT(t), adm.UserID, "")
	if err != nil || !slices.Equal(list, []domain.Package{p.Package}) {
		t.Errorf("packages after the create: %+v, %v", list, err)
	}
	if list, err := e.svc.Packages(ctxT(t), uuid.Nil, r.Position); err != nil || len(list) != 1 {
		t.Errorf("packages at the create's position: %+v, %v", list, err)
	}
	if _, err := e.svc.Packages(ctxT(t), uuid.Nil, "nonsense"); err == nil {
		t.Error("a malformed minPosition was accepted")
	} else {
		wantCode(t, "malformed minPosition", err, domain.CodeValidationFailed, "minPosition")
	}

	// Inactive packages are created off sale: listed for admins only.
	r, err = e.svc.Create(ctxT(t), adm, catalog.NewPackage{Name: "Hidden", Credits: 1, PriceCents: 1, Currency: "eur"}, "")
	if err != nil {
		t.Fatal(err)
	}
	hidden := body(t, r)
	if hidden.Active || hidden.SortOrder != 0 {
		t.Errorf("inactive package %+v", hidden)
	}
	list, err = e.svc.Packages(ctxT(t), adm.UserID, "")
	if err != nil || len(list) != 1 || list[0].ID != p.ID {
		t.Errorf("packages on sale: %+v, %v", list, err)
	}
	all, err := e.svc.All(ctxT(t), adm.UserID, "")
	if err != nil || !slices.Equal(all, []catalog.Package{hidden, p}) {
		t.Errorf("all packages: %+v, %v; want hidden (order 0) then Mega", all, err)
	}
}

func TestCreateValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ok := catalog.NewPackage{Name: "Fine", Credits: 100, PriceCents: 100, SortOrder: 1, Active: true}
	for _, tc := range []struct {
		what  string
		mod   func(*catalog.NewPackage)
		field string
	}{
		{"empty name", func(p *catalog.NewPackage) { p.Name = "" }, "name"},
		{"blank name", func(p *catalog.NewPackage) { p.Name = " \t " }, "name"},
		{"long name", func(p *catalog.NewPackage) { p.Name = strings.Repeat("é", 101) }, "name"},
		{"control character", func(p *catalog.NewPackage) { p.Name = "a\nb" }, "name"},
		{"zero credits", func(p *catalog.NewPackage) { p.Credits = 0 }, "credits"},
		{"negative credits", func(p *catalog.NewPackage) { p.Credits = -5 }, "credits"},
		{"too many credits", func(p *catalog.NewPackage) { p.Credits = catalog.MaxCredits + 1 }, "credits"},
		{"zero price", func(p *catalog.NewPackage) { p.PriceCents = 0 }, "priceCents"},
		{"negative price", func(p *catalog.NewPackage) { p.PriceCents = -1 }, "priceCents"},
		{"price over Stripe's maximum", func(p *catalog.NewPackage) { p.PriceCents = catalog.MaxPriceCents + 1 }, "priceCents"},
		{"currency usd", func(p *catalog.NewPackage) { p.Currency = "usd" }, "currency"},
		{"currency EUR", func(p *catalog.NewPackage) { p.Currency = "EUR" }, "currency"},
		{"negative sort order", func(p *catalog.NewPackage) { p.SortOrder = -1 }, "sortOrder"},
	} {
		in := ok
		tc.mod(&in)
		_, err := e.svc.Create(ctxT(t), admin(), in, "")
		wantCode(t, tc.what, err, domain.CodeValidationFailed, tc.field)
	}
	// 100 characters is fine, and only that create recorded anything.
	adm := admin()
	in := ok
	in.Name = strings.Repeat("é", 100)
	if _, err := e.svc.Create(ctxT(t), adm, in, ""); err != nil {
		t.Errorf("a 100-character name: %v", err)
	}
	if all, err := e.svc.All(ctxT(t), adm.UserID, ""); err != nil || len(all) != 1 || all[0].Name != in.Name {
		t.Errorf("all after the rejected creates: %+v, %v", all, err)
	}
}

func TestCreateIdempotency(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	adm := admin()
	in := catalog.NewPackage{Name: "Once", Credits: 300, PriceCents: 250, SortOrder: 2, Active: true}
	first, err := e.svc.Create(ctxT(t), adm, in, "create-once")
	if err != nil {
		t.Fatal(err)
	}
	again, err := e.svc.Create(ctxT(t), adm, in, "create-once")
	if err != nil {
		t.Fatal(err)
	}
	if !again.Replayed || string(again.Body) != string(first.Body) || again.Position != first.Position || again.Status != 201 {
		t.Errorf("replay %+v of %+v", again, first)
	}
	in.PriceCents = 260
	_, err = e.svc.Create(ctxT(t), adm, in, "create-once")
	wantCode(t, "the key reused for another package", err, domain.CodeIdempotencyKeyReused, "")
	// Another admin's key is their own.
	if r, err := e.svc.Create(ctxT(t), admin(), in, "create-once"); err != nil || r.Replayed {
		t.Errorf("another admin's create: %+v, %v", r, err)
	}
	other, err := e.svc.Create(ctxT(t), adm, in, "create-twice")
	if err != nil {
		t.Fatal(err)
	}
	// The admin's own two creates are listed at once (the other admin's
	// may still be on its way, so only the admin's own ids are checked).
	all, err := e.svc.All(ctxT(t), adm.UserID, "")
	if err != nil {
		t.Fatal(err)
	}
	var ids []uuid.UUID
	for _, p := range all {
		ids = append(ids, p.ID)
	}
	for _, r := range []domain.Receipt{first, other} {
		if id := body(t, r).ID; !slices.Contains(ids, id) {
			t.Errorf("package %s is not listed: %v", id, ids)
		}
	}
}

func TestUpdate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	adm := admin()
	r, err := e.svc.Create(ctxT(t), adm, catalog.NewPackage{Name: "Basic", Credits: 500, PriceCents: 500, SortOrder: 2, Active: true}, "")
	if err != nil {
		t.Fatal(err)
	}
	p := body(t, r)

	// A new price: package.updated carries only the price.
	r, err = e.svc.Update(ctxT(t), adm, p.ID, catalog.Changes{PriceCents: ptr[int64](450), Credits: ptr[int64](500), Currency: ptr("eur")})
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != 200 || r.Position == "" {
		t.Errorf("receipt %+v", r)
	}
	p.PriceCents = 450
	if got := body(t, r); got != p {
		t.Errorf("after the price change %+v, want %+v", got, p)
	}
	evs := e.stream(t, p.ID)
	if len(evs) != 2 {
		t.Fatalf("stream has %d events", len(evs))
	}
	up, ok := evs[1].Event.(*domain.PackageUpdated)
	if !ok || up.PackageID != p.ID || up.PriceCents == nil || *up.PriceCents != 450 || up.Credits != nil || up.Name != nil || up.SortOrder != nil || up.Active != nil {
		t.Errorf("update event %#v", evs[1].Event)
	}
	list, err := e.svc.Packages(ctxT(t), adm.UserID, "")
	if err != nil || len(list) != 1 || list[0] != p.Package {
		t.Errorf("catalogue after the price change %+v, %v", list, err)
	}

	// Nothing differs: nothing recorded, no position.
	r, err = e.svc.Update(ctxT(t), adm, p.ID, catalog.Changes{Name: ptr(" Basic "), PriceCents: ptr[int64](450)})
	if err != nil || r.Position != "" || body(t, r) != p || len(e.stream(t, p.ID)) != 2 {
		t.Errorf("a no-op update: %+v, %v", r, err)
	}

	// Off sale, renamed and moved: gone from the catalogue, kept for admins.
	r, err = e.svc.Update(ctxT(t), adm, p.ID, catalog.Changes{Active: ptr(false), Name: ptr("Basic (old)"), SortOrder: ptr(9)})
	if err != nil {
		t.Fatal(err)
	}
	p.Active, p.Name, p.SortOrder = false, "Basic (old)", 9
	if got := body(t, r); got != p {
		t.Errorf("after deactivation %+v, want %+v", got, p)
	}
	if list, err := e.svc.Packages(ctxT(t), adm.UserID, ""); err != nil || len(list) != 0 {
		t.Errorf("catalogue after deactivation %+v, %v", list, err)
	}
	if all, err := e.svc.All(ctxT(t), adm.UserID, ""); err != nil || !slices.Equal(all, []catalog.Package{p}) {
		t.Errorf("all after deactivation %+v, %v", all, err)
	}
	// The fold of the stream is the answer.
	if got, ok := catalog.Fold(e.stream(t, p.ID)); !ok || got != p {
		t.Errorf("fold %+v, want %+v", got, p)
	}

	_, err = e.svc.Update(ctxT(t), adm, uuid.New(), catalog.Changes{Active: ptr(true)})
	wantCode(t, "an unknown package", err, domain.CodeNotFound, "")
	_, err = e.svc.Update(ctxT(t), adm, p.ID, catalog.Changes{})
	wantCode(t, "no changes", err, domain.CodeValidationFailed, "")
	for _, tc := range []struct {
		what  string
		ch    catalog.Changes
		field string
	}{
		{"blank name", catalog.Changes{Name: ptr("  ")}, "name"},
		{"zero credits", catalog.Changes{Credits: ptr[int64](0)}, "credits"},
		{"negative price", catalog.Changes{PriceCents: ptr[int64](-100)}, "priceCents"},
		{"currency usd", catalog.Changes{Currency: ptr("usd")}, "currency"},
		{"negative sort order", catalog.Changes{SortOrder: ptr(-3)}, "sortOrder"},
		{"a valid field with an invalid one", catalog.Changes{Active: ptr(true), PriceCents: ptr[int64](0)}, "priceCents"},
	} {
		_, err := e.svc.Update(ctxT(t), adm, p.ID, tc.ch)
		wantCode(t, tc.what, err, domain.CodeValidationFailed, tc.field)
	}
	if n := len(e.stream(t, p.ID)); n != 3 {
		t.Errorf("the stream has %d events after the rejected updates, want 3", n)
	}
}

// TestUpdateSeeded: the default packages, seeded as events by migrate,
// are managed like any other.
func TestUpdateSeeded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	seed := domain.DefaultPackages()
	for _, p := range seed {
		_, err := e.store.Execute(ctxT(t), eventstore.Command{Name: "packages.seed", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}},
			func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
				_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamPackage, StreamID: p.PackageID.String(), Events: []domain.Event{p}})
				return domain.Receipt{Status: 201}, err
			})
		if err != nil {
			t.Fatal(err)
		}
	}
	adm := admin()
	if _, err := e.svc.Update(ctxT(t), adm, seed[0].PackageID, catalog.Changes{Active: ptr(false)}); err != nil {
		t.Fatal(err)
	}
	list, err := e.svc.Packages(ctxT(t), adm.UserID, "")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range list {
		names = append(names, p.Name)
		if p.Currency != "eur" || p.Credits != p.PriceCents {
			t.Errorf("seeded package %+v", p)
		}
	}
	if want := []string{"Basic", "Plus", "Pro"}; !slices.Equal(names, want) {
		t.Errorf("catalogue %v, want %v", names, want)
	}
}

// TestConcurrentUpdates: updates of one package from many goroutines all
// land, each decided on the stream version it read (a conflict re-runs
// the decision), so the stream stays gapless and the last write wins.
func TestConcurrentUpdates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	adm := admin()
	r, err := e.svc.Create(ctxT(t), adm, catalog.NewPackage{Name: "Hot", Credits: 100, PriceCents: 100, Active: true}, "")
	if err != nil {
		t.Fatal(err)
	}
	id := body(t, r).ID
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			if _, err := e.svc.Update(ctxT(t), adm, id, catalog.Changes{PriceCents: ptr(int64(1000 + i))}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	evs := e.stream(t, id)
	if len(evs) != n+1 {
		t.Errorf("the stream has %d events, want %d", len(evs), n+1)
	}
	for i, ev := range evs {
		if ev.StreamVersion != int64(i+1) {
			t.Errorf("event %d has version %d", i, ev.StreamVersion)
		}
	}
	final, _ := catalog.Fold(evs)
	last := evs[len(evs)-1].Event.(*domain.PackageUpdated)
	if final.PriceCents != *last.PriceCents {
		t.Errorf("final price %d, last event %d", final.PriceCents, *last.PriceCents)
	}
	list, err := e.svc.Packages(ctxT(t), adm.UserID, "")
	if err != nil || len(list) != 1 || list[0].PriceCents != final.PriceCents {
		t.Errorf("catalogue %+v, %v; want price %d", list, err, final.PriceCents)
	}
}

func TestFold(t *testing.T) {
	t.Parallel()
	id := uuid.New()
	dec := func(evs ...domain.Event) []eventstore.Decoded {
		out := make([]eventstore.Decoded, len(evs))
		for i, ev := range evs {
			out[i] = eventstore.Decoded{Event: ev}
		}
		return out
	}
	if _, ok := catalog.Fold(nil); ok {
		t.Error("an empty stream folded to a package")
	}
	if _, ok := catalog.Fold(dec(&domain.PackageUpdated{PackageID: id, Name: ptr("x")})); ok {
		t.Error("an update alone folded to a package")
	}
	got, ok := catalog.Fold(dec(
		&domain.PackageCreated{PackageID: id, Name: "A", Credits: 1, PriceCents: 2, Currency: "eur", SortOrder: 3, Active: true},
		&domain.PackageUpdated{PackageID: id, Credits: ptr[int64](10)},
		&domain.PackageUpdated{PackageID: id, Active: ptr(false), SortOrder: ptr(0)},
	))
	want := catalog.Package{Package: domain.Package{ID: id, Name: "A", Credits: 10, PriceCents: 2, Currency: "eur", SortOrder: 0}, Active: false}
	if !ok || got != want {
		t.Errorf("fold %+v, want %+v", got, want)
	}
}
