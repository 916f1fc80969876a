package api

import (
	"net/http"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/ratelimit"
)

// Enumeration-safe answers (SPEC §5): the same bytes for every address,
// known or not, verified or not — no timestamp, no request id and no
// position in the body, and no X-Mana-Position header. Like every JSON
// answer they end in a newline.
var (
	forgotPasswordAnswer     = []byte(`{"success":true,"message":"If an account exists for this address, a password reset link is on its way."}` + "\n")
	resendVerificationAnswer = []byte(`{"success":true,"message":"If an account with an unverified address exists for this address, a verification link is on its way."}` + "\n")
)

// SetAccount registers the account features of SPEC §5, served by acc:
// forgot-password, resend-verification, reset-password and verify-email
// without a token, change-password and the profile with the Bearer guard of
// id. Forgot, resend and reset draw on the recovery_ip budget, forgot and
// resend on recovery_account as well (see SetRateLimits).
func (s *Server) SetAccount(acc domain.AccountRecovery, id domain.Identity) {
	h := &accountHandlers{acc: acc}
	g := s.api.Group("/auth")
	g.POST("/forgot-password", h.forgotPassword, s.limitByIP(ratelimit.RecoveryIP))
	g.POST("/resend-verification", h.resendVerification, s.limitByIP(ratelimit.RecoveryIP))
	g.POST("/reset-password", h.resetPassword, s.limitByIP(ratelimit.RecoveryIP))
	g.POST("/verify-email", h.verifyEmail)
	bearer := s.Bearer(id)
	g.POST("/change-password", h.changePassword, bearer)
	g.GET("/profile", h.profile, bearer)
	g.PATCH("/profile", h.updateProfile, bearer)
}

type accountHandlers struct {
	acc domain.AccountRecovery
}

// emailRequest is the body of forgot-password and resend-verification.
type emailRequest struct {
	Email string `json:"email"`
}

func (h *accountHandlers) forgotPassword(c *echo.Context) error {
	var req emailRequest
	if err := Bind(c, &req); err != nil {
		return err
	}
	if err := serverFrom(c).limitAccount(c, ratelimit.RecoveryAccount, req.Email); err != nil {
		return err
	}
	if err := h.acc.ForgotPassword(c.Request().Context(), req.Email, requestMeta(c)); err != nil {
		return err
	}
	return c.JSONBlob(http.StatusOK, forgotPasswordAnswer)
}

func (h *accountHandlers) resendVerification(c *echo.Context) error {
	var req emailRequest
	if err := Bind(c, &req); err != nil {
		return err
	}
	if err := serverFrom(c).limitAccount(c, ratelimit.RecoveryAccount, req.Email); err != nil {
		return err
	}
	if err := h.acc.ResendVerification(c.Request().Context(), req.Email, requestMeta(c)); err != nil {
		return err
	}
	return c.JSONBlob(http.StatusOK, resendVerificationAnswer)
}

func (h *accountHandlers) resetPassword(c *echo.Context) error {
	var req struct {
		Token       string `json:"token"`
		NewPassword string `json:"newPassword"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	if req.Token == "" {
		return invalidField("token", "is required")
	}
	w, err := h.acc.ResetPassword(c.Request().Context(), req.Token, req.NewPassword, requestMeta(c))
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.JSON(http.StatusOK, map[string]bool{"success": true})
}

func (h *accountHandlers) verifyEmail(c *echo.Context) error {
	var req struct {
		Token string `json:"token"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	if req.Token == "" {
		return invalidField("token", "is required")
	}
	w, err := h.acc.VerifyEmail(c.Request().Context(), req.Token, requestMeta(c))
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.JSON(http.StatusOK, map[string]bool{"success": true})
}

func (h *accountHandlers) changePassword(c *echo.Context) error {
	var req struct {
		CurrentPassword string `json:"currentPassword"`
		NewPassword     string `json:"newPassword"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	p, _ := PrincipalOf(c)
	w, err := h.acc.ChangePassword(c.Request().Context(), p, req.CurrentPassword, req.NewPassword, requestMeta(c))
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.JSON(http.StatusOK, map[string]bool{"success": true})
}

func (h *accountHandlers) profile(c *echo.Context) error {
	p, _ := PrincipalOf(c)
	prof, err := h.acc.Profile(c.Request().Context(), p)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, prof)
}

// updateProfile takes {name}; the email address cannot be changed, so an
// "email" field is refused like any unknown field (400 VALIDATION_FAILED).
func (h *accountHandlers) updateProfile(c *echo.Context) error {
	var req struct {
		Name *string `json:"name"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	p, _ := PrincipalOf(c)
	prof, w, err := h.acc.UpdateProfile(c.Request().Context(), p, domain.ProfileUpdate{Name: req.Name}, requestMeta(c))
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.JSON(http.StatusOK, prof)
}
