package api

import (
	"errors"
	"net/http"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/ratelimit"
)

// SetTwoFactor registers the TOTP 2FA endpoints of SPEC §5, served by tf;
// id authenticates the Bearer:
//
//   - POST /auth/2fa/enroll (Bearer, no body or {}): 200 {secret,
//     otpauthUri}; 2FA stays off until confirmed.
//   - POST /auth/2fa/confirm (Bearer) {code}: 200 {enabled:true,
//     recoveryCodes} (ten codes, shown this once).
//   - POST /auth/2fa/disable (Bearer) {password, code | recoveryCode}: 200
//     {success:true}.
//   - POST /auth/login/2fa {challengeToken, code | recoveryCode}: the
//     second step of a login that answered {twoFactorRequired:true,
//     challengeToken}; 200 with the same body as a login.
//
// Limits: the Bearer endpoints draw on TwoFactorUser per user, and disable,
// which checks a password, on the account's LoginAccount budget too (as
// DELETE /auth/account does); /auth/login/2fa draws on LoginIP per client
// address, like /auth/login, and every code it checks takes one of the
// account's lockout verifications. Call before serving, after SetIdentity.
func (s *Server) SetTwoFactor(tf domain.TwoFactor, id domain.Identity) {
	h := &twoFactorHandlers{tf: tf}
	g := s.api.Group("/auth")
	g.POST("/login/2fa", h.login, s.limitByIP(ratelimit.LoginIP))
	bearer, limit := s.Bearer(id), s.limitByUser(ratelimit.TwoFactorUser)
	g.POST("/2fa/enroll", h.enroll, bearer, limit)
	g.POST("/2fa/confirm", h.confirm, bearer, limit)
	g.POST("/2fa/disable", h.disable, bearer, limit)
}

type twoFactorHandlers struct {
	tf domain.TwoFactor
}

// twoFactorRequired is the login answer for an account with 2FA on.
type twoFactorRequired struct {
	TwoFactorRequired bool   `json:"twoFactorRequired"`
	ChallengeToken    string `json:"challengeToken"`
}

// loginChallenge returns the answer to a login that err says needs a
// second step, or false.
func loginChallenge(c *echo.Context, err error) (bool, error) {
	var ch *domain.TwoFactorChallenge
	if !errors.As(err, &ch) {
		return false, nil
	}
	return true, c.JSON(http.StatusOK, twoFactorRequired{TwoFactorRequired: true, ChallengeToken: ch.ChallengeToken})
}

func (h *twoFactorHandlers) enroll(c *echo.Context) error {
	if c.Request().ContentLength != 0 {
		var req struct{}
		if err := Bind(c, &req); err != nil {
			return err
		}
	}
	p, _ := PrincipalOf(c)
	e, err := h.tf.EnrollTwoFactor(c.Request().Context(), p, requestMeta(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, e)
}

func (h *twoFactorHandlers) confirm(c *echo.Context) error {
	var req struct {
		Code string `json:"code"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	if req.Code == "" {
		return invalidField("code", "is required")
	}
	p, _ := PrincipalOf(c)
	out, w, err := h.tf.ConfirmTwoFactor(c.Request().Context(), p, req.Code, requestMeta(c))
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.JSON(http.StatusOK, out)
}

func (h *twoFactorHandlers) disable(c *echo.Context) error {
	var req struct {
		Password     string `json:"password"`
		Code         string `json:"code"`
		RecoveryCode string `json:"recoveryCode"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	if req.Password == "" {
		return invalidField("password", "is required")
	}
	p, _ := PrincipalOf(c)
	if err := serverFrom(c).limitAccount(c, ratelimit.LoginAccount, p.Email); err != nil {
		return err
	}
	w, err := h.tf.DisableTwoFactor(c.Request().Context(), p, domain.TwoFactorDisableInput{Password: req.Password,
		SecondFactor: domain.SecondFactor{Code: req.Code, RecoveryCode: req.RecoveryCode}}, requestMeta(c))
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.JSON(http.StatusOK, map[string]bool{"success": true})
}

func (h *twoFactorHandlers) login(c *echo.Context) error {
	var req struct {
		ChallengeToken string `json:"challengeToken"`
		Code           string `json:"code"`
		RecoveryCode   string `json:"recoveryCode"`
	}
	if err := Bind(c, &req); err != nil {
		return err
	}
	if req.ChallengeToken == "" {
		return invalidField("challengeToken", "is required")
	}
	pair, w, err := h.tf.CompleteLogin(c.Request().Context(), domain.TwoFactorLoginInput{ChallengeToken: req.ChallengeToken,
		SecondFactor: domain.SecondFactor{Code: req.Code, RecoveryCode: req.RecoveryCode}}, requestMeta(c))
	serverFrom(c).countLogin(err)
	if err != nil {
		return err
	}
	writePosition(c, w)
	return c.JSON(http.StatusOK, pair)
}
