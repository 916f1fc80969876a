package identity

import (
	"context"
	"errors"
	"net/http"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// SetRole gives the user with email a new role and revokes every session of
// theirs, so no token carries the old role. It reports whether the role
// changed.
func (s *Service) SetRole(ctx context.Context, email, role string, meta domain.RequestMeta) (bool, error) {
	if !domain.ValidRole(role) {
		return false, invalid("role", "must be user, admin or auditor")
	}
	email, err := validateEmail(email)
	if err != nil {
		return false, err
	}
	emailHMAC := s.cfg.Store.Keyring().EmailIndex(email)
	var (
		user    uuid.UUID
		revoked []uuid.UUID
		changed bool
	)
	_, err = s.cfg.Store.Execute(ctx, command("admin.set_role", "admin:cli", meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		revoked, changed = nil, false
		var from string
		err := tx.QueryRow(ctx, `SELECT user_id, role FROM auth_users WHERE email_hmac = $1 AND NOT erased FOR UPDATE`, emailHMAC).Scan(&user, &from)
		if errors.Is(err, pgx.ErrNoRows) {
			return domain.Receipt{}, domain.Errorf(domain.CodeNotFound, "No user with that email.")
		}
		if err != nil || from == role {
			return domain.Receipt{}, err
		}
		changed = true
		if _, err := tx.Exec(ctx, `UPDATE auth_users SET role = $2 WHERE user_id = $1`, user, role); err != nil {
			return domain.Receipt{}, err
		}
		if _, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: user.String(),
			ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{user},
			Events: []domain.Event{domain.UserRoleChanged{UserID: user, From: from, To: role}}}); err != nil {
			return domain.Receipt{}, err
		}
		rows, err := tx.Query(ctx, `SELECT session_id FROM auth_sessions WHERE user_id = $1 AND status = 'active'`, user)
		if err != nil {
			return domain.Receipt{}, err
		}
		sids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return domain.Receipt{}, err
		}
		for _, sid := range sids {
			row, found, err := lockSession(ctx, tx, sid, &user)
			if err != nil {
				return domain.Receipt{}, err
			}
			if found && row.status == "active" {
				if err := revokeLocked(ctx, tx, sid, row, domain.RevokedRoleChanged); err != nil {
					return domain.Receipt{}, err
				}
				revoked = append(revoked, sid)
			}
		}
		return domain.Receipt{Status: http.StatusOK}, nil
	})
	if err != nil {
		return false, err
	}
	for _, sid := range revoked {
		s.announce(sid, user)
	}
	return changed, nil
}

// FindUser implements domain.Identity: the email claim (blind index) names
// the user; the users read model has the rest.
func (s *Service) FindUser(ctx context.Context, email string) (domain.AdminUserView, error) {
	email, err := validateEmail(email)
	if err != nil {
		return domain.AdminUserView{}, err
	}
	var u domain.AdminUserView
	err = pg.InTx(ctx, s.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeAdmin}, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT u.id, u.email, u.name, u.role, u.email_verified, u.created_at
FROM email_claims c JOIN users u ON u.id = c.user_id WHERE c.email_hmac = $1`, s.cfg.Store.Keyring().EmailIndex(email)).
			Scan(&u.ID, &u.Email, &u.Name, &u.Role, &u.EmailVerified, &u.CreatedAt)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return u, domain.Errorf(domain.CodeNotFound, "No user with that email.")
	}
	return u, err
}
