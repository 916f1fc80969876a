package identity

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/credits"
	"github.com/manacore/mana/internal/pg"
)

// CreditAccounts closes a user's credit account inside the transaction
// that erases the user; *credits.Service implements it.
type CreditAccounts interface {
	// LockAccount serializes with the account's credit commands in this
	// process; DeleteAccount holds it around its transaction.
	LockAccount(user uuid.UUID) (unlock func())
	// CloseAccount fails the pending purchases, returns held credits and
	// writes the balance off, in tx (see credits.Service.CloseAccount).
	CloseAccount(ctx context.Context, tx *eventstore.Tx, user uuid.UUID) (credits.Closed, error)
}

var (
	_ domain.AccountDeletion = (*Service)(nil)
	_ CreditAccounts         = (*credits.Service)(nil)
)

// SetCreditAccounts gives DeleteAccount the credit ledger whose accounts it
// closes. Call it once, before serving; until then DeleteAccount fails: an
// account cannot be erased with its credits left open.
func (s *Service) SetCreditAccounts(a CreditAccounts) { s.accounts = a }

var errWrongPassword = domain.Errorf(domain.CodeInvalidCredentials, "The password is incorrect.")

// erasure is the write-side state DeleteAccount decides on.
type erasure struct {
	emailHMAC []byte
	role      string
	hash      string
}

// DeleteAccount implements domain.AccountDeletion.
//
// The password is verified first, outside any write transaction (argon2
// takes tens of milliseconds), under the account's lockout exactly like a
// login's: a verification slot of the blind email index, user.login_failed
// and user.locked for a wrong password. Then, holding the account's credit
// lock, one transaction locks the auth_users row, checks that the password
// hash is still the one verified and, with 2FA on, checks and spends the
// code (requireSecondFactor: a wrong one rolls everything back and counts
// as a failed login), and
//
//  1. closes the credit account (CreditAccounts.CloseAccount): pending
//     purchases fail with reason "account_deleted", due holds expire and
//     the others are released, the balance is written off
//     (credit.written_off), the account row goes;
//  2. revokes every active session (session.revoked with reason
//     "account_deleted") and deletes all of the user's session rows, with
//     their refresh keys and cached access tokens;
//  3. appends user.erased;
//  4. shreds the personal data (eventstore.Tx.EraseSubject): the data key,
//     the email claim, the stored idempotent responses;
//  5. marks auth_users erased and clears its email_hmac, which frees the
//     address for a new registration; signup_bonus_claims keeps its row,
//     so that registration gets no second bonus;
//  6. deletes the remaining credentials and per-user state: the password
//     hash, the TOTP secret, recovery codes and open login challenges,
//     email tokens, mails not sent yet, known-device hashes, and the
//     lockout counters of the address.
//
// The revocations are announced on NATS after the commit. Everything the
// user did stays in the event log, pseudonymous: sealed fields decode as
// empty from now on, and the ledger still verifies and sums to zero.
func (s *Service) DeleteAccount(ctx context.Context, p domain.Principal, password, code string, meta domain.RequestMeta) (domain.Written, error) {
	if password == "" || utf8.RuneCountInString(password) > maxPassword {
		return domain.Written{}, invalid("password", "must be 1 to 128 characters")
	}
	if s.accounts == nil {
		return domain.Written{}, errors.New("identity: account deletion has no credit ledger (SetCreditAccounts)")
	}
	user := p.UserID
	var e erasure
	err := pg.InTx(ctx, s.pool, system, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT u.email_hmac, u.role, c.password_hash
FROM auth_users u JOIN password_credentials c USING (user_id)
WHERE u.user_id = $1 AND NOT u.erased`, user).Scan(&e.emailHMAC, &e.role, &e.hash)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.Written{}, errTokenInvalid
	}
	if err != nil {
		return domain.Written{}, fmt.Errorf("load account: %w", err)
	}
	if err := s.reserveVerification(ctx, e.emailHMAC, s.now()); err != nil {
		return domain.Written{}, err
	}
	ok, err := s.cfg.Hasher.Verify(ctx, password, e.hash)
	if err != nil {
		return domain.Written{}, err
	}
	if !ok {
		if err := s.recordFailure(ctx, e.emailHMAC, account{id: user, role: e.role, hash: e.hash, found: true}, meta); err != nil {
			return domain.Written{}, err
		}
		return domain.Written{}, errWrongPassword
	}

	unlock := s.accounts.LockAccount(user)
	defer unlock()
	var (
		revoked []uuid.UUID
		closed  credits.Closed
	)
	cmd := eventstore.Command{Name: "auth.delete_account", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem, UserID: user},
		Metadata: domain.Metadata{Actor: userActor(user), RequestID: meta.RequestID}}
	r, err := s.cfg.Store.Execute(ctx, cmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		revoked = nil
		var (
			emailHMAC []byte
			erased    bool
			hash      string
		)
		// The user row first. A login share-locks it before it starts a
		// session and a purchase before it records one, so neither can
		// slip past the erasure. A payment webhook locks its purchase
		// before the user row: one for this account running on another
		// node may deadlock with this transaction, and PostgreSQL's
		// detection aborts one of the two, which Execute re-runs (in this
		// process the credit lock serializes them).
		err := tx.QueryRow(ctx, `SELECT u.email_hmac, u.erased, coalesce(c.password_hash, '')
FROM auth_users u LEFT JOIN password_credentials c USING (user_id)
WHERE u.user_id = $1 FOR UPDATE OF u`, user).Scan(&emailHMAC, &erased, &hash)
		if errors.Is(err, pgx.ErrNoRows) || err == nil && erased {
			return domain.Receipt{}, errTokenInvalid
		}
		if err != nil {
			return domain.Receipt{}, err
		}
		// A password changed since it was verified: the verified one is
		// no longer the account's.
		if subtle.ConstantTimeCompare([]byte(hash), []byte(e.hash)) != 1 {
			return domain.Receipt{}, errWrongPassword
		}
		// With 2FA on, a current code (or a recovery code) is spent here;
		// a wrong one rolls everything back and is counted below.
		if err := s.requireSecondFactor(ctx, tx, user, code); err != nil {
			return domain.Receipt{}, err
		}
		if closed, err = s.accounts.CloseAccount(ctx, tx, user); err != nil {
			return domain.Receipt{}, err
		}
		if revoked, err = revokeAll(ctx, tx, user, domain.RevokedAccountDeleted); err != nil {
			return domain.Receipt{}, err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM auth_sessions WHERE user_id = $1`, user); err != nil {
			return domain.Receipt{}, err
		}
		if _, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: user.String(),
			ExpectedVersion: eventstore.AnyVersion, Users: []uuid.UUID{user},
			Events: []domain.Event{domain.UserErased{UserID: user, ErasedAt: tx.Now()}}}); err != nil {
			return domain.Receipt{}, err
		}
		if err := tx.EraseSubject(ctx, user); err != nil {
			return domain.Receipt{}, err
		}
		if err := deleteTwoFactor(ctx, tx, user); err != nil {
			return domain.Receipt{}, err
		}
		for _, q := range []string{
			`UPDATE auth_users SET erased = true, email_hmac = NULL, version = version + 1 WHERE user_id = $1`,
			`DELETE FROM password_credentials WHERE user_id = $1`,
			// Mail state: one-time tokens (keyed hashes), sealed mails not
			// sent yet, known-device hashes.
			`DELETE FROM email_tokens WHERE user_id = $1`,
			`DELETE FROM mail_outbox WHERE user_id = $1`,
			`DELETE FROM mail_known_devices WHERE user_id = $1`,
		} {
			tx.Queue(q, user)
		}
		tx.Queue(`DELETE FROM login_attempts WHERE email_hmac = $1`, emailHMAC)
		return domain.Receipt{Status: http.StatusNoContent}, nil
	})
	if errors.Is(err, errWrongFactor) {
		if err := s.recordFailure(ctx, e.emailHMAC, account{id: user, role: e.role, hash: e.hash, found: true}, meta); err != nil {
			return domain.Written{}, err
		}
		return domain.Written{}, errTwoFactorFailed
	}
	if err != nil {
		return domain.Written{}, err
	}
	for _, sid := range revoked {
		s.announce(sid, user)
	}
	s.cfg.Logger.Info("account erased", "user_id", user, "sessions_revoked", len(revoked),
		"purchases_failed", closed.FailedPurchases, "holds_expired", closed.ExpiredHolds,
		"holds_released", closed.ReleasedHolds, "written_off", closed.WrittenOff)
	return domain.Written{Position: r.Position}, nil
}

// revokeAll revokes every active session of user with reason, in tx, and
// returns their ids for the announcements after the commit.
func revokeAll(ctx context.Context, tx *eventstore.Tx, user uuid.UUID, reason string) ([]uuid.UUID, error) {
	rows, err := tx.Query(ctx, `SELECT session_id FROM auth_sessions WHERE user_id = $1 AND status = 'active' ORDER BY session_id`, user)
	if err != nil {
		return nil, err
	}
	sids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, err
	}
	var revoked []uuid.UUID
	for _, sid := range sids {
		row, found, err := lockSession(ctx, tx, sid, &user)
		if err != nil {
			return nil, err
		}
		if found && row.status == "active" {
			if err := revokeLocked(ctx, tx, sid, row, reason); err != nil {
				return nil, err
			}
			revoked = append(revoked, sid)
		}
	}
	return revoked, nil
}
