package identity

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// refreshKeyLen is the size of a session's refresh key.
const refreshKeyLen = 32

// A refresh token is base64url(sessionId ‖ counter ‖ HMAC-SHA256(key,
// sessionId ‖ counter)): 16 + 8 + 32 bytes.
const refreshTokenLen = 16 + 8 + sha256.Size

func refreshMAC(key []byte, sid uuid.UUID, counter uint64) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(sid[:])
	binary.Write(m, binary.BigEndian, counter)
	return m.Sum(nil)
}

func encodeRefresh(sid uuid.UUID, counter uint64, key []byte) string {
	b := make([]byte, 0, refreshTokenLen)
	b = append(b, sid[:]...)
	b = binary.BigEndian.AppendUint64(b, counter)
	b = append(b, refreshMAC(key, sid, counter)...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeRefresh(tok string) (uuid.UUID, uint64, []byte, bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != refreshTokenLen {
		return uuid.Nil, 0, nil, false
	}
	sid, _ := uuid.FromBytes(b[:16])
	return sid, binary.BigEndian.Uint64(b[16:24]), b[24:], true
}

var errTokenInvalid = domain.Errorf(domain.CodeTokenInvalid, "The token is invalid.")

// sessionRow is a session's write-side state, locked FOR UPDATE by the
// command that reads it.
type sessionRow struct {
	userID    uuid.UUID
	version   int64
	key       []byte
	counter   uint64
	rotatedAt time.Time
	access    string
	deviceID  string
	status    string
	expiresAt time.Time
	role      string
}

func lockSession(ctx context.Context, tx *eventstore.Tx, sid uuid.UUID, user *uuid.UUID) (sessionRow, bool, error) {
	var r sessionRow
	var device *string
	q := `SELECT s.user_id, s.version, s.refresh_key, s.counter, s.rotated_at, s.current_access, s.device_id, s.status, s.expires_at, u.role
FROM auth_sessions s JOIN auth_users u USING (user_id) WHERE s.session_id = $1 AND NOT u.erased`
	args := []any{sid}
	if user != nil {
		q += ` AND s.user_id = $2`
		args = append(args, *user)
	}
	err := tx.QueryRow(ctx, q+` FOR UPDATE OF s`, args...).Scan(&r.userID, &r.version, &r.key, &r.counter, &r.rotatedAt, &r.access, &device, &r.status, &r.expiresAt, &r.role)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false, nil
	}
	if device != nil {
		r.deviceID = *device
	}
	return r, err == nil, err
}

// Refresh implements domain.Identity: the current counter rotates; the
// previous counter within ReuseWindow of its rotation gets the current pair
// again (two tabs refreshing at once stay logged in); anything older, or
// later, revokes the session as a stolen token.
func (s *Service) Refresh(ctx context.Context, refreshToken string, meta domain.RequestMeta) (domain.TokenPair, domain.Written, error) {
	sid, counter, mac, ok := decodeRefresh(refreshToken)
	if !ok {
		return domain.TokenPair{}, domain.Written{}, errTokenInvalid
	}
	var (
		pair    domain.TokenPair
		revoked *sessionRow
	)
	r, err := s.cfg.Store.Execute(ctx, command("auth.refresh", "session:"+sid.String(), meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		revoked = nil
		// Concurrent refreshes of one session queue on its row lock;
		// waiting longer than RefreshWait answers REFRESH_IN_PROGRESS.
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", RefreshWait.Milliseconds())); err != nil {
			return domain.Receipt{}, err
		}
		row, found, err := lockSession(ctx, tx, sid, nil)
		if err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "55P03" {
				return domain.Receipt{}, &domain.Error{Code: domain.CodeRefreshInProgress, RetryAfterSeconds: 1,
					Message: "Another refresh of this session is in progress."}
			}
			return domain.Receipt{}, err
		}
		if !found || !hmac.Equal(mac, refreshMAC(row.key, sid, counter)) {
			return domain.Receipt{}, errTokenInvalid
		}
		now := tx.Now()
		switch {
		case row.status != "active":
			return domain.Receipt{}, domain.Errorf(domain.CodeSessionRevoked, "The session was revoked.")
		case !now.Before(row.expiresAt):
			return domain.Receipt{}, domain.Errorf(domain.CodeSessionExpired, "The session expired.")
		}
		email, name, err := s.userNames(ctx, tx, row.userID)
		if err != nil {
			return domain.Receipt{}, err
		}
		user := domain.UserView{ID: row.userID, Email: email, Name: name, Role: row.role}
		switch {
		case counter == row.counter:
			access, err := s.cfg.Tokens.Sign(domain.Claims{Subject: row.userID, Email: email, Role: row.role, SessionID: sid, DeviceID: row.deviceID})
			if err != nil {
				return domain.Receipt{}, err
			}
			next, expires := row.counter+1, now.Add(domain.SessionTTL)
			if _, err := tx.Exec(ctx, `UPDATE auth_sessions SET counter = $2, rotated_at = $3, current_access = $4, expires_at = $5, version = version + 1
WHERE session_id = $1`, sid, next, now, access, expires); err != nil {
				return domain.Receipt{}, err
			}
			_, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamSession, StreamID: sid.String(),
				ExpectedVersion: row.version, Users: []uuid.UUID{row.userID},
				Events: []domain.Event{domain.SessionRefreshed{SessionID: sid, UserID: row.userID, Counter: next, ExpiresAt: expires}}})
			if err != nil {
				return domain.Receipt{}, err
			}
			pair = tokenPair(user, access, encodeRefresh(sid, next, row.key))
		case counter+1 == row.counter && now.Sub(row.rotatedAt) <= s.cfg.ReuseWindow:
			// The concurrent loser: the pair of the rotation it lost to.
			pair = tokenPair(user, row.access, encodeRefresh(sid, row.counter, row.key))
		default:
			if err := revokeLocked(ctx, tx, sid, row, domain.RevokedRefreshReused); err != nil {
				return domain.Receipt{}, err
			}
			revoked = &row
		}
		return domain.Receipt{Status: http.StatusOK}, nil
	})
	if err != nil {
		return domain.TokenPair{}, domain.Written{}, err
	}
	if revoked != nil {
		s.announce(sid, revoked.userID)
		return domain.TokenPair{}, domain.Written{}, domain.Errorf(domain.CodeRefreshTokenReused,
			"This refresh token was already used; the session has been revoked.")
	}
	return pair, domain.Written{Position: r.Position}, nil
}

func tokenPair(u domain.UserView, access, refresh string) domain.TokenPair {
	return domain.TokenPair{User: u, AccessToken: access, RefreshToken: refresh,
		ExpiresIn: int(domain.AccessTokenTTL.Seconds()), TokenType: "Bearer"}
}

// userNames decodes the user's email from user.registered and the current
// name (recovery.go's currentName): an index probe and a decryption each,
// whatever the stream's length.
func (s *Service) userNames(ctx context.Context, tx *eventstore.Tx, user uuid.UUID) (string, string, error) {
	ev, found, err := tx.LoadEvent(ctx, domain.StreamUser, user.String(), 1)
	if err != nil || !found {
		return "", "", err
	}
	if u, ok := ev.Event.(*domain.UserRegistered); ok {
		// The name may have changed since (PATCH /auth/profile).
		name, err := currentName(ctx, tx, user, u.Name)
		return u.Email, name, err
	}
	return "", "", nil
}

// revokeLocked ends a session whose row the transaction has locked.
func revokeLocked(ctx context.Context, tx *eventstore.Tx, sid uuid.UUID, row sessionRow, reason string) error {
	if _, err := tx.Exec(ctx, `UPDATE auth_sessions SET status = 'revoked', revoked_reason = $2, version = version + 1 WHERE session_id = $1`, sid, reason); err != nil {
		return err
	}
	_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamSession, StreamID: sid.String(),
		ExpectedVersion: row.version, Users: []uuid.UUID{row.userID},
		Events: []domain.Event{domain.SessionRevoked{SessionID: sid, UserID: row.userID, Reason: reason}}})
	return err
}

func (s *Service) announce(sid, user uuid.UUID) {
	if s.cfg.Revocations != nil {
		s.cfg.Revocations.SessionRevoked(sid, user, s.now())
	}
}

// Logout implements domain.Identity: it revokes the bearer's session (a
// second logout changes nothing).
func (s *Service) Logout(ctx context.Context, p domain.Principal, meta domain.RequestMeta) (domain.Written, error) {
	return s.revoke(ctx, p, p.SessionID, domain.RevokedLogout, meta)
}

// RevokeSession implements domain.Identity.
func (s *Service) RevokeSession(ctx context.Context, p domain.Principal, sid uuid.UUID, meta domain.RequestMeta) (domain.Written, error) {
	return s.revoke(ctx, p, sid, domain.RevokedByUser, meta)
}

func (s *Service) revoke(ctx context.Context, p domain.Principal, sid uuid.UUID, reason string, meta domain.RequestMeta) (domain.Written, error) {
	changed := false
	r, err := s.cfg.Store.Execute(ctx, command("auth.revoke_session", userActor(p.UserID), meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		changed = false
		row, found, err := lockSession(ctx, tx, sid, &p.UserID)
		if err != nil {
			return domain.Receipt{}, err
		}
		if !found {
			return domain.Receipt{}, domain.Errorf(domain.CodeNotFound, "Session not found.")
		}
		if row.status != "active" {
			return domain.Receipt{Status: http.StatusOK}, nil
		}
		changed = true
		return domain.Receipt{Status: http.StatusOK}, revokeLocked(ctx, tx, sid, row, reason)
	})
	if err != nil {
		return domain.Written{}, err
	}
	if changed {
		s.announce(sid, p.UserID)
	}
	return domain.Written{Position: r.Position}, nil
}

// Authenticate implements domain.Identity: the token's signature and
// claims, then the session's write-side state (a revoked session's token
// is refused on the very next request) and the user's current role.
func (s *Service) Authenticate(ctx context.Context, token string) (domain.Principal, domain.Claims, error) {
	c, err := s.cfg.Tokens.Verify(token)
	if err != nil {
		return domain.Principal{}, domain.Claims{}, err
	}
	var (
		status  string
		expires time.Time
		role    string
	)
	err = pg.QueryRow(ctx, s.pool, system, `SELECT s.status, s.expires_at, u.role FROM auth_sessions s JOIN auth_users u USING (user_id)
WHERE s.session_id = $1 AND s.user_id = $2 AND NOT u.erased`, []any{c.SessionID, c.Subject}, &status, &expires, &role)
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.Principal{}, domain.Claims{}, errTokenInvalid
	}
	if err != nil {
		return domain.Principal{}, domain.Claims{}, fmt.Errorf("load session: %w", err)
	}
	if status != "active" {
		return domain.Principal{}, domain.Claims{}, domain.Errorf(domain.CodeSessionRevoked, "The session was revoked.")
	}
	if !s.now().Before(expires) {
		return domain.Principal{}, domain.Claims{}, domain.Errorf(domain.CodeSessionExpired, "The session expired.")
	}
	return domain.Principal{UserID: c.Subject, SessionID: c.SessionID, Email: c.Email, Role: role, DeviceID: c.DeviceID}, c, nil
}
