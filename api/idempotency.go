package api

import (
	"bytes"
	"encoding/json"
	"net/http"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
)

// Header names of the idempotency contract.
const (
	// HeaderIdempotencyKey carries the client's idempotency key.
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderIdempotentReplayed is "true" on a response replayed from a receipt.
	HeaderIdempotentReplayed = "Idempotent-Replayed"
	// HeaderPosition carries the feed cursor of the command's last event, so
	// a client can wait for read models to catch up with its own write.
	HeaderPosition = "X-Mana-Position"
)

// maxIdempotencyKeyLen bounds keys so that they fit an indexed column.
const maxIdempotencyKeyLen = 255

// IdempotencyKey returns the request's idempotency key, taken from the
// Idempotency-Key header or from bodyKey, the value of the body field the
// endpoint accepts (pass "" when it has none or it was absent). It returns
// "" without error when neither gives a key.
//
// A key is 1 to 255 characters of A–Z, a–z, 0–9 and "_.:-". An empty or
// malformed key, repeated headers that disagree, or a header and body field
// that disagree are answered with a *domain.Error coded VALIDATION_FAILED;
// the message never repeats the key.
func IdempotencyKey(c *echo.Context, bodyKey string) (string, error) {
	values, inHeader := c.Request().Header[http.CanonicalHeaderKey(HeaderIdempotencyKey)]
	header := ""
	if inHeader {
		header = values[0]
		for _, v := range values[1:] {
			if v != header {
				return "", keyError(HeaderIdempotencyKey, "the header is repeated with different values")
			}
		}
		if !validIdempotencyKey(header) {
			return "", keyError(HeaderIdempotencyKey, "must be 1 to 255 characters of A-Z, a-z, 0-9, '_', '.', ':' or '-'")
		}
	}
	if bodyKey != "" && !validIdempotencyKey(bodyKey) {
		return "", keyError("idempotencyKey", "must be 1 to 255 characters of A-Z, a-z, 0-9, '_', '.', ':' or '-'")
	}
	switch {
	case inHeader && bodyKey != "" && header != bodyKey:
		return "", keyError(HeaderIdempotencyKey, "the header and the body field idempotencyKey differ")
	case inHeader:
		return header, nil
	}
	return bodyKey, nil
}

func keyError(field, msg string) *domain.Error {
	return &domain.Error{
		Code:    domain.CodeValidationFailed,
		Message: "The idempotency key is invalid: " + msg + ".",
		Details: []domain.FieldError{{Field: field, Message: msg}},
	}
}

func validIdempotencyKey(k string) bool {
	if k == "" || len(k) > maxIdempotencyKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		switch b := k[i]; {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9',
			b == '_', b == '.', b == ':', b == '-':
		default:
			return false
		}
	}
	return true
}

// WriteReceipt answers with a command's receipt: r.Body as JSON with
// r.Status (200 when zero), the X-Mana-Position header when r.Position is
// set, and, when r.Replayed, the Idempotent-Replayed header plus a top-level
// "replayed": true in an object body. The field is appended at the end so
// that the original bytes stay a recognisable prefix of the replay. An empty
// body is answered without content.
func WriteReceipt(c *echo.Context, r domain.Receipt) error {
	status := r.Status
	if status == 0 {
		status = http.StatusOK
	}
	h := c.Response().Header()
	if r.Position != "" {
		h.Set(HeaderPosition, r.Position)
	}
	body := bytes.TrimSpace(r.Body)
	if r.Replayed {
		h.Set(HeaderIdempotentReplayed, "true")
		body = markReplayed(body)
	}
	if len(body) == 0 {
		return c.NoContent(status)
	}
	return c.JSONBlob(status, body)
}

// markReplayed adds "replayed": true to a JSON object, and returns any other
// body unchanged: an array or scalar has nowhere to put it, and the header
// still says it.
func markReplayed(body []byte) []byte {
	if len(body) < 2 || body[0] != '{' || body[len(body)-1] != '}' {
		return body
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return body
	}
	if _, ok := fields["replayed"]; ok {
		// Appending would duplicate the key; rewriting loses the original
		// key order, which only matters for this unlikely body.
		fields["replayed"] = json.RawMessage("true")
		out, err := json.Marshal(fields)
		if err != nil {
			return body
		}
		return out
	}
	out := make([]byte, 0, len(body)+len(`,"replayed":true`))
	out = append(out, body[:len(body)-1]...)
	if len(fields) > 0 {
		out = append(out, ',')
	}
	out = append(out, `"replayed":true}`...)
	return out
}
