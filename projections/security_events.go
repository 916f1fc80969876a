package projections

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// securityEventsProjection builds a user's security log, table
// security_events: one row per security-relevant event, keyed by the
// event's id, so the log can never hold an event twice. It deletes a user's
// rows on user.erased. A row says what happened, with a short detail and
// the client's IP address where the event has them; never a token, key,
// hash or password.
type securityEventsProjection struct{ Handlers }

// Security event types, as GET /auth/security-events shows them.
const (
	SecurityRegistered         = "registered"
	SecurityLoginSucceeded     = "login_succeeded"
	SecurityLoginFailed        = "login_failed"
	SecurityAccountLocked      = "account_locked"
	SecurityPasswordChanged    = "password_changed"
	SecurityRoleChanged        = "role_changed"
	SecurityEmailVerified      = "email_verified"
	SecurityResetRequested     = "password_reset_requested"
	SecurityPasswordReset      = "password_reset"
	SecurityProfileUpdated     = "profile_updated"
	SecurityTwoFactorEnabled   = "two_factor_enabled"
	SecurityTwoFactorDisabled  = "two_factor_disabled"
	SecurityRecoveryCodeUsed   = "recovery_code_used"
	SecuritySessionRevoked     = "session_revoked"
	SecurityRefreshTokenReused = "refresh_token_reused"
	SecurityPaymentRejected    = "payment_rejected"
	SecurityPurchaseFailed     = "purchase_failed"
	SecurityPurchaseCompleted  = "purchase_completed"
)

// SecurityEvents returns the projection "security_events". Each row's
// created_at is its event's OccurredAt:
//
//   - user.registered: registered.
//   - user.login_succeeded: login_succeeded, with the IP address.
//   - user.login_failed: login_failed, with the IP address and detail
//     "failures: N" (N failures in the current window).
//   - user.locked: account_locked, detail the end of the lock (RFC 3339,
//     UTC).
//   - user.password_changed: password_changed, detail the reason ("change"
//     or "reset").
//   - user.role_changed: role_changed, detail "FROM → TO".
//   - user.email_verified: email_verified, detail how ("verification" or
//     "password_reset").
//   - user.password_reset_requested: password_reset_requested.
//   - user.password_reset: password_reset, detail "sessions revoked: N",
//     plus ", unlocked" when it cleared a login lock.
//   - user.profile_updated: profile_updated (the name is not repeated).
//   - user.two_factor_enabled: two_factor_enabled, detail the method
//     ("totp").
//   - user.two_factor_disabled: two_factor_disabled, detail the method.
//   - user.recovery_code_used: recovery_code_used, detail "remaining: N"
//     (unused recovery codes left).
//   - session.revoked: session_revoked, detail the reason; a revocation for
//     a reused refresh token is refresh_token_reused instead, without
//     detail (the type says it).
//   - purchase.payment_rejected: payment_rejected, detail the reason
//     (amount_mismatch, currency_mismatch …); a rejected payment that
//     named no known purchase has no user and adds no row.
//   - purchase.failed: purchase_failed, detail the reason.
//   - purchase.completed: purchase_completed, detail the purchase id; none
//     when the account was erased before the payment (the credits went to
//     system:unclaimed).
//   - user.erased deletes every row of the user.
//
// An event applied after the user's key was shredded (a lagging or rebuilt
// projection) decodes without its IP address; the user.erased that follows
// it in the feed deletes the row again.
func SecurityEvents() Projection {
	return securityEventsProjection{Handlers{
		"user.registered": securityHandler(func(e *domain.UserRegistered) securityRow {
			return securityRow{user: e.UserID, typ: SecurityRegistered}
		}),
		"user.login_succeeded": securityHandler(func(e *domain.UserLoginSucceeded) securityRow {
			return securityRow{user: e.UserID, typ: SecurityLoginSucceeded, ip: e.IPAddress}
		}),
		"user.login_failed": securityHandler(func(e *domain.UserLoginFailed) securityRow {
			return securityRow{user: e.UserID, typ: SecurityLoginFailed, ip: e.IPAddress,
				detail: "failures: " + strconv.Itoa(e.Failures)}
		}),
		"user.locked": securityHandler(func(e *domain.UserLocked) securityRow {
			return securityRow{user: e.UserID, typ: SecurityAccountLocked,
				detail: e.LockedUntil.UTC().Format(time.RFC3339)}
		}),
		"user.password_changed": securityHandler(func(e *domain.UserPasswordChanged) securityRow {
			return securityRow{user: e.UserID, typ: SecurityPasswordChanged, detail: e.Reason}
		}),
		"user.role_changed": securityHandler(func(e *domain.UserRoleChanged) securityRow {
			return securityRow{user: e.UserID, typ: SecurityRoleChanged, detail: e.From + " → " + e.To}
		}),
		"user.email_verified": securityHandler(func(e *domain.UserEmailVerified) securityRow {
			return securityRow{user: e.UserID, typ: SecurityEmailVerified, detail: e.Via}
		}),
		"user.password_reset_requested": securityHandler(func(e *domain.UserPasswordResetRequested) securityRow {
			return securityRow{user: e.UserID, typ: SecurityResetRequested}
		}),
		"user.password_reset": securityHandler(func(e *domain.UserPasswordReset) securityRow {
			detail := "sessions revoked: " + strconv.Itoa(e.SessionsRevoked)
			if e.Unlocked {
				detail += ", unlocked"
			}
			return securityRow{user: e.UserID, typ: SecurityPasswordReset, detail: detail}
		}),
		"user.profile_updated": securityHandler(func(e *domain.UserProfileUpdated) securityRow {
			return securityRow{user: e.UserID, typ: SecurityProfileUpdated}
		}),
		"user.two_factor_enabled": securityHandler(func(e *domain.UserTwoFactorEnabled) securityRow {
			return securityRow{user: e.UserID, typ: SecurityTwoFactorEnabled, detail: e.Method}
		}),
		"user.two_factor_disabled": securityHandler(func(e *domain.UserTwoFactorDisabled) securityRow {
			return securityRow{user: e.UserID, typ: SecurityTwoFactorDisabled, detail: e.Method}
		}),
		"user.recovery_code_used": securityHandler(func(e *domain.UserRecoveryCodeUsed) securityRow {
			return securityRow{user: e.UserID, typ: SecurityRecoveryCodeUsed, detail: "remaining: " + strconv.Itoa(e.Remaining)}
		}),
		"session.revoked": securityHandler(func(e *domain.SessionRevoked) securityRow {
			if e.Reason == domain.RevokedRefreshReused {
				return securityRow{user: e.UserID, typ: SecurityRefreshTokenReused}
			}
			return securityRow{user: e.UserID, typ: SecuritySessionRevoked, detail: e.Reason}
		}),
		"purchase.payment_rejected": securityHandler(func(e *domain.PurchasePaymentRejected) securityRow {
			return securityRow{user: e.UserID, typ: SecurityPaymentRejected, detail: e.Reason}
		}),
		"purchase.failed": securityHandler(func(e *domain.PurchaseFailed) securityRow {
			return securityRow{user: e.UserID, typ: SecurityPurchaseFailed, detail: e.Reason}
		}),
		"purchase.completed": securityHandler(func(e *domain.PurchaseCompleted) securityRow {
			if e.Unclaimed {
				return securityRow{}
			}
			return securityRow{user: e.UserID, typ: SecurityPurchaseCompleted, detail: e.PurchaseID.String()}
		}),
		"user.erased": applySecurityEventsErased,
	}}
}

func (securityEventsProjection) Name() string { return "security_events" }

func (securityEventsProjection) Tables() []Table {
	return []Table{{Name: "security_events", Access: func(t string) string {
		return `GRANT SELECT ON ` + t + ` TO mana_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ` + t + ` TO mana_projector;
ALTER TABLE ` + t + ` ENABLE ROW LEVEL SECURITY;
ALTER TABLE ` + t + ` FORCE ROW LEVEL SECURITY;
CREATE POLICY security_events_read ON ` + t + ` FOR SELECT TO mana_app USING (mana_can_see(user_id));
CREATE POLICY security_events_project ON ` + t + ` FOR ALL TO mana_projector USING (true) WITH CHECK (true);`
	}}}
}

// securityRow is what one event adds to the log; empty strings are stored
// as NULL. A row without a user adds nothing.
type securityRow struct {
	user       uuid.UUID
	typ        string
	detail, ip string
}

// securityHandler returns the handler that records the row f derives from
// an event of payload type E.
func securityHandler[E domain.Event](f func(E) securityRow) Handler {
	return func(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
		e, ok := ev.Event.(E)
		if !ok {
			return fmt.Errorf("%s: unexpected payload %T", ev.EventType, ev.Event)
		}
		r := f(e)
		if r.user == uuid.Nil {
			return nil
		}
		// Keyed by the event id and an upsert, so the row is a function
		// of its event whatever the table held.
		_, err := w.Exec(ctx, `INSERT INTO `+w.Table("security_events")+` AS s
    (id, user_id, type, detail, ip_address, created_at)
VALUES ($1, $2, $3, nullif($4, ''), nullif($5, ''), $6)
ON CONFLICT (id) DO UPDATE SET
    user_id = excluded.user_id, type = excluded.type, detail = excluded.detail,
    ip_address = excluded.ip_address, created_at = excluded.created_at`,
			ev.EventID, r.user, r.typ, r.detail, r.ip, ev.OccurredAt)
		if err != nil {
			// PostgreSQL's error messages never carry the row's values.
			return fmt.Errorf("insert security event: %w", err)
		}
		return nil
	}
}

func applySecurityEventsErased(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.UserErased)
	if !ok {
		return fmt.Errorf("user.erased: unexpected payload %T", ev.Event)
	}
	if _, err := w.Exec(ctx, `DELETE FROM `+w.Table("security_events")+` WHERE user_id = $1`, e.UserID); err != nil {
		return fmt.Errorf("delete security events: %w", err)
	}
	return nil
}

// UserSecurityEvents returns at most limit of user's security events,
// newest first (created_at descending, then id). It reads as mana_app in
// user's scope, so row-level security limits it to user's rows. It does not
// wait for the projection: callers wait for read-your-writes first. A limit
// below 1 is an error.
func UserSecurityEvents(ctx context.Context, pool *pgxpool.Pool, user uuid.UUID, limit int) ([]domain.SecurityEventView, error) {
	if limit < 1 {
		return nil, errors.New("list security events: limit must be positive")
	}
	out := []domain.SecurityEventView{}
	err := pg.InTx(ctx, pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user}, func(tx pgx.Tx) error {
		// security_events_user_idx (user_id, created_at DESC, id) serves
		// this order.
		rows, err := tx.Query(ctx, `SELECT id, type, coalesce(detail, ''), ip_address, created_at
FROM security_events
WHERE user_id = $1
ORDER BY created_at DESC, id
LIMIT $2`, user, limit)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (domain.SecurityEventView, error) {
			var s domain.SecurityEventView
			err := r.Scan(&s.ID, &s.Type, &s.Detail, &s.IPAddress, &s.CreatedAt)
			s.CreatedAt = s.CreatedAt.UTC()
			return s, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list security events: %w", err)
	}
	return out, nil
}
