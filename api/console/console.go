// Package console is Mana Core's web console: server-rendered pages under
// /console/ for users (sign-up, sign-in, balance, transactions, usage,
// sessions, security, two-factor authentication, buying credits) and for
// admins and auditors (user search, a user's ledger, the event explorer
// with a live tail, projections, ledger verification, the latest signed
// checkpoint).
//
// Pages are html/template, styles and the one small script are embedded
// (assets/), and every page works without JavaScript except the live
// tail, which reads Server-Sent Events. The console calls the same domain
// ports as the JSON API, in process; it never calls the API over HTTP.
// docs/console.md describes every page and the security model: cookies,
// CSRF tokens and the Content-Security-Policy.
package console

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
)

// Config is what New needs. Identity, Credits and Key are required; a nil
// optional port leaves its pages answering 404.
type Config struct {
	// Identity signs users up and in, refreshes and checks their tokens
	// and lists their sessions and security events.
	Identity domain.Identity
	// Credits serves balances, transactions, usage and the admin
	// grant, adjust and refund forms.
	Credits domain.CreditsService
	// Recovery serves forgot-password and the verify-email and
	// reset-password landing pages.
	Recovery domain.AccountRecovery
	// TwoFactor serves enrolment and the second step of a sign-in.
	TwoFactor domain.TwoFactor
	// Purchases lists packages and purchases and starts a checkout.
	Purchases domain.Purchases
	// Checkpoints shows the latest signed checkpoint.
	Checkpoints domain.Checkpoints
	// Events backs the event explorer and its live tail.
	Events EventSource
	// Operations backs the projections and ledger verification pages.
	Operations Operations
	// Key signs CSRF tokens (HMAC-SHA256); at least 32 bytes, the same on
	// every node so a form rendered by one node posts to any other.
	Key []byte
	// SecureCookies marks every cookie Secure even on plain HTTP (set it
	// in production, where TLS ends at a proxy). Requests that arrive
	// over TLS get Secure cookies either way.
	SecureCookies bool
	// Logger receives one line per unexpected error, with the request id
	// and never a token, password or e-mail address. Nil means standard
	// error.
	Logger *slog.Logger
	// Clock is the time the pages show and compute ranges from. Nil means
	// domain.SystemClock.
	Clock domain.Clock
}

// EventSource reads the event log for the explorer and the live tail.
// Cursors are the feed's "<tx_id>-<position>" text.
type EventSource interface {
	// Query returns the events after q.After that match q, in feed order,
	// at most q.Limit of them, reading only events readable now. Its Next
	// is the cursor to continue from (the last event it looked at, which
	// may not match); More reports that it stopped before the feed's end.
	// A malformed cursor is VALIDATION_FAILED.
	Query(ctx context.Context, q EventQuery) (EventPage, error)
	// Head returns the cursor of the newest readable event, where a live
	// tail starts ("0" for an empty log).
	Head(ctx context.Context) (string, error)
}

// EventQuery filters the event log. Zero fields do not filter.
type EventQuery struct {
	After      string
	Types      []string
	StreamType string
	StreamID   string
	// From and To bound occurred_at, inclusive.
	From, To time.Time
	Limit    int
}

// EventPage is one answer of EventSource.Query.
type EventPage struct {
	Events []Event
	Next   string
	More   bool
}

// Event is one event as the explorer shows it. Personal fields of the
// payload stay encrypted, as in every export.
type Event struct {
	Cursor        string          `json:"cursor"`
	ID            uuid.UUID       `json:"eventId"`
	Type          string          `json:"type"`
	StreamType    string          `json:"streamType"`
	StreamID      string          `json:"streamId"`
	StreamVersion int64           `json:"streamVersion"`
	OccurredAt    time.Time       `json:"occurredAt"`
	Metadata      json.RawMessage `json:"-"`
	Payload       json.RawMessage `json:"-"`
}

// Operations reports on the service's machinery for admins and auditors.
type Operations interface {
	// Projections returns one status per read model.
	Projections(ctx context.Context) ([]ProjectionStatus, error)
	// VerifyLedger runs the auditor checks of `mana ledger verify` (hash
	// chains, postings, balances) and returns one line per check, the
	// first failed one last.
	VerifyLedger(ctx context.Context) ([]LedgerCheck, error)
}

// ProjectionStatus is one line of `mana projections status`.
type ProjectionStatus struct {
	Name       string
	Checkpoint string
	LagEvents  int64
	LagSeconds float64
	Failures   int
	Holder     string
}

// LedgerCheck is the outcome of one ledger check.
type LedgerCheck struct {
	Line string
	OK   bool
}

// Console serves the pages. It is safe for concurrent use.
type Console struct {
	cfg   Config
	pages *pages
	log   *slog.Logger
	clock domain.Clock
	edge  api.ConsoleEdge
}

// New checks cfg and parses the templates. It fails when a required port
// or the key is missing.
func New(cfg Config) (*Console, error) {
	if cfg.Identity == nil || cfg.Credits == nil {
		return nil, errors.New("console: Identity and Credits are required")
	}
	if len(cfg.Key) < 32 {
		return nil, errors.New("console: Key must hold at least 32 bytes")
	}
	p, err := parsePages()
	if err != nil {
		return nil, err
	}
	con := &Console{cfg: cfg, pages: p, log: cfg.Logger, clock: cfg.Clock}
	if con.log == nil {
		con.log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if con.clock == nil {
		con.clock = domain.SystemClock
	}
	return con, nil
}

// Mount implements api.Console: it registers every page on g.
func (con *Console) Mount(g *echo.Group, edge api.ConsoleEdge) {
	con.edge = edge
	g.Use(con.frame)
	g.GET("", con.home)
	g.GET("/", con.home)
	g.GET("/static/:file", serveAsset)

	// Public pages: their forms carry the pre-session CSRF token.
	pub := g.Group("", con.csrf(preSession))
	pub.GET("/login", con.loginPage)
	pub.POST("/login", con.login, edge.LoginIP)
	pub.POST("/login/2fa", con.loginTwoFactor, edge.LoginIP)
	pub.GET("/signup", con.signupPage)
	pub.POST("/signup", con.signup, edge.RegisterIP)
	pub.GET("/forgot-password", con.forgotPage)
	pub.POST("/forgot-password", con.forgot, edge.RecoveryIP)
	pub.GET("/verify-email", con.verifyPage)
	pub.POST("/verify-email", con.verify, edge.RecoveryIP)
	pub.GET("/reset-password", con.resetPage)
	pub.POST("/reset-password", con.reset, edge.RecoveryIP)

	// A user's own pages.
	me := g.Group("", con.requireUser, con.csrf(inSession))
	me.POST("/logout", con.logout)
	me.GET("/account", con.account)
	me.GET("/account/sessions", con.sessions)
	me.POST("/account/sessions/:id/revoke", con.revokeSession)
	me.GET("/account/security", con.security)
	me.POST("/account/2fa/enroll", con.enrollTwoFactor)
	me.POST("/account/2fa/confirm", con.confirmTwoFactor)
	me.POST("/account/2fa/disable", con.disableTwoFactor)
	me.GET("/account/buy", con.buyPage)
	me.POST("/account/buy", con.buy)

	// Admins and auditors read; only admins write.
	adm := g.Group("/admin", con.requireUser, con.requireReader, con.csrf(inSession))
	adm.GET("", con.adminHome)
	adm.GET("/users", con.userSearch)
	adm.GET("/users/:id", con.userLedger)
	adm.POST("/users/:id/:op", con.userCredit, requireAdmin)
	adm.GET("/events", con.events)
	adm.GET("/events/live", con.eventsLive)
	adm.GET("/events/stream", con.eventStream)
	adm.GET("/projections", con.projections)
	adm.GET("/ledger", con.ledger)
}

// home sends a signed-in user to their account and everyone else to the
// sign-in page.
func (con *Console) home(c *echo.Context) error {
	if _, ok, err := con.authenticate(c); err != nil {
		return err
	} else if ok {
		return c.Redirect(303, "/console/account")
	}
	return c.Redirect(303, "/console/login")
}
