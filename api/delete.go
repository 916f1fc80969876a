package api

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/ratelimit"
)

// SetAccountDeletion registers DELETE /auth/account (Bearer) with the JSON
// body {password, code?}: the caller erases their own account (SPEC §5),
// served by del; id authenticates the Bearer. The password draws on the
// account's login budget (LoginAccount) before it is checked, and counts
// towards the lockout like a login's. The answer is 204 with
// X-Mana-Position; the account's rate-limit budgets are deleted then
// (forgetBudgets). Call before serving, after SetIdentity.
func (s *Server) SetAccountDeletion(del domain.AccountDeletion, id domain.Identity) {
	h := &deletionHandlers{del: del}
	s.api.DELETE("/auth/account", h.deleteAccount, s.Bearer(id))
}

type deletionHandlers struct {
	del domain.AccountDeletion
}

func (h *deletionHandlers) deleteAccount(c *echo.Context) error {
	var req struct {
		Password string `json:"password"`
		Code     string `json:"code"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	if req.Password == "" {
		return invalidField("password", "is required")
	}
	p, _ := PrincipalOf(c)
	srv := serverFrom(c)
	if err := srv.limitAccount(c, ratelimit.LoginAccount, p.Email); err != nil {
		return err
	}
	w, err := h.del.DeleteAccount(c.Request().Context(), p, req.Password, req.Code, requestMeta(c))
	if err != nil {
		return err
	}
	srv.forgetBudgets(c, p)
	writePosition(c, w)
	return c.NoContent(http.StatusNoContent)
}

// forgetBudgets deletes the rate-limit budgets an erased account leaves
// behind (SPEC §3), when the limiter can (ratelimit.Forgetter): those of
// its address (LoginAccount, RecoveryAccount: keyed by the blind index of
// the token's email claim) and of its user id (CreditsUser). Budgets of
// client addresses and apps are shared with others and stay; every budget
// expires by itself once refilled anyway. The in-memory limiter forgets
// only this node's budgets; other nodes' refill within their period (an
// hour at most with the defaults). A failure is logged, never answered:
// the account is gone either way.
func (s *Server) forgetBudgets(c *echo.Context, p domain.Principal) {
	if s == nil {
		return
	}
	rl := s.rate.Load()
	if rl == nil {
		return
	}
	f, ok := rl.Limiter.(ratelimit.Forgetter)
	if !ok {
		return
	}
	// Detached from the request, so a client that hangs up once the
	// erasure committed does not leave its budgets behind; the Redis
	// limiter bounds each deletion by its own timeout.
	ctx := context.WithoutCancel(c.Request().Context())
	forget := func(policy, key string) {
		pol, ok := rl.Policies[policy]
		if !ok || key == "" {
			return
		}
		if err := f.Forget(ctx, pol, key); err != nil {
			s.logger.LogAttrs(ctx, slog.LevelWarn, "rate-limit budget of an erased account not deleted; it expires by itself",
				slog.String("request_id", RequestID(c)), slog.String("policy", policy), slog.String("error", err.Error()))
		}
	}
	if rl.AccountKey != nil && p.Email != "" {
		key := rl.AccountKey(p.Email)
		forget(ratelimit.LoginAccount, key)
		forget(ratelimit.RecoveryAccount, key)
	}
	forget(ratelimit.CreditsUser, p.UserID.String())
}
