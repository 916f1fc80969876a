package api

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
)

// Check statuses.
const (
	CheckOK       = "ok"
	CheckDegraded = "degraded"
	CheckDown     = "down"
)

// Check is the state of one dependency as /health reports it.
type Check struct {
	// Status is CheckOK, CheckDegraded or CheckDown.
	Status string `json:"status"`
	// Detail explains a status other than ok, for operators. It must not
	// contain secrets: /health is unauthenticated.
	Detail string `json:"detail,omitempty"`
}

// HealthChecker reports on the service's dependencies. cmd implements it
// over the database, NATS, the relay and the projectors. Implementations
// must be safe for concurrent use and should honour ctx, which carries a
// deadline of a few seconds.
type HealthChecker interface {
	// Ready returns nil when the service can serve requests: PostgreSQL is
	// reachable and its migrations are current. The error is logged, not
	// shown to the client.
	Ready(ctx context.Context) error
	// Checks returns the state of each dependency, keyed by a stable name
	// such as "nats" or "projection:balances".
	Checks(ctx context.Context) map[string]Check
}

// healthTimeout bounds a probe: an orchestrator that gets no answer treats
// the instance as dead, so a slow dependency must yield "not ready", not a
// hanging request.
const healthTimeout = 3 * time.Second

// live answers as long as the process serves HTTP at all.
func (s *Server) live(c *echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers 200 when the server accepts traffic, and 503 UNAVAILABLE
// while it shuts down or when the HealthChecker says it cannot serve.
func (s *Server) readyz(c *echo.Context) error {
	if !s.ready.Load() {
		return domain.Errorf(domain.CodeUnavailable, "The service is shutting down.")
	}
	if s.health != nil {
		ctx, cancel := context.WithTimeout(c.Request().Context(), healthTimeout)
		defer cancel()
		if err := s.health.Ready(ctx); err != nil {
			// The cause names hosts and migrations: operators need it, the
			// public does not get it.
			s.logger.LogAttrs(ctx, slog.LevelWarn, "not ready",
				slog.String("request_id", RequestID(c)), slog.String("error", err.Error()))
			return domain.Errorf(domain.CodeUnavailable, "The service is not ready.")
		}
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}

// healthReport is the body of GET /health.
type healthReport struct {
	Status  string           `json:"status"`
	Version string           `json:"version,omitempty"`
	Checks  map[string]Check `json:"checks"`
}

// healthz always answers 200, so that monitoring can tell "degraded" from
// "unreachable"; the body says which dependency is not ok.
func (s *Server) healthz(c *echo.Context) error {
	report := healthReport{Status: CheckOK, Version: s.version, Checks: map[string]Check{}}
	if s.health != nil {
		ctx, cancel := context.WithTimeout(c.Request().Context(), healthTimeout)
		defer cancel()
		for name, check := range s.health.Checks(ctx) {
			report.Checks[name] = check
			if check.Status != CheckOK {
				report.Status = CheckDegraded
			}
		}
	}
	return c.JSON(http.StatusOK, report)
}
