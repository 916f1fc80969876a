package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
)

// Bind decodes the request's JSON body into v, which must be a pointer.
//
// It is strict, because a lenient decoder lets typos through silently (a
// misspelt "idempotencyKey" would disable idempotency): the Content-Type must
// be application/json (415 UNSUPPORTED_MEDIA_TYPE otherwise); the body must
// be a single JSON object with nothing but whitespace after it; and fields v
// does not declare are rejected. Every rejection is a *domain.Error coded
// VALIDATION_FAILED whose message and details name the problem and the field
// but never repeat a submitted value, since values may be passwords or
// tokens. A body over the size limit yields the limiter's PAYLOAD_TOO_LARGE
// error unchanged.
func Bind(c *echo.Context, v any) error {
	req := c.Request()
	mt, params, err := mime.ParseMediaType(req.Header.Get(echo.HeaderContentType))
	if err != nil || mt != echo.MIMEApplicationJSON {
		return domain.Errorf(domain.CodeUnsupportedMediaType,
			"The request body must be sent with Content-Type application/json.")
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return domain.Errorf(domain.CodeUnsupportedMediaType, "The request body must be UTF-8 encoded JSON.")
	}

	var data []byte
	if req.Body != nil {
		data, err = io.ReadAll(req.Body)
	}
	if err != nil {
		var de *domain.Error
		if errors.As(err, &de) {
			return de
		}
		return invalid("The request body could not be read.")
	}

	// JSON whitespace only: bytes.TrimSpace would also drop \v, \f and
	// Unicode spaces, which JSON does not allow around a value.
	data = bytes.Trim(data, " \t\r\n")
	switch {
	case len(data) == 0:
		return invalid("The request body is empty; a JSON object is expected.")
	case data[0] != '{':
		return invalid("The request body must be a JSON object.")
	}

	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("The request body must contain a single JSON object and nothing after it.")
	}
	return nil
}

func invalid(msg string) *domain.Error {
	return &domain.Error{Code: domain.CodeValidationFailed, Message: msg}
}

func invalidField(field, msg string) *domain.Error {
	return &domain.Error{
		Code:    domain.CodeValidationFailed,
		Message: fmt.Sprintf("The field %q is invalid: %s.", field, msg),
		Details: []domain.FieldError{{Field: field, Message: msg}},
	}
}

// decodeError turns a decoding failure into a client-safe validation error.
// The decoder's own messages are not passed on: for values with a custom
// UnmarshalJSON they can quote the input.
func decodeError(err error) error {
	var (
		de  *domain.Error
		se  *json.SyntaxError
		ute *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &de):
		// A custom UnmarshalJSON in the domain said precisely what is wrong.
		return de
	case errors.As(err, &se):
		return invalid(fmt.Sprintf("The request body is not valid JSON (error at byte %d).", se.Offset))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("The request body is not valid JSON: it ends too early.")
	case errors.As(err, &ute):
		field := ute.Field
		if field == "" {
			return invalid("The request body has a value of the wrong type.")
		}
		// Value reads like "number 1.5": keep the kind, drop the literal.
		got, _, _ := strings.Cut(ute.Value, " ")
		return invalidField(field, fmt.Sprintf("expected %s, got %s", jsonKind(ute.Type.Kind().String()), got))
	}
	if name, ok := unknownField(err); ok {
		return invalidField(name, "unknown field")
	}
	return invalid("The request body has an invalid value.")
}

// unknownField extracts the field name from encoding/json's unknown-field
// error, which has no type of its own. Long names are cut, as the name is
// client input that ends up in the response.
func unknownField(err error) (string, bool) {
	msg := err.Error()
	i := strings.Index(msg, "unknown field ")
	if i < 0 {
		return "", false
	}
	name := strings.Trim(msg[i+len("unknown field "):], `"`)
	if r := []rune(name); len(r) > 64 {
		name = string(r[:64]) + "…"
	}
	return name, true
}

// jsonKind names a Go kind the way a JSON client thinks of it.
func jsonKind(kind string) string {
	switch {
	case kind == "string":
		return "a string"
	case kind == "bool":
		return "a boolean"
	case strings.HasPrefix(kind, "int"), strings.HasPrefix(kind, "uint"):
		return "an integer"
	case strings.HasPrefix(kind, "float"):
		return "a number"
	case kind == "slice", kind == "array":
		return "an array"
	case kind == "struct", kind == "map":
		return "an object"
	}
	return "another type"
}
