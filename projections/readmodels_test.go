package projections_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/projections"
)

// TestUsersProjection: user.registered inserts a row with the decrypted
// email and name; user.erased deletes it.
func TestUsersProjection(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r, _ := e.newRunner(t, "node-a", []projections.Projection{projections.Users()}, nil)
	start(t, r)

	id, recs := e.register(t, "Ada@Example.org", "Ada Lovelace")
	other, _ := e.register(t, "grace@example.org", "Grace Hopper")
	if !strings.Contains(string(recs[0].Payload), "pii:v1:") {
		t.Fatalf("the stored payload is not encrypted: %s", recs[0].Payload)
	}
	feed := e.feed(t, 2)
	e.waitApplied(t, "users", feed[len(feed)-1].Cursor)
	var (
		email, name, role string
		created, updated  time.Time
	)
	if err := e.pool.QueryRow(ctxT(t), `SELECT email, name, role, created_at, updated_at FROM users WHERE id = $1`, id).
		Scan(&email, &name, &role, &created, &updated); err != nil {
		t.Fatal(err)
	}
	if email != "Ada@Example.org" || name != "Ada Lovelace" || role != "user" {
		t.Errorf("row: %q %q %q", email, name, role)
	}
	if !created.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) || !updated.Equal(recs[0].OccurredAt) {
		t.Errorf("times %v %v: want the event's", created, updated)
	}

	e.erase(t, id)
	feed = e.feed(t, 3)
	e.waitApplied(t, "users", feed[len(feed)-1].Cursor)
	if n := e.count(t, `SELECT count(*) FROM users WHERE id = $1`, id); n != 0 {
		t.Errorf("erased user still has %d rows", n)
	}
	if n := e.count(t, `SELECT count(*) FROM users WHERE id = $1`, other); n != 1 {
		t.Errorf("other user has %d rows", n)
	}
}

// TestUsersProjectionAfterErasure: a projection that reaches a user's
// registration only after the erasure (it lagged, or is being rebuilt)
// never shows the user.
func TestUsersProjectionAfterErasure(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id, _ := e.register(t, "late@example.org", "Late")
	e.erase(t, id)
	r, _ := e.newRunner(t, "node-a", []projections.Projection{projections.Users()}, nil)
	start(t, r)
	feed := e.feed(t, 2)
	e.waitApplied(t, "users", feed[len(feed)-1].Cursor)
	if n := e.count(t, `SELECT count(*) FROM users`); n != 0 {
		t.Errorf("users has %d rows after the only user was erased", n)
	}
}

// TestPackagesProjection: package.created upserts a row; the catalogue
// lists active packages by sort order.
func TestPackagesProjection(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	third, first, second := newPackage("third", 3), newPackage("first", 1), newPackage("second", 2)
	hidden := newPackage("hidden", 0)
	hidden.Active = false
	for _, p := range []*domain.PackageCreated{third, first, second, hidden} {
		if _, err := e.appendEvents(ctxT(t), domain.StreamPackage, p.PackageID.String(), p); err != nil {
			t.Fatal(err)
		}
	}
	// Re-created with a new price: the row is replaced, created_at kept.
	repriced := *second
	repriced.PriceCents = 250
	if _, err := e.appendEvents(ctxT(t), domain.StreamPackage, second.PackageID.String(), &repriced); err != nil {
		t.Fatal(err)
	}
	r, _ := e.newRunner(t, "node-a", []projections.Projection{projections.Packages()}, nil)
	start(t, r)
	feed := e.feed(t, 5)
	e.waitApplied(t, "packages", feed[len(feed)-1].Cursor)

	got, err := projections.ActivePackages(ctxT(t), e.pool)
	if err != nil {
		t.Fatal(err)
	}
	var ids []uuid.UUID
	for _, p := range got {
		ids = append(ids, p.ID)
	}
	want := []uuid.UUID{first.PackageID, second.PackageID, third.PackageID}
	if len(ids) != 3 || ids[0] != want[0] || ids[1] != want[1] || ids[2] != want[2] {
		t.Fatalf("catalogue %v, want %v", ids, want)
	}
	p := got[1]
	if p.PriceCents != 250 || p.Name != "second" || p.Currency != "eur" || p.Credits != 200 {
		t.Errorf("repriced package: %+v", p)
	}
	var createdOf = map[uuid.UUID]time.Time{}
	for _, rec := range feed {
		if _, seen := createdOf[uuid.MustParse(rec.StreamID)]; !seen {
			createdOf[uuid.MustParse(rec.StreamID)] = rec.OccurredAt
		}
	}
	if !p.CreatedAt.Equal(createdOf[second.PackageID]) || !p.UpdatedAt.Equal(feed[len(feed)-1].OccurredAt) {
		t.Errorf("times %v %v", p.CreatedAt, p.UpdatedAt)
	}
}
