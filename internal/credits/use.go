package credits

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
)

// Limits on spend inputs.
const (
	maxDescription  = 500
	maxMetadataJSON = 4096
	maxHoldTTL      = 86400
)

func invalid(field, msg string) error {
	return &domain.Error{Code: domain.CodeValidationFailed, Message: "The request is invalid.",
		Details: []domain.FieldError{{Field: field, Message: msg}}}
}

// checkApp validates appId and, for a service key, that it is the key's
// app (APP_MISMATCH otherwise).
func checkApp(c domain.Caller, app string) (string, error) {
	if c.Kind == "app" {
		if app == "" {
			return c.AppID, nil
		}
		if app != c.AppID {
			return "", domain.Errorf(domain.CodeAppMismatch, "appId does not match the service key's app.")
		}
	}
	if !domain.ValidAppID(app) {
		return "", invalid("appId", "must be 1-64 characters of a-z 0-9 . _ - starting with a letter or digit")
	}
	return app, nil
}

func validateUse(in *domain.UseInput) error {
	if in.Amount <= 0 {
		return invalid("amount", "must be a positive integer")
	}
	if utf8.RuneCountInString(in.Description) > maxDescription {
		return invalid("description", "must be at most 500 characters")
	}
	if strings.ContainsRune(in.Description, 0) {
		return invalid("description", "must not contain NUL characters")
	}
	if in.Metadata != nil {
		b, err := json.Marshal(in.Metadata)
		if err != nil || len(b) > maxMetadataJSON || strings.Contains(string(b), `\u0000`) {
			return invalid("metadata", "must be a JSON object of at most 4096 bytes")
		}
	}
	return nil
}

// capDaily enforces a service key's per-user daily spend cap.
func capDaily(ctx context.Context, tx *eventstore.Tx, c domain.Caller, user uuid.UUID, now time.Time, amount domain.Credits) error {
	if c.Kind != "app" || c.MaxSpendPerUserPerDay <= 0 {
		return nil
	}
	var total domain.Credits
	err := tx.QueryRow(ctx, `INSERT INTO app_daily_spend (app_id, user_id, day, amount) VALUES ($1, $2, $3::date, $4)
ON CONFLICT (app_id, user_id, day) DO UPDATE SET amount = app_daily_spend.amount + excluded.amount
RETURNING amount`, c.AppID, user, domain.Day(now), amount).Scan(&total)
	if err != nil {
		return err
	}
	if total > c.MaxSpendPerUserPerDay {
		return domain.Errorf(domain.CodeSpendLimitExceeded, "This app's daily spending limit for the user is reached.")
	}
	return nil
}

func spendTransaction(ev domain.CreditSpent, at time.Time) domain.Transaction {
	return domain.Transaction{ID: ev.TransactionID, Type: "spend", Amount: ev.Amount, AppID: strPtr(ev.AppID),
		Description: strPtr(ev.Description), Metadata: ev.Metadata, CreatedAt: at}
}

// Use implements domain.CreditsService: a spend, after the day's grant when
// due, free credits first; 402 INSUFFICIENT_CREDITS stores nothing.
func (s *Service) Use(ctx context.Context, c domain.Caller, user uuid.UUID, in domain.UseInput) (domain.Receipt, error) {
	if err := validateUse(&in); err != nil {
		return domain.Receipt{}, err
	}
	app, err := checkApp(c, in.AppID)
	if err != nil {
		return domain.Receipt{}, err
	}
	in.AppID = app
	return s.execute(ctx, command{op: "credits.use", caller: c, user: user, key: in.IdempotencyKey, request: in},
		func(ctx context.Context, tx *eventstore.Tx, acct *domain.Account) (step, error) {
			now := tx.Now()
			a, evs := s.withDaily(*acct, now)
			txID, err := uuid.NewV7()
			if err != nil {
				return step{}, err
			}
			spend, err := a.Spend(txID, in.AppID, in.Amount, in.Description, in.Metadata)
			if err != nil {
				return step{}, err
			}
			if err := capDaily(ctx, tx, c, user, now, in.Amount); err != nil {
				return step{}, err
			}
			return step{
				events: append(evs, spend),
				status: http.StatusCreated,
				body: func(after domain.Account) any {
					return map[string]any{"success": true, "transaction": spendTransaction(spend, now), "newBalance": after.Balance(s.cfg.DailyFree)}
				},
				after: func(ctx context.Context, tx *eventstore.Tx) error {
					tx.Queue(`INSERT INTO credit_charges (transaction_id, user_id, app_id, amount, free_part, paid_part, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)`, txID, user, in.AppID, spend.Amount, spend.Split.Free, spend.Split.Paid, now)
					return nil
				},
			}, nil
		})
}

// holdView is a hold as the API shows it.
type holdView struct {
	ID        uuid.UUID      `json:"id"`
	Amount    domain.Credits `json:"amount"`
	AppID     string         `json:"appId"`
	Status    string         `json:"status"`
	ExpiresAt time.Time      `json:"expiresAt"`
	Captured  domain.Credits `json:"captured"`
}

func viewOf(h domain.Hold) holdView {
	return holdView{ID: h.ID, Amount: h.Amount, AppID: h.AppID, Status: h.Status, ExpiresAt: h.ExpiresAt, Captured: h.Captured}
}

// PlaceHold implements domain.CreditsService.
func (s *Service) PlaceHold(ctx context.Context, c domain.Caller, user uuid.UUID, in domain.HoldInput) (domain.Receipt, error) {
	if in.Amount <= 0 {
		return domain.Receipt{}, invalid("amount", "must be a positive integer")
	}
	if in.TTLSeconds < 1 || in.TTLSeconds > maxHoldTTL {
		return domain.Receipt{}, invalid("ttlSeconds", "must be an integer from 1 to 86400")
	}
	app, err := checkApp(c, in.AppID)
	if err != nil {
		return domain.Receipt{}, err
	}
	in.AppID = app
	return s.execute(ctx, command{op: "credits.hold", caller: c, user: user, key: in.IdempotencyKey, request: in},
		func(ctx context.Context, tx *eventstore.Tx, acct *domain.Account) (step, error) {
			now := tx.Now()
			a, evs := s.withDaily(*acct, now)
			id, err := uuid.NewV7()
			if err != nil {
				return step{}, err
			}
			expires := now.Add(time.Duration(in.TTLSeconds) * time.Second)
			placed, err := a.PlaceHold(id, in.AppID, in.Amount, expires)
			if err != nil {
				return step{}, err
			}
			if err := capDaily(ctx, tx, c, user, now, in.Amount); err != nil {
				return step{}, err
			}
			return step{
				events: append(evs, placed),
				status: http.StatusCreated,
				body: func(after domain.Account) any {
					return map[string]any{"id": id, "amount": in.Amount, "appId": in.AppID, "status": domain.HoldActive,
						"expiresAt": expires, "newBalance": after.Balance(s.cfg.DailyFree)}
				},
				after: func(ctx context.Context, tx *eventstore.Tx) error {
					_, err := tx.Exec(ctx, `INSERT INTO credit_holds (hold_id, user_id, app_id, placed_by, amount, free_part, paid_part, status, expires_at, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9)`, id, user, in.AppID, c.Principal(), in.Amount, placed.Split.Free, placed.Split.Paid, expires, now)
					return err
				},
			}, nil
		})
}

// lockHold reads an active-or-not hold of user FOR UPDATE. HOLD_NOT_FOUND for
// an unknown hold or another user's; FORBIDDEN when the caller did not
// place it (holds placed by an app are captured or released by that app).
func lockHold(ctx context.Context, tx *eventstore.Tx, c domain.Caller, user, id uuid.UUID) (domain.Hold, error) {
	h := domain.Hold{ID: id, UserID: user}
	var placedBy string
	err := tx.QueryRow(ctx, `SELECT app_id, placed_by, amount, free_part, paid_part, status, captured, expires_at, created_at
FROM credit_holds WHERE hold_id = $1 AND user_id = $2 FOR UPDATE`, id, user).
		Scan(&h.AppID, &placedBy, &h.Amount, &h.Split.Free, &h.Split.Paid, &h.Status, &h.Captured, &h.ExpiresAt, &h.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return h, domain.Errorf(domain.CodeHoldNotFound, "Hold not found.")
	}
	if err != nil {
		return h, err
	}
	if c.Kind != "system" && strings.HasPrefix(placedBy, "app:") && placedBy != c.Principal() {
		return h, domain.Errorf(domain.CodeAppMismatch, "This hold was placed by another app.")
	}
	// A service key acts only on holds for its own app, whoever placed them.
	if c.Kind == "app" && h.AppID != c.AppID {
		return h, domain.Errorf(domain.CodeAppMismatch, "This hold belongs to another app.")
	}
	return h, nil
}

func setHold(ctx context.Context, tx *eventstore.Tx, h domain.Hold) error {
	_, err := tx.Exec(ctx, `UPDATE credit_holds SET status = $2, captured = $3 WHERE hold_id = $1`, h.ID, h.Status, h.Captured)
	return err
}

// settle handles a hold that is not active, or whose time is up: an expired
// one gets its expiry recorded (credits return) and answers HOLD_EXPIRED.
func settle(ctx context.Context, tx *eventstore.Tx, h *domain.Hold) (step, bool) {
	now := tx.Now()
	if h.ExpiredAt(now) {
		ev := h.Expire()
		h.Status = domain.HoldExpired
		hh := *h
		return step{events: []domain.Event{ev}, after: func(ctx context.Context, tx *eventstore.Tx) error { return setHold(ctx, tx, hh) },
			fail: domain.Errorf(domain.CodeHoldExpired, "The hold expired.")}, true
	}
	switch h.Status {
	case domain.HoldActive:
		return step{}, false
	case domain.HoldExpired:
		return step{fail: domain.Errorf(domain.CodeHoldExpired, "The hold expired.")}, true
	}
	return step{fail: domain.Errorf(domain.CodeHoldNotActive, "The hold is %s.", h.Status)}, true
}

// CaptureHold implements domain.CreditsService: final, once per hold;
// held-free first; the rest returns to its buckets.
func (s *Service) CaptureHold(ctx context.Context, c domain.Caller, user, id uuid.UUID, amount domain.Credits, key string) (domain.Receipt, error) {
	if amount <= 0 {
		return domain.Receipt{}, invalid("amount", "must be a positive integer")
	}
	req := map[string]any{"hold": id, "amount": amount}
	return s.execute(ctx, command{op: "credits.capture", caller: c, user: user, key: key, request: req},
		func(ctx context.Context, tx *eventstore.Tx, acct *domain.Account) (step, error) {
			h, err := lockHold(ctx, tx, c, user, id)
			if err != nil {
				return step{}, err
			}
			if st, done := settle(ctx, tx, &h); done {
				return st, nil
			}
			txID, err := uuid.NewV7()
			if err != nil {
				return step{}, err
			}
			ev, err := h.Capture(txID, amount)
			if err != nil {
				return step{}, err
			}
			h.Status, h.Captured = domain.HoldCaptured, amount
			now := tx.Now()
			return step{
				events: []domain.Event{ev},
				status: http.StatusOK,
				body: func(after domain.Account) any {
					t := domain.Transaction{ID: txID, Type: "hold_capture", Amount: amount, AppID: strPtr(h.AppID), HoldID: &h.ID, CreatedAt: now}
					return map[string]any{"hold": viewOf(h), "transaction": t, "newBalance": after.Balance(s.cfg.DailyFree)}
				},
				after: func(ctx context.Context, tx *eventstore.Tx) error {
					if err := setHold(ctx, tx, h); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, `INSERT INTO credit_charges (transaction_id, user_id, app_id, amount, free_part, paid_part, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)`, txID, user, h.AppID, amount, ev.Captured.Free, ev.Captured.Paid, now)
					return err
				},
			}, nil
		})
}

// ReleaseHold implements domain.CreditsService.
func (s *Service) ReleaseHold(ctx context.Context, c domain.Caller, user, id uuid.UUID, key string) (domain.Receipt, error) {
	req := map[string]any{"hold": id}
	return s.execute(ctx, command{op: "credits.release", caller: c, user: user, key: key, request: req},
		func(ctx context.Context, tx *eventstore.Tx, acct *domain.Account) (step, error) {
			h, err := lockHold(ctx, tx, c, user, id)
			if err != nil {
				return step{}, err
			}
			if st, done := settle(ctx, tx, &h); done {
				return st, nil
			}
			ev := h.Release()
			h.Status = domain.HoldReleased
			return step{
				events: []domain.Event{ev},
				status: http.StatusOK,
				body: func(after domain.Account) any {
					return map[string]any{"hold": viewOf(h), "newBalance": after.Balance(s.cfg.DailyFree)}
				},
				after: func(ctx context.Context, tx *eventstore.Tx) error { return setHold(ctx, tx, h) },
			}, nil
		})
}
