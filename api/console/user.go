package console

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
)

// Paging and ranges of the account pages.
const (
	txPageSize = 20
	usageDays  = 30
	eventsShow = 50
)

// --- sign-in, sign-up and the landing pages ---

// loginForm is what the sign-in page shows again after a failure.
type loginForm struct {
	Email string
}

func (con *Console) loginPage(c *echo.Context) error {
	v := view{Data: loginForm{}}
	switch c.QueryParam("notice") {
	case "signed-out":
		v.Notice = "You are signed out."
	case "verify":
		v.Notice = "Your account is ready. Confirm your e-mail address with the link we sent, then sign in."
	case "reset":
		v.Notice = "Your password is changed. Sign in with the new one."
	}
	return con.render(c, http.StatusOK, "login", v)
}

func (con *Console) login(c *echo.Context) error {
	email, password := strings.TrimSpace(c.FormValue("email")), c.FormValue("password")
	v := view{Data: loginForm{Email: email}}
	if email == "" || password == "" {
		return con.invalid(c, "login", "Enter your e-mail address and your password.", v)
	}
	if err := con.edge.LoginAccount(c, email); err != nil {
		return con.formError(c, "login", v, err)
	}
	pair, _, err := con.cfg.Identity.Login(c.Request().Context(),
		domain.LoginInput{Email: email, Password: password, DeviceName: "Web console"}, requestMeta(c))
	var ch *domain.TwoFactorChallenge
	if errors.As(err, &ch) {
		con.setCookie(c, cookieChallenge, ch.ChallengeToken, challengeTTL)
		return con.render(c, http.StatusOK, "login2fa", view{})
	}
	con.edge.CountLogin(c, err)
	if err != nil {
		return con.formError(c, "login", v, err)
	}
	con.startSession(c, pair)
	return c.Redirect(http.StatusSeeOther, landing(pair.User.Role))
}

// landing is where a fresh session starts: admins and auditors at the
// admin pages, users at their account.
func landing(role string) string {
	if role == domain.RoleAdmin || role == domain.RoleAuditor {
		return "/console/admin"
	}
	return "/console/account"
}

func (con *Console) loginTwoFactor(c *echo.Context) error {
	if con.cfg.TwoFactor == nil {
		return domain.Errorf(domain.CodeNotFound, "Two-factor sign-in is not available.")
	}
	challenge := cookieValue(c, cookieChallenge)
	if challenge == "" {
		return con.invalid(c, "login", "The sign-in took too long. Start again.", view{Data: loginForm{}})
	}
	code := strings.TrimSpace(c.FormValue("code"))
	if code == "" {
		return con.invalid(c, "login2fa", "Enter the code from your authenticator app or a recovery code.", view{})
	}
	sf := domain.SecondFactor{Code: code}
	if len(code) > 8 { // authenticator codes are 6 digits; recovery codes are longer
		sf = domain.SecondFactor{RecoveryCode: code}
	}
	pair, _, err := con.cfg.TwoFactor.CompleteLogin(c.Request().Context(),
		domain.TwoFactorLoginInput{ChallengeToken: challenge, SecondFactor: sf}, requestMeta(c))
	con.edge.CountLogin(c, err)
	if err != nil {
		if code := domain.ErrorCode(err); code == domain.CodeTokenInvalid || code == domain.CodeTokenExpired {
			con.setCookie(c, cookieChallenge, "", -1)
			return con.formError(c, "login", view{Data: loginForm{}}, err)
		}
		return con.formError(c, "login2fa", view{}, err)
	}
	con.setCookie(c, cookieChallenge, "", -1)
	con.startSession(c, pair)
	return c.Redirect(http.StatusSeeOther, landing(pair.User.Role))
}

// signupForm is what the sign-up page shows again after a failure.
type signupForm struct {
	Name, Email string
}

func (con *Console) signupPage(c *echo.Context) error {
	return con.render(c, http.StatusOK, "signup", view{Data: signupForm{}})
}

// signup registers the account and signs it in. When the service requires
// a verified address first, the user is sent to sign in after verifying.
func (con *Console) signup(c *echo.Context) error {
	f := signupForm{Name: strings.TrimSpace(c.FormValue("name")), Email: strings.TrimSpace(c.FormValue("email"))}
	password := c.FormValue("password")
	v := view{Data: f}
	if f.Email == "" || password == "" {
		return con.invalid(c, "signup", "Enter an e-mail address and a password.", v)
	}
	if password != c.FormValue("password2") {
		return con.invalid(c, "signup", "The two passwords differ.", v)
	}
	ctx, meta := c.Request().Context(), requestMeta(c)
	if _, _, err := con.cfg.Identity.Register(ctx, domain.RegisterInput{Email: f.Email, Password: password, Name: f.Name}, meta); err != nil {
		return con.formError(c, "signup", v, err)
	}
	pair, _, err := con.cfg.Identity.Login(ctx, domain.LoginInput{Email: f.Email, Password: password, DeviceName: "Web console"}, meta)
	con.edge.CountLogin(c, err)
	if domain.ErrorCode(err) == domain.CodeEmailNotVerified {
		return c.Redirect(http.StatusSeeOther, "/console/login?notice=verify")
	}
	if err != nil {
		return err
	}
	con.startSession(c, pair)
	return c.Redirect(http.StatusSeeOther, "/console/account")
}

func (con *Console) recovery() (domain.AccountRecovery, error) {
	if con.cfg.Recovery == nil {
		return nil, domain.Errorf(domain.CodeNotFound, "Account recovery is not available.")
	}
	return con.cfg.Recovery, nil
}

func (con *Console) forgotPage(c *echo.Context) error {
	return con.render(c, http.StatusOK, "forgot", view{})
}

// forgot answers the same for every address, known or not (SPEC §5).
func (con *Console) forgot(c *echo.Context) error {
	acc, err := con.recovery()
	if err != nil {
		return err
	}
	email := strings.TrimSpace(c.FormValue("email"))
	if email == "" {
		return con.invalid(c, "forgot", "Enter your e-mail address.", view{})
	}
	if err := acc.ForgotPassword(c.Request().Context(), email, requestMeta(c)); err != nil {
		return con.formError(c, "forgot", view{}, err)
	}
	return con.render(c, http.StatusOK, "forgot", view{Notice: "If an account exists for this address, a password reset link is on its way."})
}

// tokenForm carries a mailed token from the landing page's URL into its
// form, so the token is used by a deliberate POST and never by a mail
// scanner prefetching the link.
type tokenForm struct {
	Token string
}

func (con *Console) verifyPage(c *echo.Context) error {
	return con.render(c, http.StatusOK, "verify", view{Data: tokenForm{Token: c.QueryParam("token")}})
}

func (con *Console) verify(c *echo.Context) error {
	acc, err := con.recovery()
	if err != nil {
		return err
	}
	f := tokenForm{Token: strings.TrimSpace(c.FormValue("token"))}
	if f.Token == "" {
		return con.invalid(c, "verify", "The link is incomplete: open the link from the e-mail again.", view{Data: f})
	}
	if _, err := acc.VerifyEmail(c.Request().Context(), f.Token, requestMeta(c)); err != nil {
		return con.formError(c, "verify", view{Data: tokenForm{}}, err)
	}
	return con.render(c, http.StatusOK, "verify", view{Notice: "Your e-mail address is confirmed.", Data: tokenForm{}})
}

func (con *Console) resetPage(c *echo.Context) error {
	return con.render(c, http.StatusOK, "reset", view{Data: tokenForm{Token: c.QueryParam("token")}})
}

func (con *Console) reset(c *echo.Context) error {
	acc, err := con.recovery()
	if err != nil {
		return err
	}
	f := tokenForm{Token: strings.TrimSpace(c.FormValue("token"))}
	password := c.FormValue("password")
	switch {
	case f.Token == "":
		return con.invalid(c, "reset", "The link is incomplete: open the link from the e-mail again.", view{Data: f})
	case password == "" || password != c.FormValue("password2"):
		return con.invalid(c, "reset", "Enter the new password twice.", view{Data: f})
	}
	if _, err := acc.ResetPassword(c.Request().Context(), f.Token, password, requestMeta(c)); err != nil {
		return con.formError(c, "reset", view{Data: f}, err)
	}
	return c.Redirect(http.StatusSeeOther, "/console/login?notice=reset")
}

// logout revokes the session and forgets the cookies.
func (con *Console) logout(c *echo.Context) error {
	if _, err := con.cfg.Identity.Logout(c.Request().Context(), principal(c), requestMeta(c)); err != nil &&
		api.ProblemOf(err).Unexpected {
		return err
	}
	con.endSession(c)
	return c.Redirect(http.StatusSeeOther, "/console/login?notice=signed-out")
}

// --- my account ---

// accountData is the account page: balance, usage and one page of
// transactions.
type accountData struct {
	Balance      domain.Balance
	Transactions []domain.Transaction
	Offset       int
	Prev, Next   int // offsets of the neighbouring pages; -1 for none
	Usage        usageChart
}

func (con *Console) account(c *echo.Context) error {
	p := principal(c)
	ctx := c.Request().Context()
	offset, err := offsetParam(c)
	if err != nil {
		return err
	}
	bal, err := con.cfg.Credits.Balance(ctx, p.UserID, "")
	if err != nil {
		return err
	}
	// One more than a page tells whether an older page exists.
	txs, err := con.cfg.Credits.Transactions(ctx, p.UserID, txPageSize+1, offset, "")
	if err != nil {
		return err
	}
	to := con.clock.Now().UTC()
	from := to.AddDate(0, 0, -(usageDays - 1)).Truncate(24 * time.Hour)
	usage, err := con.cfg.Credits.Usage(ctx, p.UserID, from, to, "")
	if err != nil {
		return err
	}
	d := accountData{Balance: bal, Offset: offset, Prev: -1, Next: -1, Usage: newUsageChart(usage, usageDays)}
	if len(txs) > txPageSize {
		txs, d.Next = txs[:txPageSize], offset+txPageSize
	}
	if offset > 0 {
		d.Prev = max(0, offset-txPageSize)
	}
	d.Transactions = txs
	return con.render(c, http.StatusOK, "account", view{Data: d})
}

// offsetParam reads ?offset= (default 0).
func offsetParam(c *echo.Context) (int, error) {
	v := c.QueryParam("offset")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 1<<30 {
		return 0, domain.Errorf(domain.CodeValidationFailed, "The page offset must be a non-negative integer.")
	}
	return n, nil
}

func (con *Console) sessions(c *echo.Context) error {
	list, err := con.cfg.Identity.Sessions(c.Request().Context(), principal(c), "")
	if err != nil {
		return err
	}
	v := view{Data: list}
	if c.QueryParam("notice") == "revoked" {
		v.Notice = "The session is revoked: that device is signed out."
	}
	return con.render(c, http.StatusOK, "sessions", v)
}

// revokeSession ends one of the user's sessions; ending the current one
// signs the user out here as well.
func (con *Console) revokeSession(c *echo.Context) error {
	p := principal(c)
	sid, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return domain.Errorf(domain.CodeNotFound, "Session not found.")
	}
	if _, err := con.cfg.Identity.RevokeSession(c.Request().Context(), p, sid, requestMeta(c)); err != nil {
		return err
	}
	if sid == p.SessionID {
		con.endSession(c)
		return c.Redirect(http.StatusSeeOther, "/console/login?notice=signed-out")
	}
	return c.Redirect(http.StatusSeeOther, "/console/account/sessions?notice=revoked")
}

// securityData is the security page: the log and the 2FA forms, plus
// what an enrolment step produced.
type securityData struct {
	Events []domain.SecurityEventView
	// QR and Secret show a pending enrolment; RecoveryCodes a confirmed one.
	QR            qrCode
	Secret        string
	RecoveryCodes []string
}

func (con *Console) securityView(c *echo.Context, d securityData) (view, error) {
	list, err := con.cfg.Identity.SecurityEvents(c.Request().Context(), principal(c), "", eventsShow)
	if err != nil {
		return view{}, err
	}
	d.Events = list
	return view{Data: d}, nil
}

func (con *Console) security(c *echo.Context) error {
	v, err := con.securityView(c, securityData{})
	if err != nil {
		return err
	}
	return con.render(c, http.StatusOK, "security", v)
}

func (con *Console) twoFactor() (domain.TwoFactor, error) {
	if con.cfg.TwoFactor == nil {
		return nil, domain.Errorf(domain.CodeNotFound, "Two-factor authentication is not available.")
	}
	return con.cfg.TwoFactor, nil
}

// securityResult renders the security page after a 2FA step: err (a
// domain error) as the page's error, else notice.
func (con *Console) securityResult(c *echo.Context, d securityData, notice string, stepErr error) error {
	v, err := con.securityView(c, d)
	if err != nil {
		return err
	}
	if stepErr != nil {
		return con.formError(c, "security", v, stepErr)
	}
	v.Notice = notice
	return con.render(c, http.StatusOK, "security", v)
}

// enrollTwoFactor starts an enrolment and shows its QR code, drawn on the
// server as SVG; the secret is shown too, for typing it in.
func (con *Console) enrollTwoFactor(c *echo.Context) error {
	tf, err := con.twoFactor()
	if err != nil {
		return err
	}
	e, err := tf.EnrollTwoFactor(c.Request().Context(), principal(c), requestMeta(c))
	if err != nil {
		return con.securityResult(c, securityData{}, "", err)
	}
	qr, err := newQRCode(e.OtpauthURI)
	if err != nil {
		return err
	}
	return con.securityResult(c, securityData{QR: qr, Secret: e.Secret}, "Scan the code with your authenticator app, then enter the code it shows.", nil)
}

func (con *Console) confirmTwoFactor(c *echo.Context) error {
	tf, err := con.twoFactor()
	if err != nil {
		return err
	}
	code := strings.TrimSpace(c.FormValue("code"))
	if code == "" {
		return con.securityResult(c, securityData{}, "", domain.Errorf(domain.CodeValidationFailed, "Enter the code your authenticator app shows."))
	}
	out, _, err := tf.ConfirmTwoFactor(c.Request().Context(), principal(c), code, requestMeta(c))
	if err != nil {
		return con.securityResult(c, securityData{}, "", err)
	}
	return con.securityResult(c, securityData{RecoveryCodes: out.RecoveryCodes},
		"Two-factor authentication is on. Keep these recovery codes somewhere safe: they are shown only now.", nil)
}

func (con *Console) disableTwoFactor(c *echo.Context) error {
	tf, err := con.twoFactor()
	if err != nil {
		return err
	}
	password, code := c.FormValue("password"), strings.TrimSpace(c.FormValue("code"))
	if password == "" || code == "" {
		return con.securityResult(c, securityData{}, "", domain.Errorf(domain.CodeValidationFailed, "Enter your password and a code from your authenticator app."))
	}
	p := principal(c)
	if err := con.edge.LoginAccount(c, p.Email); err != nil {
		return con.securityResult(c, securityData{}, "", err)
	}
	_, err = tf.DisableTwoFactor(c.Request().Context(), p, domain.TwoFactorDisableInput{Password: password,
		SecondFactor: domain.SecondFactor{Code: code}}, requestMeta(c))
	if err != nil {
		return con.securityResult(c, securityData{}, "", err)
	}
	return con.securityResult(c, securityData{}, "Two-factor authentication is off.", nil)
}

// --- buying credits ---

// buyData is the buy page: packages on sale and the user's purchases.
type buyData struct {
	Packages  []domain.Package
	Purchases []domain.PurchaseView
	// Started is a checkout to continue at the payment provider.
	Started *domain.PurchaseStarted
}

func (con *Console) purchases() (domain.Purchases, error) {
	if con.cfg.Purchases == nil {
		return nil, domain.Errorf(domain.CodeNotFound, "Buying credits is not available.")
	}
	return con.cfg.Purchases, nil
}

func (con *Console) buyView(c *echo.Context) (view, buyData, error) {
	ps, err := con.purchases()
	if err != nil {
		return view{}, buyData{}, err
	}
	ctx := c.Request().Context()
	var d buyData
	if d.Packages, err = ps.Packages(ctx); err != nil {
		return view{}, d, err
	}
	if d.Purchases, err = ps.List(ctx, principal(c).UserID, ""); err != nil {
		return view{}, d, err
	}
	return view{Data: d}, d, nil
}

func (con *Console) buyPage(c *echo.Context) error {
	v, _, err := con.buyView(c)
	if err != nil {
		return err
	}
	return con.render(c, http.StatusOK, "buy", v)
}

// buy starts a Stripe Checkout and shows a link to it. The page links
// rather than redirects: form-action 'self' forbids a form's redirect to
// another origin.
func (con *Console) buy(c *echo.Context) error {
	v, d, err := con.buyView(c)
	if err != nil {
		return err
	}
	pkg, err := uuid.Parse(c.FormValue("packageId"))
	if err != nil {
		return con.invalid(c, "buy", "Choose a package.", v)
	}
	started, _, err := con.cfg.Purchases.Start(c.Request().Context(), principal(c).UserID, pkg, true, requestMeta(c))
	if err != nil {
		return con.formError(c, "buy", v, err)
	}
	d.Started = &started
	return con.render(c, http.StatusOK, "buy", view{Data: d})
}
