package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/manacore/mana/domain"
)

// DefaultBodyLimit is the request body limit when Config.BodyLimit is zero.
const DefaultBodyLimit int64 = 1 << 20

// DefaultRequestTimeout bounds a request's context when
// Config.RequestTimeout is zero.
const DefaultRequestTimeout = 30 * time.Second

// Config configures New. The zero value is usable: every field has a default.
type Config struct {
	// BodyLimit is the largest request body accepted, in bytes; larger
	// bodies are answered with 413 PAYLOAD_TOO_LARGE. Zero or negative means
	// DefaultBodyLimit (1 MiB).
	BodyLimit int64
	// Logger receives the request log and the one log line per unexpected
	// error. Nil means a JSON logger on standard error.
	Logger *slog.Logger
	// Registry receives the HTTP metrics and is what /metrics exposes. Nil
	// means a registry of the server's own, with the Go and process
	// collectors registered on it; a registry passed in is used as is.
	Registry *prometheus.Registry
	// Health backs /health and /health/ready. Nil means a service with no
	// dependencies: always ready, no checks.
	Health HealthChecker
	// Version is the build version, reported by /health and as the label of
	// mana_build_info. Empty leaves both out.
	Version string
	// Clock stamps error envelopes. Nil means domain.SystemClock.
	Clock domain.Clock
	// Identity serves the auth endpoints; nil leaves them out.
	Identity domain.Identity
	// CORSOrigins is the CORS allow-list (CORS_ORIGINS): origins such as
	// "https://app.example.com" whose pages may call the API with
	// credentials. Empty allows no cross-origin caller. New panics on an
	// entry ValidateCORSOrigins refuses.
	CORSOrigins []string
	// RequestTimeout bounds the context of every request, so a handler
	// stuck on a dependency gives up (503 UNAVAILABLE) instead of holding
	// its connection and database session. Zero means
	// DefaultRequestTimeout; negative means no bound.
	RequestTimeout time.Duration
	// KnownApp reports whether app is a registered app id, one whose
	// spends mana_credits_spent_total labels by name; others are counted as
	// "other". It is called on every spend made with a user's token (an app
	// using its service key is registered by definition), so it must be
	// cheap, typically a cached set. Nil counts all of those as "other".
	KnownApp func(ctx context.Context, app string) bool
}

// Server is the HTTP edge: an Echo instance with Mana Core's middleware, error
// handler and operational routes. Register further routes through API (or
// Echo) before serving; like Echo itself, routes must not be added while
// requests are being served. SetReady is safe for concurrent use.
type Server struct {
	echo     *echo.Echo
	api      *echo.Group
	logger   *slog.Logger
	registry *prometheus.Registry
	health   HealthChecker
	version  string
	clock    domain.Clock
	metrics  *httpMetrics
	edge     *edgeMetrics
	ready    atomic.Bool
	identity domain.Identity
	knownApp func(ctx context.Context, app string) bool
	rate     atomic.Pointer[rateLimiting] // nil: no rate limits (see SetRateLimits)
}

// New builds a Server from cfg, applying the defaults documented on Config.
// The server starts ready. It panics only when cfg.Registry already holds a
// collector that clashes with the HTTP metrics, or cfg.CORSOrigins holds an
// invalid origin.
func New(cfg Config) *Server {
	if cfg.BodyLimit <= 0 {
		cfg.BodyLimit = DefaultBodyLimit
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if err := ValidateCORSOrigins(cfg.CORSOrigins); err != nil {
		panic("api: CORSOrigins: " + err.Error())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if cfg.Clock == nil {
		cfg.Clock = domain.SystemClock
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
		cfg.Registry.MustRegister(
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		)
	}

	s := &Server{
		logger:   cfg.Logger,
		registry: cfg.Registry,
		health:   cfg.Health,
		version:  cfg.Version,
		clock:    cfg.Clock,
		identity: cfg.Identity,
		knownApp: cfg.KnownApp,
	}
	s.ready.Store(true)
	s.metrics = newHTTPMetrics(cfg.Registry, cfg.Version)
	s.edge = newEdgeMetrics(cfg.Registry)

	s.echo = echo.NewWithConfig(echo.Config{
		Logger:           cfg.Logger,
		HTTPErrorHandler: s.handleError,
		// Without overwriting, registering the same method and path twice
		// panics at startup instead of silently replacing a handler.
		Router: echo.NewRouter(echo.RouterConfig{}),
	})
	// Order matters: the request id exists before anything logs; headers are
	// set before anything writes; observe sees the final status because it
	// runs the error handler itself; recover sits inside observe so a panic
	// is answered, logged and counted like any other error; CORS sets its
	// headers before anything can fail, so a page may read error answers
	// too, and answers preflights itself; the body limit comes last so its
	// 413 takes the same path, and so a route's own BodyLimit finds the
	// server-wide limiter already in place.
	chain := []echo.MiddlewareFunc{s.requestID, securityHeaders, s.observe, recoverPanics}
	if mw := cors(cfg.CORSOrigins); mw != nil {
		chain = append(chain, mw)
	}
	if cfg.RequestTimeout > 0 {
		chain = append(chain, requestTimeout(cfg.RequestTimeout))
	}
	s.echo.Use(append(chain, BodyLimit(cfg.BodyLimit))...)
	s.api = s.echo.Group("/api/v1")
	s.routes()
	return s
}

// routes registers everything this package serves. Feature routes are added
// by their own packages through API.
func (s *Server) routes() {
	s.echo.GET("/health/live", s.live)
	s.echo.GET("/health/ready", s.readyz)
	s.echo.GET("/health", s.healthz)
	s.echo.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{
		Registry: s.registry, // counts scrape failures in promhttp_metric_handler_errors_total
	})))
	s.api.GET("/openapi.json", serveOpenAPI)
	if s.identity != nil {
		s.authRoutes(s.identity)
	}
}

// Handler returns the http.Handler to serve, with all middleware applied.
func (s *Server) Handler() http.Handler { return s.echo }

// Echo returns the underlying Echo instance, for registering routes outside
// /api/v1 (such as /.well-known) or setting Echo options like IPExtractor.
func (s *Server) Echo() *echo.Echo { return s.echo }

// API returns the /api/v1 route group. Every route added to it must also be
// described in openapi.json; the apitest client fails tests that reach an
// undocumented one.
func (s *Server) API() *echo.Group { return s.api }

// Registry returns the Prometheus registry that /metrics exposes, so other
// packages can register their collectors on the same endpoint.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

// SetReady switches readiness. With false, /health/ready answers 503 whatever
// the HealthChecker says, so a load balancer stops sending traffic before the
// server shuts down. It is safe to call concurrently with requests.
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// Context keys. Echo's store is per request; the request context carries the
// id further down, into ports and their logs.
const (
	serverKey    = "mana.api.server"
	requestIDKey = "mana.api.request_id"
	errorCodeKey = "mana.api.error_code"
	limiterKey   = "mana.api.body_limiter"
)

type requestIDContextKey struct{}

// RequestID returns the id of the request c serves, or "" outside a Server.
func RequestID(c *echo.Context) string {
	id, _ := c.Get(requestIDKey).(string)
	return id
}

// RequestIDFromContext returns the request id carried by ctx, or "" when ctx
// does not come from a request served by a Server. Ports use it to correlate
// their own log lines with the request log.
func RequestIDFromContext(ctx context.Context) string {
	id, _ := ctx.Value(requestIDContextKey{}).(string)
	return id
}

// serverFrom returns the Server handling c, or nil when c did not pass
// through a Server's middleware (a handler tested on its own).
func serverFrom(c *echo.Context) *Server {
	s, _ := c.Get(serverKey).(*Server)
	return s
}

// loggerAndClock returns s's logger and clock, falling back to Echo's logger
// and the system clock so that helpers also work on a nil Server.
func (s *Server) loggerAndClock(c *echo.Context) (*slog.Logger, domain.Clock) {
	if s == nil {
		return c.Logger(), domain.SystemClock
	}
	return s.logger, s.clock
}

// requestID adopts the client's X-Request-Id when it is a plausible id, and
// otherwise generates one. A client-chosen id is useful for tracing across
// services, but it lands in logs, so anything that could forge log content
// or bloat it is replaced.
func (s *Server) requestID(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		req := c.Request()
		id := req.Header.Get(echo.HeaderXRequestID)
		if !validRequestID(id) {
			id = uuid.NewString()
		}
		c.Response().Header().Set(echo.HeaderXRequestID, id)
		c.Set(requestIDKey, id)
		c.Set(serverKey, s)
		c.SetRequest(req.WithContext(context.WithValue(req.Context(), requestIDContextKey{}, id)))
		return next(c)
	}
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch b := id[i]; {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9',
			b == '-', b == '_', b == '.', b == ':':
		default:
			return false
		}
	}
	return true
}

// Content Security Policies (SPEC §7). Every response carries
// APIContentSecurityPolicy: JSON needs no sources at all, and a document
// that a browser might still render (an error page, an injected payload)
// can load nothing, run nothing and be framed by no one. An HTML response
// gets HTMLContentSecurityPolicy instead, with an explicit script-src that
// allows only the service's own scripts (no inline script, no eval); a
// handler that needs another policy sets Content-Security-Policy itself.
const (
	APIContentSecurityPolicy  = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
	HTMLContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
		"font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

// securityHeaders sets the headers every response carries. They are set
// before the handler runs, so error responses get them too.
func securityHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		h := c.Response().Header()
		h.Set(echo.HeaderXContentTypeOptions, "nosniff")
		h.Set(echo.HeaderXFrameOptions, "DENY")
		h.Set(echo.HeaderReferrerPolicy, "no-referrer")
		h.Set(echo.HeaderContentSecurityPolicy, APIContentSecurityPolicy)
		if r, err := echo.UnwrapResponse(c.Response()); err == nil {
			// Just before the status line, when the content type is known.
			r.Before(func() {
				if strings.HasPrefix(h.Get(echo.HeaderContentType), "text/html") &&
					h.Get(echo.HeaderContentSecurityPolicy) == APIContentSecurityPolicy {
					h.Set(echo.HeaderContentSecurityPolicy, HTMLContentSecurityPolicy)
				}
			})
		}
		if c.Scheme() == "https" {
			h.Set(echo.HeaderStrictTransportSecurity, "max-age=63072000; includeSubDomains")
		}
		if strings.HasPrefix(c.Request().URL.Path, "/api/") {
			// API answers carry balances, tokens and personal data: no
			// shared or browser cache may keep them.
			h.Set(echo.HeaderCacheControl, "no-store")
		}
		return next(c)
	}
}

// requestTimeout bounds each request's context by d. Database queries and
// other calls that honour the context give up when it expires; the error
// handler answers what they return as 503 UNAVAILABLE (see classify). The
// http.Server's own timeouts bound reading the request and writing the
// response.
func requestTimeout(d time.Duration) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c *echo.Context) error {
			req := c.Request()
			ctx, cancel := context.WithTimeout(req.Context(), d)
			defer cancel()
			c.SetRequest(req.WithContext(ctx))
			return next(c)
		}
	}
}

// recoverPanics turns a panic into an error carrying the stack, which the
// error handler logs and answers as 500. http.ErrAbortHandler is re-raised
// because net/http uses it to abort a response on purpose.
func recoverPanics(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) (err error) {
		defer func() {
			if r := recover(); r != nil {
				if r == http.ErrAbortHandler { //nolint:errorlint // sentinel compared as net/http does
					panic(r)
				}
				err = &panicError{value: r, stack: debug.Stack()}
			}
		}()
		return next(c)
	}
}

// observe runs the error handler itself, so that the request log and the RED
// metrics see the status the client actually got, then records both.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		start := time.Now()
		if err := next(c); err != nil {
			s.handleError(c, err)
		}
		elapsed := time.Since(start)

		resp, status := echo.ResolveResponseStatus(c.Response(), nil)
		req := c.Request()
		method := methodLabel(req.Method)
		route := routeLabel(c)
		s.metrics.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
		s.metrics.duration.WithLabelValues(method, route).Observe(elapsed.Seconds())

		// Only the route template is logged, never the raw path or query:
		// either may carry tokens or e-mail addresses.
		attrs := []slog.Attr{
			slog.String("request_id", RequestID(c)),
			slog.String("method", method),
			slog.String("route", route),
			slog.Int("status", status),
			slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
		}
		if resp != nil {
			attrs = append(attrs, slog.Int64("bytes", resp.Size))
		}
		if code, ok := c.Get(errorCodeKey).(string); ok {
			attrs = append(attrs, slog.String("error_code", code))
		}
		s.logger.LogAttrs(req.Context(), requestLogLevel(route, status), "http request", attrs...)
		return nil
	}
}

// requestLogLevel keeps probes and scrapes, which arrive every few seconds,
// out of the default log unless they fail.
func requestLogLevel(route string, status int) slog.Level {
	switch {
	case status >= 500:
		return slog.LevelWarn
	case status < 400 && (strings.HasPrefix(route, "/health") || route == "/metrics"):
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// unmatchedRoute labels requests that matched no route, so that scanners
// probing random paths cannot blow up the metric's cardinality.
const unmatchedRoute = "unmatched"

// routeLabel returns the route template the request matched.
func routeLabel(c *echo.Context) string {
	ri := c.RouteInfo()
	if ri.Name == echo.NotFoundRouteName || ri.Method == echo.RouteNotFound || c.Path() == "" {
		return unmatchedRoute
	}
	return c.Path()
}

// methodLabel bounds the method label to the standard methods, for the same
// reason as unmatchedRoute.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "OTHER"
}

// httpMetrics are the RED metrics of the HTTP edge.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newHTTPMetrics(reg *prometheus.Registry, version string) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mana_http_requests_total",
			Help: "HTTP requests served, by method, route template and status.",
		}, []string{"method", "route", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mana_http_request_duration_seconds",
			Help: "Time from routing to the end of the response, by method and route template.",
			// Finer than the default buckets at the low end: most routes
			// answer in well under 10 ms.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method", "route"}),
	}
	m.requests = registerOrReuse(reg, m.requests)
	m.duration = registerOrReuse(reg, m.duration)
	if version != "" {
		info := registerOrReuse(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mana_build_info",
			Help: "Always 1; the version label names the running build.",
		}, []string{"version"}))
		info.WithLabelValues(version).Set(1)
	}
	return m
}

// registerOrReuse registers c, or returns the identical collector already on
// reg, so that several Servers (tests, or a restart in-process) can share a
// registry.
func registerOrReuse[C prometheus.Collector](reg *prometheus.Registry, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic("api: register metrics: " + err.Error())
	}
	return c
}
