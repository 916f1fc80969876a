package api

import (
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
)

// MaxDrain bounds how much of a request body the server reads in total,
// including what it discards after the limit, before it answers (SPEC §7).
//
// Many clients (curl, Python requests) write the whole body before they read
// the response. If the server answered and closed while such a client was
// still writing, the client's kernel would see unread data, reset the
// connection, and the client would report a reset instead of the 413. So the
// server keeps reading and discarding, but only up to this bound, so that a
// huge body cannot hold a connection for long.
const MaxDrain int64 = 16 << 20

// BodyLimit returns middleware that limits request bodies to n bytes for the
// routes or group it is attached to. The Server already applies
// Config.BodyLimit to every request; attaching BodyLimit to a route lowers
// the limit there (webhooks, for example, accept 256 KiB). It cannot raise
// the limit above Config.BodyLimit, because the server-wide check runs first.
//
// A body whose Content-Length exceeds the limit is rejected before the
// handler runs. A body without one (chunked) is counted as the handler reads
// it: the read that crosses the limit fails with a *domain.Error coded
// PAYLOAD_TOO_LARGE, which Bind returns as is. Either way the client gets 413
// PAYLOAD_TOO_LARGE with "Connection: close", after the server has read and
// discarded the rest of the body up to MaxDrain bytes in total. A client
// that sent "Expect: 100-continue" and has not been asked for its body yet is
// answered at once instead, since it has nothing in flight.
//
// Whatever the status, a body the handler left unread is drained (within
// MaxDrain) before the response, so that clients which write before they
// read never see a reset.
func BodyLimit(n int64) echo.MiddlewareFunc {
	if n < 0 {
		n = 0
	}
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c *echo.Context) error {
			req := c.Request()
			if req.Body == nil || req.Body == http.NoBody {
				return next(c)
			}
			l := installLimiter(c, n)
			if n < l.limit {
				l.limit = n
			}
			if req.ContentLength > l.limit {
				l.exceeded = true
				return l.tooLarge()
			}
			err := next(c)
			if l.exceeded {
				if r, _ := echo.UnwrapResponse(c.Response()); r == nil || !r.Committed {
					// Whatever the handler made of the failed read, the
					// client's problem is the size of its body.
					return l.tooLarge()
				}
			}
			return err
		}
	}
}

// bodyLimiter counts the bytes a request body yields and stops at the limit.
// One limiter serves a request however many BodyLimit middlewares it passes
// through; the innermost, smallest limit wins.
type bodyLimiter struct {
	body     io.ReadCloser // the body as the server delivered it
	limit    int64
	read     int64 // bytes taken from body, including discarded ones
	touched  bool  // Read was called, so a 100 Continue has gone out
	exceeded bool
	settled  bool
}

// installLimiter returns the request's limiter, creating it with limit n and
// hooking it into the response on first use.
func installLimiter(c *echo.Context, n int64) *bodyLimiter {
	if l, ok := c.Get(limiterKey).(*bodyLimiter); ok {
		return l
	}
	req := c.Request()
	l := &bodyLimiter{body: req.Body, limit: n}
	req.Body = l
	c.Set(limiterKey, l)
	if r, err := echo.UnwrapResponse(c.Response()); err == nil {
		// Before runs just ahead of the status line, whoever writes it: the
		// error handler, a handler, or WriteReceipt.
		r.Before(func() { l.settle(r.Header(), req) })
	}
	return l
}

func (l *bodyLimiter) tooLarge() *domain.Error {
	return domain.Errorf(domain.CodePayloadTooLarge,
		"The request body exceeds the limit of %d bytes.", l.limit)
}

// Read passes through at most limit bytes. To tell "exactly at the limit"
// from "over it" it asks for one byte more than remains, and fails once that
// byte arrives.
func (l *bodyLimiter) Read(p []byte) (int, error) {
	l.touched = true
	if l.exceeded {
		return 0, l.tooLarge()
	}
	if len(p) == 0 {
		return 0, nil
	}
	remaining := l.limit - l.read
	if int64(len(p)) > remaining+1 {
		p = p[:remaining+1]
	}
	n, err := l.body.Read(p)
	l.read += int64(n)
	if int64(n) > remaining {
		l.exceeded = true
		return int(remaining), l.tooLarge()
	}
	return n, err
}

// Close closes the underlying body.
func (l *bodyLimiter) Close() error { return l.body.Close() }

// settle runs once, just before the response is written: it discards what is
// left of the body, up to MaxDrain bytes read in total, and asks for the
// connection to be closed when the body was too large or could not be
// drained, since its remainder must not be parsed as the next request.
func (l *bodyLimiter) settle(h http.Header, req *http.Request) {
	if l.settled {
		return
	}
	l.settled = true
	if !l.touched && expectsContinue(req) {
		// The client is waiting for "100 Continue" and has sent nothing:
		// answering now spares it the upload. net/http closes the
		// connection itself, since the body was never read.
		h.Set(echo.HeaderConnection, "close")
		return
	}
	drained := false
	if budget := MaxDrain - l.read; budget > 0 {
		n, err := io.CopyN(io.Discard, l.body, budget)
		l.read += n
		// A body closed by the handler is net/http's to judge: it closes
		// the connection itself if that happened before the end.
		drained = err == io.EOF || errors.Is(err, http.ErrBodyReadAfterClose)
	}
	if l.exceeded || !drained {
		h.Set(echo.HeaderConnection, "close")
	}
}

func expectsContinue(req *http.Request) bool {
	for _, v := range req.Header.Values("Expect") {
		if strings.EqualFold(strings.TrimSpace(v), "100-continue") {
			return true
		}
	}
	return false
}
