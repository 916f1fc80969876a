package projections

import (
	"context"
	"fmt"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
)

// usersProjection builds the admin user directory, table users. It holds
// personal data in the clear (decrypted by the event store with each user's
// data key) and deletes a user's row on user.erased.
type usersProjection struct{ Handlers }

// Users returns the projection "users": a row per user from
// user.registered (name updated by user.profile_updated, emailVerified set
// by user.email_verified), deleted by user.erased. A user.registered applied after
// the user's key was shredded (a lagging or rebuilt projection) decodes
// with empty email and name; the user.erased that follows it in the feed
// deletes that row again.
func Users() Projection {
	return usersProjection{Handlers{
		"user.registered":   applyUserRegistered,
		"user.erased":       applyUserErased,
		"user.role_changed": applyUserRoleChanged,
		// Account features (internal/identity/recovery.go).
		"user.email_verified":  applyUserEmailVerified,
		"user.profile_updated": applyUserProfileUpdated,
	}}
}

func (usersProjection) Name() string { return "users" }

func (usersProjection) Tables() []Table {
	return []Table{{Name: "users", Access: func(t string) string {
		return `GRANT SELECT ON ` + t + ` TO mana_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ` + t + ` TO mana_projector;
ALTER TABLE ` + t + ` ENABLE ROW LEVEL SECURITY;
ALTER TABLE ` + t + ` FORCE ROW LEVEL SECURITY;
CREATE POLICY users_read ON ` + t + ` FOR SELECT TO mana_app USING (mana_can_see(id));
CREATE POLICY users_project ON ` + t + ` FOR ALL TO mana_projector USING (true) WITH CHECK (true);`
	}}}
}

func applyUserRegistered(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.UserRegistered)
	if !ok {
		return fmt.Errorf("user.registered: unexpected payload %T", ev.Event)
	}
	at := e.RegisteredAt
	if at.IsZero() {
		at = ev.OccurredAt
	}
	// An upsert, so the row is a function of the user's events whatever
	// the table held: the runner never applies an event twice, but an
	// operator-repaired table must not make the projection poison.
	_, err := w.Exec(ctx, `INSERT INTO `+w.Table("users")+` AS u
    (id, email, name, role, email_verified, created_at, updated_at)
VALUES ($1, $2, $3, $4, false, $5, $6)
ON CONFLICT (id) DO UPDATE SET
    email = excluded.email, name = excluded.name, role = excluded.role,
    email_verified = false, created_at = excluded.created_at, updated_at = excluded.updated_at`,
		e.UserID, e.Email, e.Name, e.Role, at, ev.OccurredAt)
	if err != nil {
		// The message of a PostgreSQL error never carries the row's
		// values, so this stays free of personal data.
		return fmt.Errorf("insert user: %w", err)
	}
	return nil
}

func applyUserErased(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.UserErased)
	if !ok {
		return fmt.Errorf("user.erased: unexpected payload %T", ev.Event)
	}
	if _, err := w.Exec(ctx, `DELETE FROM `+w.Table("users")+` WHERE id = $1`, e.UserID); err != nil {
		return fmt.Errorf("delete user: %w", err)
	}
	return nil
}

func applyUserRoleChanged(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.UserRoleChanged)
	if !ok {
		return fmt.Errorf("user.role_changed: unexpected payload %T", ev.Event)
	}
	if _, err := w.Exec(ctx, `UPDATE `+w.Table("users")+` SET role = $2, updated_at = $3 WHERE id = $1`, e.UserID, e.To, ev.OccurredAt); err != nil {
		return fmt.Errorf("update user role: %w", err)
	}
	return nil
}

func applyUserEmailVerified(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.UserEmailVerified)
	if !ok {
		return fmt.Errorf("user.email_verified: unexpected payload %T", ev.Event)
	}
	if _, err := w.Exec(ctx, `UPDATE `+w.Table("users")+` SET email_verified = true, updated_at = $2 WHERE id = $1`, e.UserID, ev.OccurredAt); err != nil {
		return fmt.Errorf("update user verification: %w", err)
	}
	return nil
}

// applyUserProfileUpdated sets the new name. After the user's key was
// shredded it decodes empty; user.erased deletes the row anyway.
func applyUserProfileUpdated(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.UserProfileUpdated)
	if !ok {
		return fmt.Errorf("user.profile_updated: unexpected payload %T", ev.Event)
	}
	if _, err := w.Exec(ctx, `UPDATE `+w.Table("users")+` SET name = $2, updated_at = $3 WHERE id = $1`, e.UserID, e.Name, ev.OccurredAt); err != nil {
		return fmt.Errorf("update user name: %w", err)
	}
	return nil
}
