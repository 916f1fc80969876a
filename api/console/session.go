package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
)

// Cookies. All are HttpOnly, SameSite=Strict, Path=/console/ and Secure
// over TLS or with Config.SecureCookies (docs/console.md, "Security").
const (
	cookieAccess    = "mana_console_at"  // the access token
	cookieRefresh   = "mana_console_rt"  // the refresh token
	cookiePre       = "mana_console_pre" // random value the public forms' CSRF token is bound to
	cookieChallenge = "mana_console_2fa" // the challenge of a sign-in waiting for its second factor
	cookiePath      = "/console/"
)

// challengeTTL bounds the second-factor cookie; the challenge itself
// expires in the identity service.
const challengeTTL = 5 * time.Minute

// Keys of the request store.
const (
	principalKey = "mana.console.principal"
	csrfKey      = "mana.console.csrf"
)

// setCookie sets a console cookie; maxAge < 0 deletes it.
func (con *Console) setCookie(c *echo.Context, name, value string, maxAge time.Duration) {
	ck := &http.Cookie{
		Name: name, Value: value, Path: cookiePath,
		HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: con.cfg.SecureCookies || c.Scheme() == "https",
	}
	if maxAge < 0 {
		ck.MaxAge = -1
	} else {
		ck.MaxAge = int(maxAge / time.Second)
	}
	c.SetCookie(ck)
}

// startSession keeps a fresh token pair in the cookies. The refresh
// cookie lives as long as the session may; the access cookie too, so an
// expired access token is noticed and refreshed rather than lost.
func (con *Console) startSession(c *echo.Context, pair domain.TokenPair) {
	con.setCookie(c, cookieAccess, pair.AccessToken, domain.SessionTTL)
	con.setCookie(c, cookieRefresh, pair.RefreshToken, domain.SessionTTL)
}

func (con *Console) endSession(c *echo.Context) {
	con.setCookie(c, cookieAccess, "", -1)
	con.setCookie(c, cookieRefresh, "", -1)
}

func cookieValue(c *echo.Context, name string) string {
	ck, err := c.Cookie(name)
	if err != nil {
		return ""
	}
	return ck.Value
}

// authenticate returns the signed-in user. An access token that no longer
// passes (typically expired) is replaced with the refresh token, once per
// request; a session that cannot be refreshed ends, and the visitor is
// anonymous. Only infrastructure failures are errors.
func (con *Console) authenticate(c *echo.Context) (domain.Principal, bool, error) {
	if p, ok := c.Get(principalKey).(domain.Principal); ok {
		return p, true, nil
	}
	ctx := c.Request().Context()
	id := con.cfg.Identity
	if at := cookieValue(c, cookieAccess); at != "" {
		p, _, err := id.Authenticate(ctx, at)
		if err == nil {
			c.Set(principalKey, p)
			return p, true, nil
		}
		if api.ProblemOf(err).Unexpected {
			return domain.Principal{}, false, err
		}
	}
	rt := cookieValue(c, cookieRefresh)
	if rt == "" {
		return domain.Principal{}, false, nil
	}
	pair, _, err := id.Refresh(ctx, rt, requestMeta(c))
	if err == nil {
		var p domain.Principal
		if p, _, err = id.Authenticate(ctx, pair.AccessToken); err == nil {
			con.startSession(c, pair)
			c.Set(principalKey, p)
			return p, true, nil
		}
	}
	if api.ProblemOf(err).Unexpected {
		return domain.Principal{}, false, err
	}
	con.endSession(c)
	return domain.Principal{}, false, nil
}

// principal returns the user requireUser let through.
func principal(c *echo.Context) domain.Principal {
	p, _ := c.Get(principalKey).(domain.Principal)
	return p
}

// requireUser sends anonymous visitors to the sign-in page.
func (con *Console) requireUser(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		_, ok, err := con.authenticate(c)
		if err != nil {
			return err
		}
		if !ok {
			if c.Request().Method == http.MethodGet {
				return c.Redirect(http.StatusSeeOther, "/console/login")
			}
			return domain.Errorf(domain.CodeUnauthorized, "Your session has ended. Sign in again.")
		}
		return next(c)
	}
}

// canRead reports whether p may see the admin pages: admins and auditors,
// exactly as GET /api/v1/events decides.
func canRead(p domain.Principal) bool { return api.CanReadEvents(p) }

// requireReader admits admins and auditors.
func (con *Console) requireReader(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		if !canRead(principal(c)) {
			return domain.Errorf(domain.CodeForbidden, "These pages need the admin or auditor role.")
		}
		return next(c)
	}
}

// requireAdmin admits admins only: auditors read, never write.
func requireAdmin(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		if !principal(c).IsAdmin() {
			return domain.Errorf(domain.CodeForbidden, "This action needs the admin role.")
		}
		return next(c)
	}
}

// csrfScope says what a form's CSRF token is bound to.
type csrfScope int

const (
	// preSession: the public forms, bound to the random cookiePre.
	preSession csrfScope = iota
	// inSession: everything behind sign-in, bound to the session id.
	inSession
)

// csrf issues the token the page's forms carry and checks it, in constant
// time, on every POST: a missing or wrong token is 403 FORBIDDEN. The token
// is HMAC-SHA256(Key, scope ‖ binding), so it needs no server-side state
// and holds on every node.
func (con *Console) csrf(scope csrfScope) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c *echo.Context) error {
			var binding string
			if scope == inSession {
				binding = "session:" + principal(c).SessionID.String()
			} else {
				v := cookieValue(c, cookiePre)
				if v == "" {
					v = randomToken(16)
					con.setCookie(c, cookiePre, v, domain.SessionTTL)
				}
				binding = "pre:" + v
			}
			want := con.sign(binding)
			if c.Request().Method == http.MethodPost {
				got := c.FormValue("csrf")
				if !hmac.Equal([]byte(got), []byte(want)) {
					return domain.Errorf(domain.CodeForbidden, "The form has expired or did not come from this site. Reload the page and try again.")
				}
			}
			c.Set(csrfKey, want)
			return next(c)
		}
	}
}

func (con *Console) sign(s string) string {
	m := hmac.New(sha256.New, con.cfg.Key)
	m.Write([]byte("mana console csrf\x00" + s))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// randomToken returns n random bytes, base64url.
func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func requestMeta(c *echo.Context) domain.RequestMeta {
	return domain.RequestMeta{RequestID: api.RequestID(c), IP: c.RealIP(), UserAgent: c.Request().UserAgent()}
}
