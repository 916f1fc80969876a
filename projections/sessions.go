package projections

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// sessionsProjection builds the sessions list of GET /auth/sessions, table
// sessions. It holds personal data in the clear (device name, IP address,
// user agent, decrypted with the user's data key) and deletes a user's rows
// on user.erased. Login, refresh and the Bearer guard never read it: they
// decide on auth_sessions.
type sessionsProjection struct{ Handlers }

// Sessions returns the projection "sessions": a row per session from
// session.started, its activity and expiry moved by session.refreshed, its
// status set to revoked by session.revoked, and every row of a user deleted
// by user.erased. Fields the client did not send are NULL. A session.started
// applied after the user's key was shredded (a lagging or rebuilt
// projection) decodes with empty personal fields; the user.erased that
// follows it in the feed deletes the row again.
func Sessions() Projection {
	return sessionsProjection{Handlers{
		"session.started":   applySessionStarted,
		"session.refreshed": applySessionRefreshed,
		"session.revoked":   applySessionRevoked,
		"user.erased":       applySessionsErased,
	}}
}

func (sessionsProjection) Name() string { return "sessions" }

func (sessionsProjection) Tables() []Table {
	return []Table{{Name: "sessions", Access: func(t string) string {
		return `GRANT SELECT ON ` + t + ` TO mana_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ` + t + ` TO mana_projector;
ALTER TABLE ` + t + ` ENABLE ROW LEVEL SECURITY;
ALTER TABLE ` + t + ` FORCE ROW LEVEL SECURITY;
CREATE POLICY sessions_read ON ` + t + ` FOR SELECT TO mana_app USING (mana_can_see(user_id));
CREATE POLICY sessions_project ON ` + t + ` FOR ALL TO mana_projector USING (true) WITH CHECK (true);`
	}}}
}

// Session statuses in the read model.
const (
	sessionActive  = "active"
	sessionRevoked = "revoked"
)

func applySessionStarted(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.SessionStarted)
	if !ok {
		return fmt.Errorf("session.started: unexpected payload %T", ev.Event)
	}
	// An upsert for the same reason as the users projection's: the row
	// stays a function of the session's events whatever the table held.
	_, err := w.Exec(ctx, `INSERT INTO `+w.Table("sessions")+` AS s
    (id, user_id, device_id, device_name, ip_address, user_agent, status, revoked_reason,
     created_at, last_activity_at, expires_at)
VALUES ($1, $2, nullif($3, ''), nullif($4, ''), nullif($5, ''), nullif($6, ''), $7, NULL, $8, $8, $9)
ON CONFLICT (id) DO UPDATE SET
    user_id = excluded.user_id, device_id = excluded.device_id, device_name = excluded.device_name,
    ip_address = excluded.ip_address, user_agent = excluded.user_agent, status = excluded.status,
    revoked_reason = NULL, created_at = excluded.created_at,
    last_activity_at = excluded.last_activity_at, expires_at = excluded.expires_at`,
		e.SessionID, e.UserID, e.DeviceID, e.DeviceName, e.IPAddress, e.UserAgent, sessionActive,
		ev.OccurredAt, e.ExpiresAt)
	if err != nil {
		// PostgreSQL's error messages never carry the row's values, so
		// this stays free of personal data.
		return fmt.Errorf("insert session: %w", err)
	}
	return nil
}

func applySessionRefreshed(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.SessionRefreshed)
	if !ok {
		return fmt.Errorf("session.refreshed: unexpected payload %T", ev.Event)
	}
	// No row (the user was erased in between) is not an error: there is
	// nothing left to show.
	_, err := w.Exec(ctx, `UPDATE `+w.Table("sessions")+` SET last_activity_at = $2, expires_at = $3 WHERE id = $1`,
		e.SessionID, ev.OccurredAt, e.ExpiresAt)
	if err != nil {
		return fmt.Errorf("refresh session: %w", err)
	}
	return nil
}

func applySessionRevoked(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.SessionRevoked)
	if !ok {
		return fmt.Errorf("session.revoked: unexpected payload %T", ev.Event)
	}
	_, err := w.Exec(ctx, `UPDATE `+w.Table("sessions")+` SET status = $2, revoked_reason = $3 WHERE id = $1`,
		e.SessionID, sessionRevoked, e.Reason)
	if err != nil {
		return fmt.Errorf("revoke session: %w", err)
	}
	return nil
}

func applySessionsErased(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.UserErased)
	if !ok {
		return fmt.Errorf("user.erased: unexpected payload %T", ev.Event)
	}
	if _, err := w.Exec(ctx, `DELETE FROM `+w.Table("sessions")+` WHERE user_id = $1`, e.UserID); err != nil {
		return fmt.Errorf("delete sessions: %w", err)
	}
	return nil
}

// UserSessions returns user's active sessions at now (not revoked, expiry
// after now), newest first (created_at, then id, descending), each marked
// Current when its id is current (the caller's session; uuid.Nil marks
// none). It reads as mana_app in user's scope, so row-level security
// limits it to user's rows whatever the query says. It does not wait for
// the projection: callers wait for read-your-writes first.
func UserSessions(ctx context.Context, pool *pgxpool.Pool, user uuid.UUID, current uuid.UUID, now time.Time) ([]domain.SessionView, error) {
	out := []domain.SessionView{}
	err := pg.InTx(ctx, pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user}, func(tx pgx.Tx) error {
		// sessions_user_idx (user_id, created_at DESC) serves this.
		rows, err := tx.Query(ctx, `SELECT id, device_id, device_name, ip_address, user_agent,
    created_at, last_activity_at, expires_at
FROM sessions
WHERE user_id = $1 AND status = 'active' AND expires_at > $2
ORDER BY created_at DESC, id DESC`, user, now)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (domain.SessionView, error) {
			var s domain.SessionView
			err := r.Scan(&s.ID, &s.DeviceID, &s.DeviceName, &s.IPAddress, &s.UserAgent,
				&s.CreatedAt, &s.LastActivityAt, &s.ExpiresAt)
			s.CreatedAt, s.LastActivityAt, s.ExpiresAt = s.CreatedAt.UTC(), s.LastActivityAt.UTC(), s.ExpiresAt.UTC()
			s.Current = s.ID == current && current != uuid.Nil
			return s, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	return out, nil
}
