package api

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/ratelimit"
)

// Rate-limit response headers (SPEC §7), in the style of the IETF
// RateLimit header fields draft: the budget's size, what is left of it,
// the seconds until it is full again, and the policy as "burst;w=seconds to
// refill it".
const (
	HeaderRateLimitLimit     = "RateLimit-Limit"
	HeaderRateLimitRemaining = "RateLimit-Remaining"
	HeaderRateLimitReset     = "RateLimit-Reset"
	HeaderRateLimitPolicy    = "RateLimit-Policy"
)

// rateShownKey holds the decision whose numbers the response headers show.
const rateShownKey = "mana.api.rate_shown"

// rateErrorLogEvery spaces the log lines about an unreachable limiter: it
// would otherwise log on every limited request.
const rateErrorLogEvery = 10 * time.Second

// RateLimits configures the rate limits of SPEC §7; see SetRateLimits.
type RateLimits struct {
	// Limiter keeps the budgets: in memory for one node, in Redis for
	// several. Nil disables rate limiting.
	Limiter ratelimit.Limiter
	// Policies are the limits in force, by name (ratelimit.Defaults with
	// the RATE_LIMITS overrides). A policy that is absent is not enforced.
	Policies ratelimit.Policies
	// AccountKey maps an email address to the key of its per-account
	// budgets. It must be the blind email index (or derived from it),
	// never the address itself, since keys reach the limiter's store. Nil
	// disables the per-account limits.
	AccountKey func(email string) string
}

// rateLimiting is the configuration in force plus the state of its error
// log.
type rateLimiting struct {
	RateLimits
	lastErrorLog atomic.Int64 // Unix ns of the last "limiter unavailable" line
}

// SetRateLimits turns the rate limits of SPEC §7 on, or off with a nil
// Limiter. The routes consult the configuration on every request, so it
// applies to routes registered before and after the call; like route
// registration, call it before serving. Limited routes:
//
//   - POST /auth/register: RegisterIP; POST /auth/refresh: RefreshIP;
//   - POST /auth/login: LoginIP, then LoginAccount once the body names the
//     account, both before the lock check and the password (so a client
//     over its limit learns nothing about the account);
//   - POST /auth/login/2fa: LoginIP (the same budget as /auth/login); the
//     2FA management routes: TwoFactorUser per principal, and disable
//     LoginAccount too (see SetTwoFactor);
//   - credit writes with a Bearer token (spends, holds, admin grants,
//     adjustments and refunds): CreditsUser, per principal;
//   - credit writes with a service key: CreditsApp, per app;
//   - DELETE /auth/account: LoginAccount of the token's address, before
//     the password; a deletion then forgets the account's budgets (see
//     SetAccountDeletion);
//   - POST /auth/forgot-password, /auth/resend-verification and
//     /auth/reset-password (SetAccount): RecoveryIP; forgot-password and
//     resend-verification also RecoveryAccount once the body names the
//     account (reset-password names none: its token is 256 random bits).
//
// Every answer of a limited route carries RateLimit-Limit, -Remaining,
// -Reset and -Policy for the tightest budget it drew on; a request over a
// limit is answered 429 RATE_LIMITED with Retry-After and counted in
// mana_rate_limited_total. When the limiter fails (Redis unreachable) the
// request passes unlimited and the failure is logged, at most every ten
// seconds: the account lockout still guards passwords, and an outage of
// the limiter must not become an outage of login.
func (s *Server) SetRateLimits(rl RateLimits) {
	if rl.Limiter == nil {
		s.rate.Store(nil)
		return
	}
	s.rate.Store(&rateLimiting{RateLimits: rl})
}

// limitByIP returns middleware that takes one request from the client
// address's budget under policy.
func (s *Server) limitByIP(policy string) echo.MiddlewareFunc { return s.limit(policy, clientKey) }

// limitByUser returns middleware that takes one request from the Bearer
// principal's budget under policy. It must run after the bearer guard.
func (s *Server) limitByUser(policy string) echo.MiddlewareFunc { return s.limit(policy, userKey) }

// limitByApp returns middleware that takes one request from the calling
// app's budget under policy. It must run after the service-key guard.
func (s *Server) limitByApp(policy string) echo.MiddlewareFunc { return s.limit(policy, appKey) }

func (s *Server) limit(policy string, keyOf func(*echo.Context) string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c *echo.Context) error {
			if rl := s.rate.Load(); rl != nil {
				if err := s.take(c, rl, policy, keyOf); err != nil {
					return err
				}
			}
			return next(c)
		}
	}
}

// limitAccount takes one request from the budget under policy of the
// account that email names, keyed by its blind index. Handlers call it once
// they have decoded the body, before anything looks the account up. It is
// a no-op outside a Server, without limits, or for an empty email (which
// the handler rejects anyway).
func (s *Server) limitAccount(c *echo.Context, policy, email string) error {
	if s == nil {
		return nil
	}
	rl := s.rate.Load()
	if rl == nil || rl.AccountKey == nil || strings.TrimSpace(email) == "" {
		return nil
	}
	return s.take(c, rl, policy, func(*echo.Context) string { return rl.AccountKey(email) })
}

// take consults the budget of policy for keyOf(c), sets the headers and
// answers RATE_LIMITED when it is used up.
func (s *Server) take(c *echo.Context, rl *rateLimiting, name string, keyOf func(*echo.Context) string) error {
	p, ok := rl.Policies[name]
	if !ok {
		return nil
	}
	key := keyOf(c)
	if key == "" {
		return nil
	}
	d, err := rl.Limiter.Allow(c.Request().Context(), p, key)
	if err != nil {
		s.rateLimiterFailed(c, rl, name, err)
		return nil
	}
	showRate(c, p, d)
	if d.Allowed {
		return nil
	}
	s.RateLimited(name)
	return &domain.Error{Code: domain.CodeRateLimited, RetryAfterSeconds: max(ceilSeconds(d.RetryAfter), 1)}
}

// showRate sets the RateLimit headers from d unless an earlier decision of
// the same request left less room: the client should see the tightest
// budget, and always the one that refused it.
func showRate(c *echo.Context, p ratelimit.Policy, d ratelimit.Decision) {
	if prev, ok := c.Get(rateShownKey).(ratelimit.Decision); ok && d.Allowed && (!prev.Allowed || prev.Remaining <= d.Remaining) {
		return
	}
	c.Set(rateShownKey, d)
	h := c.Response().Header()
	h.Set(HeaderRateLimitLimit, strconv.FormatInt(d.Limit, 10))
	h.Set(HeaderRateLimitRemaining, strconv.FormatInt(d.Remaining, 10))
	h.Set(HeaderRateLimitReset, strconv.Itoa(ceilSeconds(d.ResetAfter)))
	h.Set(HeaderRateLimitPolicy, fmt.Sprintf("%d;w=%d", p.Burst, max(ceilSeconds(p.Interval()*time.Duration(p.Burst)), 1)))
}

// rateLimiterFailed logs a limiter failure, at most once per
// rateErrorLogEvery. A request whose own context ended (the client left,
// the request timed out) is not the limiter's fault and is not logged.
func (s *Server) rateLimiterFailed(c *echo.Context, rl *rateLimiting, policy string, err error) {
	ctx := c.Request().Context()
	if ctx.Err() != nil {
		return
	}
	now := time.Now().UnixNano()
	last := rl.lastErrorLog.Load()
	if now-last < int64(rateErrorLogEvery) || !rl.lastErrorLog.CompareAndSwap(last, now) {
		return
	}
	s.logger.LogAttrs(ctx, slog.LevelError, "rate limiter unavailable; requests pass unlimited",
		slog.String("request_id", RequestID(c)), slog.String("policy", policy), slog.String("error", err.Error()))
}

func ceilSeconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}

// clientKey is the client address a per-IP budget belongs to: c.RealIP
// (the peer, or what X-Forwarded-For says when the peer is a trusted
// proxy). IPv6 addresses count by their /64, since a single client commonly
// holds a whole /64 and could otherwise take a fresh budget per request.
func clientKey(c *echo.Context) string {
	ip := c.RealIP()
	a, err := netip.ParseAddr(ip)
	if err != nil {
		if ip == "" {
			// No address at all (a Unix socket): all such clients share
			// one budget rather than none.
			return "unknown"
		}
		return ip
	}
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

func userKey(c *echo.Context) string {
	p, ok := PrincipalOf(c)
	if !ok || p.UserID == uuid.Nil {
		return ""
	}
	return p.UserID.String()
}

func appKey(c *echo.Context) string {
	caller, _ := c.Get(callerKey).(domain.Caller)
	return caller.AppID
}

// TrustedProxies returns the IP extractor for TRUSTED_PROXIES (set it as
// Echo's IPExtractor): X-Forwarded-For is believed only when the peer is in
// one of trusted, and then only up to the nearest address that is not (so
// a client cannot prepend addresses of its choice). With no prefixes the
// client is always the peer. Loopback and private addresses are not
// trusted unless listed.
func TrustedProxies(trusted []netip.Prefix) echo.IPExtractor {
	if len(trusted) == 0 {
		return echo.ExtractIPDirect()
	}
	opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
	for _, p := range trusted {
		p = p.Masked()
		opts = append(opts, echo.TrustIPRange(&net.IPNet{
			IP:   net.IP(p.Addr().AsSlice()),
			Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
		}))
	}
	return echo.ExtractIPFromXFFHeader(opts...)
}
