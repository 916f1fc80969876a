package projections_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/projections"
)

// packageRows returns every row of the live packages table, rendered as
// text, by id.
func (e *env) packageRows(t *testing.T) []string {
	t.Helper()
	rows, err := e.pool.Query(ctxT(t), `SELECT format('%L', p) FROM packages p ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// TestPackagesProjectionUpdates: package.updated replaces the fields it
// carries and keeps the others; updated_at is the event's time, created_at
// stays. The catalogue follows (a deactivated package leaves it, a new sort
// order moves a package), the admin list keeps every package, and a
// rebuild from the log yields identical rows.
func TestPackagesProjectionUpdates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b, c := newPackage("a", 1), newPackage("b", 2), newPackage("c", 3)
	var created = map[uuid.UUID]eventstore.Record{}
	for _, p := range []*domain.PackageCreated{a, b, c} {
		recs, err := e.appendEvents(ctxT(t), domain.StreamPackage, p.PackageID.String(), p)
		if err != nil {
			t.Fatal(err)
		}
		created[p.PackageID] = recs[0]
	}
	updates := []*domain.PackageUpdated{
		{PackageID: a.PackageID, PriceCents: ptr[int64](150)},
		{PackageID: b.PackageID, Active: ptr(false)},
		{PackageID: c.PackageID, SortOrder: ptr(0), Name: ptr("c first")},
		{PackageID: a.PackageID, Credits: ptr[int64](120)},
		// An update of a package that has no row changes nothing.
		{PackageID: uuid.New(), Name: ptr("ghost")},
	}
	last := map[uuid.UUID]eventstore.Record{}
	for _, u := range updates {
		recs, err := e.appendEvents(ctxT(t), domain.StreamPackage, u.PackageID.String(), u)
		if err != nil {
			t.Fatal(err)
		}
		last[u.PackageID] = recs[0]
	}
	r, _ := e.newRunner(t, "node-a", []projections.Projection{projections.Packages()}, nil)
	start(t, r)
	feed := e.feed(t, 3+len(updates))
	e.waitApplied(t, "packages", feed[len(feed)-1].Cursor)

	active, err := projections.ActivePackages(ctxT(t), e.pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(active) != 2 || active[0].ID != c.PackageID || active[1].ID != a.PackageID {
		t.Fatalf("catalogue %+v, want c then a", active)
	}
	gotC, gotA := active[0], active[1]
	if gotC.Name != "c first" || gotC.SortOrder != 0 || gotC.Credits != c.Credits || gotC.PriceCents != c.PriceCents || !gotC.Active {
		t.Errorf("c after its update: %+v", gotC)
	}
	if gotA.Name != "a" || gotA.Credits != 120 || gotA.PriceCents != 150 || gotA.SortOrder != 1 || gotA.Currency != "eur" {
		t.Errorf("a after two updates: %+v", gotA)
	}
	if !gotA.CreatedAt.Equal(created[a.PackageID].OccurredAt) || !gotA.UpdatedAt.Equal(last[a.PackageID].OccurredAt) {
		t.Errorf("a's times %v %v, want %v %v", gotA.CreatedAt, gotA.UpdatedAt, created[a.PackageID].OccurredAt, last[a.PackageID].OccurredAt)
	}

	all, err := projections.AllPackages(ctxT(t), e.pool)
	if err != nil {
		t.Fatal(err)
	}
	var ids []uuid.UUID
	for _, p := range all {
		ids = append(ids, p.ID)
	}
	if want := []uuid.UUID{c.PackageID, a.PackageID, b.PackageID}; !slices.Equal(ids, want) {
		t.Fatalf("all packages %v, want %v", ids, want)
	}
	if gotB := all[2]; gotB.Active || gotB.Name != "b" || gotB.PriceCents != b.PriceCents {
		t.Errorf("b after deactivation: %+v", gotB)
	}

	live := e.packageRows(t)
	if len(live) != 3 {
		t.Fatalf("packages has %d rows, want 3:\n%s", len(live), strings.Join(live, "\n"))
	}
	cur, err := projections.Rebuild(ctxT(t), e.store, projections.Packages(), "rebuilder")
	if err != nil {
		t.Fatal(err)
	}
	if cur != feed[len(feed)-1].Cursor {
		t.Errorf("rebuilt to %s, want %s", cur, feed[len(feed)-1].Cursor)
	}
	if got := e.packageRows(t); !slices.Equal(got, live) {
		t.Errorf("rebuilt packages:\n%s\nlive:\n%s", strings.Join(got, "\n"), strings.Join(live, "\n"))
	}
}

// TestPackagesProjectionHandlesBothTypes: the runner passes the projection
// package.created and package.updated.
func TestPackagesProjectionHandlesBothTypes(t *testing.T) {
	t.Parallel()
	if got, want := projections.Packages().EventTypes(), []string{"package.created", "package.updated"}; !slices.Equal(got, want) {
		t.Errorf("event types %v, want %v", got, want)
	}
}
