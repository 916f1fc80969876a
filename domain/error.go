package domain

import (
	"errors"
	"fmt"
)

// Code is a stable machine-readable error code, part of the API contract.
type Code string

// Error codes of the API contract (SPEC §8). The HTTP layer maps each to a
// status; nothing else does.
const (
	CodeValidationFailed       Code = "VALIDATION_FAILED"
	CodeInvalidSignature       Code = "INVALID_SIGNATURE"
	CodeCaptureExceedsHold     Code = "CAPTURE_EXCEEDS_HOLD"
	CodeUnauthorized           Code = "UNAUTHORIZED"
	CodeInvalidCredentials     Code = "INVALID_CREDENTIALS"
	CodeTokenInvalid           Code = "TOKEN_INVALID"
	CodeTokenExpired           Code = "TOKEN_EXPIRED"
	CodeSessionRevoked         Code = "SESSION_REVOKED"
	CodeSessionExpired         Code = "SESSION_EXPIRED"
	CodeRefreshTokenReused     Code = "REFRESH_TOKEN_REUSED"
	CodeTwoFactorRequired      Code = "TWO_FACTOR_REQUIRED"
	CodeTwoFactorFailed        Code = "TWO_FACTOR_FAILED"
	CodeInsufficientCredits    Code = "INSUFFICIENT_CREDITS"
	CodeForbidden              Code = "FORBIDDEN"
	CodeAppMismatch            Code = "APP_MISMATCH"
	CodeEmailNotVerified       Code = "EMAIL_NOT_VERIFIED"
	CodeNotFound               Code = "NOT_FOUND"
	CodeMethodNotAllowed       Code = "METHOD_NOT_ALLOWED"
	CodeHoldNotFound           Code = "HOLD_NOT_FOUND"
	CodeEmailAlreadyRegistered Code = "EMAIL_ALREADY_REGISTERED"
	CodeIdempotencyKeyReused   Code = "IDEMPOTENCY_KEY_REUSED"
	CodeHoldNotActive          Code = "HOLD_NOT_ACTIVE"
	CodeHoldExpired            Code = "HOLD_EXPIRED"
	CodeRefreshInProgress      Code = "REFRESH_IN_PROGRESS"
	CodeConflict               Code = "CONFLICT"
	CodeSpendLimitExceeded     Code = "SPEND_LIMIT_EXCEEDED"
	CodePayloadTooLarge        Code = "PAYLOAD_TOO_LARGE"
	CodeUnsupportedMediaType   Code = "UNSUPPORTED_MEDIA_TYPE"
	CodeRateLimited            Code = "RATE_LIMITED"
	CodeAccountLocked          Code = "ACCOUNT_LOCKED"
	CodeInternal               Code = "INTERNAL"
	CodePaymentsNotConfigured  Code = "PAYMENTS_NOT_CONFIGURED"
	CodeReadModelLagging       Code = "READ_MODEL_LAGGING"
	CodeBusy                   Code = "BUSY"
	CodeUnavailable            Code = "UNAVAILABLE"
)

// ErrUnavailable marks an error of a dependency the service cannot reach
// right now, such as PostgreSQL down or restarting. The API answers it with
// 503 UNAVAILABLE and Retry-After; a client retries a write with the same
// Idempotency-Key.
var ErrUnavailable = errors.New("a dependency is unavailable")

// Error is the one error type that crosses from the domain to the edges.
// Message is safe to show to a client; Details carries structured hints such
// as per-field validation problems.
type Error struct {
	Code    Code
	Message string
	Details []FieldError
	// RetryAfterSeconds, when positive, tells the client when to retry.
	RetryAfterSeconds int
}

// FieldError describes one invalid field of a request.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// Error implements the error interface.
func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Errorf returns an *Error with a formatted client-safe message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, INTERNAL for
// any other non-nil error, and "" for nil.
func ErrorCode(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrorMessage returns the client-safe message of err: the message of an
// *Error, and a generic text for anything else, so internals never leak.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "An internal error occurred."
}
