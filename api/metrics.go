package api

import (
	"encoding/json"

	"github.com/labstack/echo/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/domain"
)

// OtherApp is the app label of credits spent for an app id that is not
// registered (has no service key): client-chosen ids must not create series.
const OtherApp = "other"

// Login results, the result label of mana_logins_total.
const (
	LoginSucceeded = "succeeded"
	LoginFailed    = "failed"
)

// edgeMetrics are the business counters the HTTP edge sees: logins, credits
// spent per app and rate-limit rejections (SPEC §7).
type edgeMetrics struct {
	logins      *prometheus.CounterVec
	spent       *prometheus.CounterVec
	rateLimited *prometheus.CounterVec
}

func newEdgeMetrics(reg *prometheus.Registry) *edgeMetrics {
	m := &edgeMetrics{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mana_logins_total",
			Help: `Password logins answered, by result (succeeded, failed) and, for failures, the error code; "" for successes.`,
		}, []string{"result", "code"}),
		spent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mana_credits_spent_total",
			Help: `Credits spent (direct spends and hold captures, replays excluded), by app id; unregistered app ids are counted as "other".`,
		}, []string{"app"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mana_rate_limited_total",
			Help: "Requests rejected with 429 RATE_LIMITED, by rate-limit policy.",
		}, []string{"policy"}),
	}
	m.logins = registerOrReuse(reg, m.logins)
	m.spent = registerOrReuse(reg, m.spent)
	m.rateLimited = registerOrReuse(reg, m.rateLimited)
	// Known label values start at zero, so rate() and increase() work from
	// the first scrape instead of from the first event.
	m.logins.WithLabelValues(LoginSucceeded, "")
	m.logins.WithLabelValues(LoginFailed, string(domain.CodeInvalidCredentials))
	m.spent.WithLabelValues(OtherApp)
	return m
}

// RateLimited counts one request rejected by the rate-limit policy named
// policy (such as "login_ip"). The rate limiter calls it for every 429 it
// answers; policy names must come from a fixed set, never from the request.
// It is safe for concurrent use.
func (s *Server) RateLimited(policy string) {
	s.edge.rateLimited.WithLabelValues(policy).Inc()
}

// countLogin records the outcome of a password login.
func (s *Server) countLogin(err error) {
	if s == nil {
		return
	}
	if err == nil {
		s.edge.logins.WithLabelValues(LoginSucceeded, "").Inc()
		return
	}
	s.edge.logins.WithLabelValues(LoginFailed, string(classify(err).code)).Inc()
}

// countSpend adds the credits a successful spend or capture receipt moved to
// its app's counter. Replays moved nothing new and are not counted.
func countSpend(c *echo.Context, r domain.Receipt) {
	s := serverFrom(c)
	if s == nil || r.Replayed || r.Status < 200 || r.Status >= 300 {
		return
	}
	var body struct {
		Transaction *struct {
			Amount int64  `json:"amount"`
			AppID  string `json:"appId"`
		} `json:"transaction"`
	}
	if json.Unmarshal(r.Body, &body) != nil || body.Transaction == nil || body.Transaction.Amount <= 0 {
		return
	}
	s.edge.spent.WithLabelValues(s.appLabel(c, body.Transaction.AppID)).Add(float64(body.Transaction.Amount))
}

// appLabel returns app when it is a registered app id and OtherApp
// otherwise. An app authenticated by its service key is registered by
// definition; any other id is checked with Config.KnownApp.
func (s *Server) appLabel(c *echo.Context, app string) string {
	if app == "" {
		return OtherApp
	}
	if caller, ok := c.Get(callerKey).(domain.Caller); ok && caller.Kind == "app" && caller.AppID == app {
		return app
	}
	if s.knownApp != nil && s.knownApp(c.Request().Context(), app) {
		return app
	}
	return OtherApp
}
