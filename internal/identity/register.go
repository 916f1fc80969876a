package identity

import (
	"context"
	"errors"
	"net/http"
	"net/mail"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
)

// Input limits (SPEC §5).
const (
	minPassword = 8
	maxPassword = 128
	maxName     = 255
	maxEmail    = 254
)

// validateEmail returns the normalized address or a VALIDATION_FAILED.
func validateEmail(raw string) (string, error) {
	email := keyring.NormalizeEmail(raw)
	addr, err := mail.ParseAddress(email)
	if err != nil || addr.Address != email || len(email) > maxEmail || !strings.Contains(email[strings.IndexByte(email, '@')+1:], ".") {
		return "", invalid("email", "must be a valid email address")
	}
	return email, nil
}

func invalid(field, msg string) error {
	return &domain.Error{Code: domain.CodeValidationFailed, Message: "The request is invalid.",
		Details: []domain.FieldError{{Field: field, Message: msg}}}
}

func validatePassword(pw string) error {
	n := utf8.RuneCountInString(pw)
	if n < minPassword || n > maxPassword {
		return invalid("password", "must be 8 to 128 characters")
	}
	return nil
}

// Register implements domain.Identity: the email claim, the password hash
// (credential table), the write-side user row, user.registered, the
// verification token with its queued mail and user.verification_requested
// and, once per address ever, credit.signup_bonus_granted, all in one
// transaction.
func (s *Service) Register(ctx context.Context, in domain.RegisterInput, meta domain.RequestMeta) (domain.RegisteredUser, domain.Written, error) {
	email, err := validateEmail(in.Email)
	if err != nil {
		return domain.RegisteredUser{}, domain.Written{}, err
	}
	if err := validatePassword(in.Password); err != nil {
		return domain.RegisteredUser{}, domain.Written{}, err
	}
	name := strings.TrimSpace(in.Name)
	if utf8.RuneCountInString(name) > maxName {
		return domain.RegisteredUser{}, domain.Written{}, invalid("name", "must be at most 255 characters")
	}
	// Hash before the transaction: argon2 takes tens of milliseconds and
	// write transactions stay short.
	hash, err := s.cfg.Hasher.Hash(ctx, in.Password)
	if err != nil {
		return domain.RegisteredUser{}, domain.Written{}, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return domain.RegisteredUser{}, domain.Written{}, err
	}
	emailHMAC := s.cfg.Store.Keyring().EmailIndex(email)
	var out domain.RegisteredUser
	r, err := s.cfg.Store.Execute(ctx, command("auth.register", userActor(id), meta), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		now := tx.Now()
		if err := tx.ClaimEmail(ctx, email, id); err != nil {
			return domain.Receipt{}, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO password_credentials (user_id, password_hash) VALUES ($1, $2)`, id, hash); err != nil {
			return domain.Receipt{}, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO auth_users (user_id, email_hmac, role, version, created_at) VALUES ($1, $2, 'user', 1, $3)`,
			id, emailHMAC, now); err != nil {
			return domain.Receipt{}, err
		}
		// The verification mail is queued with the registration
		// (recovery.go); the worker sends it after the commit.
		verifyBy, err := s.issueToken(tx, id, email, purposeVerify)
		if err != nil {
			return domain.Receipt{}, err
		}
		appends := []eventstore.StreamAppend{{
			StreamType: domain.StreamUser, StreamID: id.String(), Users: []uuid.UUID{id},
			Events: []domain.Event{
				domain.UserRegistered{UserID: id, Email: email, Name: name, Role: domain.RoleUser, RegisteredAt: now},
				domain.UserVerificationRequested{UserID: id, ExpiresAt: verifyBy},
			},
		}}
		if s.cfg.SignupBonus > 0 {
			var claimed bool
			err := tx.QueryRow(ctx, `INSERT INTO signup_bonus_claims (email_hmac) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true`, emailHMAC).Scan(&claimed)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return domain.Receipt{}, err
			}
			if claimed {
				appends = append(appends, eventstore.StreamAppend{
					StreamType: domain.StreamCreditAccount, StreamID: id.String(), Users: []uuid.UUID{id},
					Events: []domain.Event{domain.NewSignupBonus(id, s.cfg.SignupBonus)},
				})
			}
		}
		if _, err := tx.Append(ctx, appends...); err != nil {
			return domain.Receipt{}, err
		}
		out = domain.RegisteredUser{ID: id, Email: email, Name: name, CreatedAt: now}
		return domain.Receipt{Status: http.StatusCreated}, nil
	})
	if err != nil {
		return domain.RegisteredUser{}, domain.Written{}, err
	}
	return out, domain.Written{Position: r.Position}, nil
}
