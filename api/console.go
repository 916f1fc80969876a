package api

import (
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/internal/ratelimit"
)

// ConsolePath is where the web console is mounted. Its pages are HTML for
// browsers, not part of the JSON API or its OpenAPI document.
const ConsolePath = "/console"

// Console is a web UI that SetConsole mounts under ConsolePath
// (package api/console implements it).
type Console interface {
	// Mount registers the console's routes on g, a group at ConsolePath
	// that already runs the server's middleware. edge holds the server's
	// rate limits and login metrics, for the forms that need them.
	Mount(g *echo.Group, edge ConsoleEdge)
}

// ConsoleEdge hands the console the same protections the JSON endpoints
// have, so a form is no cheaper to abuse than its endpoint: the per-IP
// budgets of login, registration and account recovery (SPEC §7), the
// per-account login budget, and the login counters of /metrics.
type ConsoleEdge struct {
	// LoginIP, RegisterIP and RecoveryIP are route middleware taking one
	// request from the client address's budget; each answers
	// RATE_LIMITED (with Retry-After) when it is used up.
	LoginIP, RegisterIP, RecoveryIP echo.MiddlewareFunc
	// LoginAccount takes one attempt from the login budget of the account
	// email names, before anything looks the account up; RATE_LIMITED when
	// it is used up.
	LoginAccount func(c *echo.Context, email string) error
	// CountLogin counts a finished login attempt (err nil for success) in
	// mana_logins_total.
	CountLogin func(c *echo.Context, err error)
}

// SetConsole mounts con under ConsolePath. Like every route registration
// it must happen before the server starts serving.
func (s *Server) SetConsole(con Console) {
	con.Mount(s.echo.Group(ConsolePath), ConsoleEdge{
		LoginIP:    s.limitByIP(ratelimit.LoginIP),
		RegisterIP: s.limitByIP(ratelimit.RegisterIP),
		RecoveryIP: s.limitByIP(ratelimit.RecoveryIP),
		LoginAccount: func(c *echo.Context, email string) error {
			return serverFrom(c).limitAccount(c, ratelimit.LoginAccount, email)
		},
		CountLogin: func(c *echo.Context, err error) { serverFrom(c).countLogin(err) },
	})
}

// Problem is how the JSON API answers an error, for a handler that renders
// the error another way (the console's HTML pages).
type Problem struct {
	// Status is the HTTP status, Code the machine code and Message the
	// text safe to show the client.
	Status  int
	Code    string
	Message string
	// RetryAfter is the Retry-After header in seconds, 0 for none.
	RetryAfter int
	// Unexpected is true for errors that are no domain error: the client
	// sees a generic message and the caller should log err once.
	Unexpected bool
}

// ProblemOf classifies err exactly as the server's error handler does.
func ProblemOf(err error) Problem {
	p := classify(err)
	return Problem{Status: p.status, Code: string(p.code), Message: p.message, RetryAfter: p.retryAfter, Unexpected: p.unexpected}
}
