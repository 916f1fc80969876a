package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v5"
	"github.com/labstack/echo/v5/middleware"
)

// corsMaxAge is how long, in seconds, a browser may cache a preflight answer.
const corsMaxAge = 600

// corsAllowHeaders are the request headers a browser may send cross-origin.
// X-Service-Key is deliberately absent: service keys belong to servers, and
// a browser page that holds one has already leaked it.
var corsAllowHeaders = []string{
	"Authorization", "Content-Type", "Idempotency-Key", echo.HeaderXRequestID, "X-App-Id",
}

// corsExposeHeaders are the response headers a cross-origin page may read.
var corsExposeHeaders = []string{
	echo.HeaderXRequestID, HeaderPosition, HeaderIdempotentReplayed, "Retry-After", "X-Mana-Next-Cursor",
	"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy",
}

// ValidateCORSOrigins checks an allow-list of origins as CORS_ORIGINS gives
// it: each entry is a scheme and host (and optional port), without path,
// query, fragment or user info, and "*" is refused because the allow-list
// grants credentials.
func ValidateCORSOrigins(origins []string) error {
	for _, o := range origins {
		if o == "*" {
			return fmt.Errorf(`"*" is not allowed: list the origins, since they are granted credentials`)
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
			return fmt.Errorf("%q is not an origin such as https://app.example.com", o)
		}
	}
	return nil
}

// normalizeOrigins drops a trailing slash, which browsers never send in the
// Origin header.
func normalizeOrigins(origins []string) []string {
	out := make([]string, 0, len(origins))
	for _, o := range origins {
		out = append(out, strings.TrimSuffix(o, "/"))
	}
	return out
}

// cors returns the CORS middleware for an allow-list (SPEC §7). A request
// from a listed origin gets Access-Control-Allow-Origin naming that origin
// and Access-Control-Allow-Credentials; a preflight from it is answered 204
// with the allowed methods and headers. Any other origin gets no
// Access-Control-Allow-* header at all, so the browser withholds the
// response from the page (a refused preflight is answered 204 without
// them). Every response says Vary: Origin, so caches keep the answers per
// origin. With an empty list nothing is ever allowed and the middleware is
// not installed.
func cors(origins []string) echo.MiddlewareFunc {
	if len(origins) == 0 {
		return nil
	}
	return middleware.CORSWithConfig(middleware.CORSConfig{
		AllowOrigins:     normalizeOrigins(origins),
		AllowMethods:     []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete},
		AllowHeaders:     corsAllowHeaders,
		ExposeHeaders:    corsExposeHeaders,
		AllowCredentials: true,
		MaxAge:           corsMaxAge,
	})
}
