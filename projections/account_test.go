package projections_test

import (
	"testing"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/projections"
)

// TestUsersProjectionAccountEvents: user.email_verified sets
// email_verified, user.profile_updated the name (decrypted).
func TestUsersProjectionAccountEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r, _ := e.newRunner(t, "node-a", []projections.Projection{projections.Users()}, nil)
	start(t, r)

	id, _ := e.register(t, "vera@example.org", "Vera")
	e.appendOne(t, domain.StreamUser, id, &domain.UserEmailVerified{UserID: id, Via: domain.VerifiedByLink})
	last := e.appendOne(t, domain.StreamUser, id, &domain.UserProfileUpdated{UserID: id, Name: "Vera Rubin"})
	feed := e.feed(t, 3)
	e.waitApplied(t, "users", feed[len(feed)-1].Cursor)
	var (
		name     string
		verified bool
	)
	if err := e.pool.QueryRow(ctxT(t), `SELECT name, email_verified FROM users WHERE id = $1`, id).Scan(&name, &verified); err != nil {
		t.Fatal(err)
	}
	if name != "Vera Rubin" || !verified {
		t.Errorf("row: name %q, verified %v", name, verified)
	}
	var updated = last.OccurredAt
	if n := e.count(t, `SELECT count(*) FROM users WHERE id = $1 AND updated_at = $2`, id, updated); n != 1 {
		t.Errorf("updated_at is not the last event's time")
	}
}
