package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
)

// Envelope is the JSON body of every error response (SPEC §5). It is
// exported so that tests and clients in this module can decode errors
// without redeclaring the shape.
type Envelope struct {
	// StatusCode repeats the HTTP status, for clients that only see bodies.
	StatusCode int `json:"statusCode"`
	// Code is the machine-readable error code, one of the domain codes.
	Code string `json:"error"`
	// Message is a client-safe, human-readable explanation.
	Message string `json:"message"`
	// Details lists per-field problems; it is omitted when there are none.
	Details []domain.FieldError `json:"details,omitempty"`
	// Timestamp is when the error was produced, RFC 3339 in UTC.
	Timestamp string `json:"timestamp"`
	// Path is the request path, without the query string.
	Path string `json:"path"`
}

// timestampLayout is RFC 3339 with milliseconds, the precision the seed
// service's clients already parse.
const timestampLayout = "2006-01-02T15:04:05.000Z07:00"

// statusByCode maps every domain code to its HTTP status (SPEC §8). It is the
// only place where that mapping lives; a code missing here is a programming
// error and is answered as 500 INTERNAL.
var statusByCode = map[domain.Code]int{
	domain.CodeValidationFailed:       http.StatusBadRequest,
	domain.CodeInvalidSignature:       http.StatusBadRequest,
	domain.CodeCaptureExceedsHold:     http.StatusBadRequest,
	domain.CodeUnauthorized:           http.StatusUnauthorized,
	domain.CodeInvalidCredentials:     http.StatusUnauthorized,
	domain.CodeTokenInvalid:           http.StatusUnauthorized,
	domain.CodeTokenExpired:           http.StatusUnauthorized,
	domain.CodeSessionRevoked:         http.StatusUnauthorized,
	domain.CodeSessionExpired:         http.StatusUnauthorized,
	domain.CodeRefreshTokenReused:     http.StatusUnauthorized,
	domain.CodeTwoFactorRequired:      http.StatusUnauthorized,
	domain.CodeTwoFactorFailed:        http.StatusUnauthorized,
	domain.CodeInsufficientCredits:    http.StatusPaymentRequired,
	domain.CodeForbidden:              http.StatusForbidden,
	domain.CodeAppMismatch:            http.StatusForbidden,
	domain.CodeEmailNotVerified:       http.StatusForbidden,
	domain.CodeNotFound:               http.StatusNotFound,
	domain.CodeHoldNotFound:           http.StatusNotFound,
	domain.CodeMethodNotAllowed:       http.StatusMethodNotAllowed,
	domain.CodeEmailAlreadyRegistered: http.StatusConflict,
	domain.CodeIdempotencyKeyReused:   http.StatusConflict,
	domain.CodeHoldNotActive:          http.StatusConflict,
	domain.CodeHoldExpired:            http.StatusConflict,
	domain.CodeRefreshInProgress:      http.StatusConflict,
	domain.CodeConflict:               http.StatusConflict,
	domain.CodeSpendLimitExceeded:     http.StatusForbidden,
	domain.CodePayloadTooLarge:        http.StatusRequestEntityTooLarge,
	domain.CodeUnsupportedMediaType:   http.StatusUnsupportedMediaType,
	domain.CodeRateLimited:            http.StatusTooManyRequests,
	domain.CodeAccountLocked:          http.StatusTooManyRequests,
	domain.CodeInternal:               http.StatusInternalServerError,
	domain.CodePaymentsNotConfigured:  http.StatusServiceUnavailable,
	domain.CodeReadModelLagging:       http.StatusServiceUnavailable,
	domain.CodeBusy:                   http.StatusServiceUnavailable,
	domain.CodeUnavailable:            http.StatusServiceUnavailable,
}

// StatusForCode returns the HTTP status a domain code is answered with, and
// false for a code the API does not know (which it answers as 500).
func StatusForCode(code domain.Code) (int, bool) {
	s, ok := statusByCode[code]
	return s, ok
}

// internalMessage is the only text a client sees for an unexpected error.
var internalMessage = domain.ErrorMessage(errors.New("unexpected"))

// problem is an error resolved into what the client is told, plus whether
// the cause is unexpected and therefore worth an error-level log line.
type problem struct {
	status     int
	code       domain.Code
	message    string
	details    []domain.FieldError
	retryAfter int
	unexpected bool
}

// classify resolves any error into a problem. Domain errors carry their own
// client-safe message; Echo's routing and binding errors get a fixed text per
// code, because Echo's own messages may describe internals; everything else
// becomes 500 INTERNAL with a generic message.
func classify(err error) problem {
	var de *domain.Error
	if errors.As(err, &de) {
		status, ok := statusByCode[de.Code]
		if !ok {
			return problem{status: http.StatusInternalServerError, code: domain.CodeInternal,
				message: internalMessage, unexpected: true}
		}
		msg := de.Message
		if msg == "" {
			msg = defaultMessage(de.Code)
		}
		return problem{
			status:     status,
			code:       de.Code,
			message:    msg,
			details:    de.Details,
			retryAfter: de.RetryAfterSeconds,
			unexpected: de.Code == domain.CodeInternal,
		}
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fromCode(domain.CodePayloadTooLarge)
	}
	if errors.Is(err, domain.ErrUnavailable) {
		// PostgreSQL is down or restarting: the client may retry; the
		// log line tells operators.
		p := fromCode(domain.CodeUnavailable)
		p.retryAfter, p.unexpected = 1, true
		return p
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// The request's own timeout (Config.RequestTimeout) expired while a
		// dependency was slow: the client may retry; operators learn of
		// it from the log line.
		p := fromCode(domain.CodeUnavailable)
		p.retryAfter, p.unexpected = 1, true
		return p
	}
	if sc := echo.StatusCode(err); sc != 0 {
		switch sc {
		case http.StatusBadRequest:
			return fromCode(domain.CodeValidationFailed)
		case http.StatusUnauthorized:
			return fromCode(domain.CodeUnauthorized)
		case http.StatusForbidden:
			return fromCode(domain.CodeForbidden)
		case http.StatusNotFound:
			return fromCode(domain.CodeNotFound)
		case http.StatusMethodNotAllowed:
			return fromCode(domain.CodeMethodNotAllowed)
		case http.StatusRequestEntityTooLarge:
			return fromCode(domain.CodePayloadTooLarge)
		case http.StatusUnsupportedMediaType:
			return fromCode(domain.CodeUnsupportedMediaType)
		case http.StatusTooManyRequests:
			return fromCode(domain.CodeRateLimited)
		case http.StatusServiceUnavailable:
			return fromCode(domain.CodeUnavailable)
		}
		if sc >= 400 && sc < 500 {
			// A 4xx without a code of its own is still the client's fault;
			// 400 keeps the envelope's code and status consistent.
			return fromCode(domain.CodeValidationFailed)
		}
	}
	return problem{status: http.StatusInternalServerError, code: domain.CodeInternal,
		message: internalMessage, unexpected: true}
}

func fromCode(code domain.Code) problem {
	return problem{status: statusByCode[code], code: code, message: defaultMessage(code)}
}

// defaultMessage is the text for errors that do not bring their own.
func defaultMessage(code domain.Code) string {
	switch code {
	case domain.CodeValidationFailed:
		return "The request is invalid."
	case domain.CodeUnauthorized:
		return "Authentication is required."
	case domain.CodeForbidden:
		return "Access to this resource is denied."
	case domain.CodeNotFound:
		return "The requested resource does not exist."
	case domain.CodeMethodNotAllowed:
		return "The request method is not allowed for this resource."
	case domain.CodePayloadTooLarge:
		return "The request body is too large."
	case domain.CodeUnsupportedMediaType:
		return "The request content type is not supported; use application/json."
	case domain.CodeRateLimited:
		return "Too many requests; retry later."
	case domain.CodeUnavailable:
		return "The service is temporarily unavailable."
	case domain.CodeInternal:
		return internalMessage
	}
	return "The request could not be completed."
}

// WriteError writes the error envelope for err and returns the error of the
// write, if any. Handlers normally just return their error and let the
// server's error handler call this; WriteError is for the rare handler that
// must answer an error and then carry on (for example to record metrics).
//
// Domain errors are answered with their code's status and message, and
// Retry-After when RetryAfterSeconds is positive. Echo's routing and binding
// errors become NOT_FOUND, METHOD_NOT_ALLOWED or VALIDATION_FAILED. Any other
// error is answered as 500 INTERNAL with a generic message and logged here,
// once, with the request id; its text never reaches the client. When the
// response has already been committed nothing is written.
func WriteError(c *echo.Context, err error) error {
	p := classify(err)
	s := serverFrom(c)
	logger, clock := s.loggerAndClock(c)
	req := c.Request()

	if p.unexpected {
		attrs := []slog.Attr{
			slog.String("request_id", RequestID(c)),
			slog.String("method", req.Method),
			slog.String("route", routeLabel(c)),
			slog.String("error", err.Error()),
		}
		var pe *panicError
		if errors.As(err, &pe) {
			attrs = append(attrs, slog.String("stack", string(pe.stack)))
		}
		logger.LogAttrs(req.Context(), slog.LevelError, "request failed", attrs...)
	}

	if r, _ := echo.UnwrapResponse(c.Response()); r != nil && r.Committed {
		// The status line is gone already; the client sees a truncated body
		// at worst, and the log line above (or the request log) says why.
		return nil
	}

	c.Set(errorCodeKey, string(p.code))
	h := c.Response().Header()
	if p.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(p.retryAfter))
	}
	if req.Method == http.MethodHead {
		return c.NoContent(p.status)
	}
	return c.JSON(p.status, Envelope{
		StatusCode: p.status,
		Code:       string(p.code),
		Message:    p.message,
		Details:    p.details,
		Timestamp:  clock.Now().UTC().Format(timestampLayout),
		Path:       req.URL.Path,
	})
}

// handleError is the Echo HTTPErrorHandler: the single funnel for errors that
// handlers and middleware return.
func (s *Server) handleError(c *echo.Context, err error) {
	if werr := WriteError(c, err); werr != nil {
		logger, _ := s.loggerAndClock(c)
		logger.LogAttrs(c.Request().Context(), slog.LevelWarn, "writing error response failed",
			slog.String("request_id", RequestID(c)), slog.String("error", werr.Error()))
	}
}

// panicError is a recovered panic. Its Error text names the panic value; the
// stack is kept apart so that it is logged as its own field and never ends up
// in anything sent to a client.
type panicError struct {
	value any
	stack []byte
}

// Error names the panic value. There is deliberately no Unwrap: a panic is
// always answered as 500 INTERNAL, even when its value is a domain error.
func (e *panicError) Error() string {
	return fmt.Sprintf("panic: %v", e.value)
}
