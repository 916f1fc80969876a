package api

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
)

// HeaderNextCursor is the cursor to pass back as after= for the next page
// of GET /api/v1/events: the cursor of the last line of the answer, or the
// request's own cursor when the answer is empty.
const HeaderNextCursor = "X-Mana-Next-Cursor"

// Limits of GET /api/v1/events.
const (
	DefaultEventsLimit = 1000
	MaxEventsLimit     = 10000
)

// ContentTypeNDJSON is the media type of the event stream: one JSON object
// per line, each line ended by "\n".
const ContentTypeNDJSON = "application/x-ndjson"

// EventLog is the event log port GET /api/v1/events reads. Cursors are the
// feed's "<tx_id>-<position>" text, opaque to clients.
type EventLog interface {
	// Page chooses the page after the cursor after ("" or "0" for the
	// start): the first limit events whose type is one of types (every
	// type when empty) among those readable now. It returns the cursor of
	// the page's last event and how many events the page holds; for an
	// empty page, after itself in canonical form and 0. A malformed cursor
	// is VALIDATION_FAILED.
	Page(ctx context.Context, after string, types []string, limit int) (end string, n int, err error)
	// Lines calls emit, in feed order, with the public JSON line (no
	// newline) of every event of the page (after, end] whose type is one
	// of types, reading the log in pieces of constant size. An error of
	// emit stops it and is returned.
	Lines(ctx context.Context, after, end string, types []string, emit func(line []byte) error) error
}

// SetEvents registers GET /api/v1/events, served by log: the event log as
// NDJSON for the roles admin and auditor (Bearer). Call before serving,
// after SetIdentity.
func (s *Server) SetEvents(log EventLog, id domain.Identity) {
	h := &eventHandlers{log: log}
	s.api.GET("/events", h.list, s.Bearer(id), requireEventReader)
}

// CanReadEvents reports whether p may read the whole event log: admins and
// auditors.
func CanReadEvents(p domain.Principal) bool {
	return p.Role == domain.RoleAdmin || p.Role == domain.RoleAuditor
}

func requireEventReader(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		if p, ok := PrincipalOf(c); !ok || !CanReadEvents(p) {
			return domain.Errorf(domain.CodeForbidden, "This endpoint needs the admin or auditor role.")
		}
		return next(c)
	}
}

type eventHandlers struct {
	log EventLog
}

// cursorText is the shape of a cursor parameter; the port still parses it.
var cursorText = regexp.MustCompile(`^(0|[0-9]{1,20}-[0-9]{1,19})$`)

// eventsFlushEvery is how many lines go out between two flushes to the
// client, so a consumer sees lines while the rest is read.
const eventsFlushEvery = 256

// list streams one page of the log. The page is chosen before the status
// line goes out, so X-Mana-Next-Cursor can be a header: it names the page's
// last event, which the body's last line then carries. Memory stays
// constant: the lines are read in pieces and written as they come.
func (h *eventHandlers) list(c *echo.Context) error {
	q := c.Request().URL.Query()
	after := q.Get("after")
	if after != "" && !cursorText.MatchString(after) {
		return invalidField("after", "must be a cursor <tx_id>-<position>")
	}
	limit := DefaultEventsLimit
	if v, ok := q["limit"]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v[0]))
		if err != nil || n < 1 || n > MaxEventsLimit {
			return invalidField("limit", "must be an integer from 1 to "+strconv.Itoa(MaxEventsLimit))
		}
		limit = n
	}
	types, err := eventTypesParam(q["types"])
	if err != nil {
		return err
	}

	ctx := c.Request().Context()
	end, n, err := h.log.Page(ctx, after, types, limit)
	if err != nil {
		return err
	}
	res := c.Response()
	res.Header().Set(HeaderNextCursor, end)
	res.Header().Set(echo.HeaderContentType, ContentTypeNDJSON)
	res.WriteHeader(http.StatusOK)
	if n == 0 {
		return nil
	}

	rc := http.NewResponseController(res)
	w := bufio.NewWriterSize(res, 32<<10)
	written := 0
	err = h.log.Lines(ctx, after, end, types, func(line []byte) error {
		if _, err := w.Write(line); err != nil {
			return err
		}
		if err := w.WriteByte('\n'); err != nil {
			return err
		}
		written++
		if written%eventsFlushEvery == 0 {
			if err := w.Flush(); err != nil {
				return err
			}
			return rc.Flush()
		}
		return nil
	})
	if err == nil {
		if err = w.Flush(); err == nil {
			err = rc.Flush()
		}
	}
	if err == nil && written != n {
		err = errPageChanged
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil // the client went away
		}
		// The status line is out: log the failure and cut the connection,
		// so the client sees a broken response rather than a short page
		// that looks complete.
		_ = WriteError(c, err)
		panic(http.ErrAbortHandler)
	}
	return nil
}

// errPageChanged means a page read back a different number of events than
// were counted when it was chosen, which the feed's rules exclude.
var errPageChanged = errors.New("events: the page changed while it was read")

// eventTypesParam parses types=a,b (the parameter may also repeat) into a
// sorted set of known event types; none means every type.
func eventTypesParam(values []string) ([]string, error) {
	known := domain.EventTypes()
	var out []string
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			if t == "" {
				continue
			}
			if _, ok := slices.BinarySearch(known, t); !ok {
				return nil, invalidField("types", "must be a comma-separated list of known event types")
			}
			if !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}
