package console

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
)

// Limits of the event explorer and its live tail.
const (
	explorerPage = 50
	// tailWindow is how long one live-tail response streams. It ends well
	// before the server's request timeout; the browser's EventSource then
	// reconnects with Last-Event-ID and the tail goes on where it was.
	tailWindow = 20 * time.Second
	// tailPoll is how often the tail looks for new events.
	tailPoll = 300 * time.Millisecond
	tailPage = 200
)

func (con *Console) adminHome(c *echo.Context) error {
	return con.render(c, http.StatusOK, "admin", view{})
}

// userSearchData is the user search page.
type userSearchData struct {
	Email string
	User  *domain.AdminUserView
}

// userSearch finds a user by exact e-mail address through the blind
// index, as GET /api/v1/admin/users does.
func (con *Console) userSearch(c *echo.Context) error {
	d := userSearchData{Email: strings.TrimSpace(c.QueryParam("email"))}
	if d.Email == "" {
		return con.render(c, http.StatusOK, "users", view{Data: d})
	}
	u, err := con.cfg.Identity.FindUser(c.Request().Context(), d.Email)
	if err != nil {
		return con.formError(c, "users", view{Data: d}, err)
	}
	d.User = &u
	return con.render(c, http.StatusOK, "users", view{Data: d})
}

// userLedgerData is a user's ledger page.
type userLedgerData struct {
	UserID       uuid.UUID
	Balance      domain.Balance
	Transactions []domain.Transaction
	Offset       int
	Prev, Next   int
	// Key is a fresh idempotency key for each form, so a form submitted
	// twice (a double click, a reload) moves credits once.
	Key string
	// Form is what a failed form sent, shown again.
	Form creditForm
}

// creditForm is a grant, adjustment or refund as the forms send it.
type creditForm struct {
	Op, Amount, Bucket, TransactionID, Reason string
}

func pathUserID(c *echo.Context) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return uuid.Nil, domain.Errorf(domain.CodeNotFound, "User not found.")
	}
	return id, nil
}

func (con *Console) userLedgerView(c *echo.Context, user uuid.UUID, offset int) (view, error) {
	ctx := c.Request().Context()
	bal, err := con.cfg.Credits.Balance(ctx, user, "")
	if err != nil {
		return view{}, err
	}
	txs, err := con.cfg.Credits.Transactions(ctx, user, txPageSize+1, offset, "")
	if err != nil {
		return view{}, err
	}
	d := userLedgerData{UserID: user, Balance: bal, Offset: offset, Prev: -1, Next: -1, Key: "console-" + uuid.NewString()}
	if len(txs) > txPageSize {
		txs, d.Next = txs[:txPageSize], offset+txPageSize
	}
	if offset > 0 {
		d.Prev = max(0, offset-txPageSize)
	}
	d.Transactions = txs
	return view{Data: d}, nil
}

func (con *Console) userLedger(c *echo.Context) error {
	user, err := pathUserID(c)
	if err != nil {
		return err
	}
	offset, err := offsetParam(c)
	if err != nil {
		return err
	}
	v, err := con.userLedgerView(c, user, offset)
	if err != nil {
		return err
	}
	switch c.QueryParam("notice") {
	case "grant":
		v.Notice = "Credits granted."
	case "adjust":
		v.Notice = "Balance adjusted."
	case "refund":
		v.Notice = "Transaction refunded."
	}
	return con.render(c, http.StatusOK, "user", v)
}

// userCredit runs a grant, adjustment or refund for an admin, with the
// reason the ledger records; invalid input shows the form again.
func (con *Console) userCredit(c *echo.Context) error {
	user, err := pathUserID(c)
	if err != nil {
		return err
	}
	f := creditForm{Op: c.Param("op"), Amount: strings.TrimSpace(c.FormValue("amount")), Bucket: c.FormValue("bucket"),
		TransactionID: strings.TrimSpace(c.FormValue("transactionId")), Reason: strings.TrimSpace(c.FormValue("reason"))}
	op := map[string]func() adminOp{
		"grant":  func() adminOp { return con.cfg.Credits.Grant },
		"adjust": func() adminOp { return con.cfg.Credits.Adjust },
		"refund": func() adminOp { return con.cfg.Credits.Refund },
	}[f.Op]
	if op == nil {
		return domain.Errorf(domain.CodeNotFound, "No such action.")
	}
	in, msg := f.input(user, c.FormValue("idempotencyKey"))
	if msg == "" {
		p := principal(c)
		_, err = op()(c.Request().Context(), domain.Caller{Kind: "admin", UserID: p.UserID, Meta: requestMeta(c)}, in)
	}
	if msg == "" && err == nil {
		return c.Redirect(http.StatusSeeOther, "/console/admin/users/"+user.String()+"?notice="+f.Op)
	}
	v, verr := con.userLedgerView(c, user, 0)
	if verr != nil {
		return verr
	}
	d := v.Data.(userLedgerData)
	d.Form = f
	v.Data = d
	if msg != "" {
		return con.invalid(c, "user", msg, v)
	}
	return con.formError(c, "user", v, err)
}

// adminOp is CreditsService.Grant, Adjust or Refund.
type adminOp func(ctx context.Context, c domain.Caller, in domain.AdminCreditInput) (domain.Receipt, error)

// input checks the form; a non-empty message says what is wrong.
func (f creditForm) input(user uuid.UUID, key string) (domain.AdminCreditInput, string) {
	in := domain.AdminCreditInput{UserID: user, Reason: f.Reason, IdempotencyKey: key}
	if f.Reason == "" {
		return in, "A reason is required: the ledger records it with the entry."
	}
	amount, err := strconv.ParseInt(f.Amount, 10, 64)
	if err != nil || amount == 0 || f.Op != "adjust" && amount < 0 {
		return in, "The amount must be a whole number of credits (positive; an adjustment may be negative)."
	}
	in.Amount = domain.Credits(amount)
	switch f.Op {
	case "grant":
		if f.Bucket != "free" && f.Bucket != "paid" {
			return in, "Choose the free or the paid bucket."
		}
		in.Bucket = f.Bucket
	case "refund":
		tx, err := uuid.Parse(f.TransactionID)
		if err != nil {
			return in, "The transaction to refund must be a transaction id."
		}
		in.TransactionID = tx
	}
	return in, ""
}

// --- event explorer ---

// cursorText is the shape of a feed cursor; the event source parses it.
var cursorText = regexp.MustCompile(`^(0|[0-9]{1,20}-[0-9]{1,19})$`)

// eventFilter is the explorer's filter as the query string carries it.
type eventFilter struct {
	After, Types, StreamType, StreamID, From, To string
}

func readEventFilter(c *echo.Context) eventFilter {
	q := c.Request().URL.Query()
	return eventFilter{After: strings.TrimSpace(q.Get("after")), Types: strings.TrimSpace(q.Get("types")),
		StreamType: strings.TrimSpace(q.Get("streamType")), StreamID: strings.TrimSpace(q.Get("streamId")),
		From: strings.TrimSpace(q.Get("from")), To: strings.TrimSpace(q.Get("to"))}
}

// query checks f; a non-empty message says what is wrong.
func (f eventFilter) query(limit int) (EventQuery, string) {
	q := EventQuery{After: f.After, StreamType: f.StreamType, StreamID: f.StreamID, Limit: limit}
	if f.After != "" && !cursorText.MatchString(f.After) {
		return q, "The cursor must look like <tx_id>-<position>, for example 812-4031."
	}
	known := domain.EventTypes()
	for _, t := range strings.Split(f.Types, ",") {
		if t = strings.TrimSpace(t); t == "" {
			continue
		}
		if _, ok := slices.BinarySearch(known, t); !ok {
			return q, fmt.Sprintf("%q is not an event type.", t)
		}
		q.Types = append(q.Types, t)
	}
	var ok bool
	if q.From, ok = parseWhen(f.From, false); !ok {
		return q, "The start time must be a date (YYYY-MM-DD) or a date and time (YYYY-MM-DDTHH:MM)."
	}
	if q.To, ok = parseWhen(f.To, true); !ok {
		return q, "The end time must be a date (YYYY-MM-DD) or a date and time (YYYY-MM-DDTHH:MM)."
	}
	return q, ""
}

// parseWhen reads a date or a date and time in UTC; a bare date as an end
// means the end of that day.
func parseWhen(s string, end bool) (time.Time, bool) {
	if s == "" {
		return time.Time{}, true
	}
	for _, layout := range []string{"2006-01-02T15:04", "2006-01-02T15:04:05", time.RFC3339} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), true
		}
	}
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return time.Time{}, false
	}
	if end {
		t = t.Add(24*time.Hour - time.Nanosecond)
	}
	return t, true
}

// eventsData is the explorer page.
type eventsData struct {
	Filter eventFilter
	Types  []string
	Events []eventRow
	// NextURL continues after the last event looked at; empty at the end.
	NextURL string
	// LiveURL opens the live tail with the same filter.
	LiveURL string
}

// eventRow is an event with its payload and metadata pretty-printed.
type eventRow struct {
	Event
	Payload, Metadata string
}

func (con *Console) eventSource() (EventSource, error) {
	if con.cfg.Events == nil {
		return nil, domain.Errorf(domain.CodeNotFound, "The event explorer is not available.")
	}
	return con.cfg.Events, nil
}

func (con *Console) events(c *echo.Context) error {
	src, err := con.eventSource()
	if err != nil {
		return err
	}
	f := readEventFilter(c)
	d := eventsData{Filter: f, Types: domain.EventTypes(), LiveURL: "/console/admin/events/live?" + f.values(false).Encode()}
	q, msg := f.query(explorerPage)
	if msg != "" {
		return con.invalid(c, "events", msg, view{Data: d})
	}
	page, err := src.Query(c.Request().Context(), q)
	if err != nil {
		return con.formError(c, "events", view{Data: d}, err)
	}
	for _, e := range page.Events {
		d.Events = append(d.Events, eventRow{Event: e, Payload: indentJSON(e.Payload), Metadata: indentJSON(e.Metadata)})
	}
	if page.More {
		next := f
		next.After = page.Next
		d.NextURL = "/console/admin/events?" + next.values(true).Encode()
	}
	return con.render(c, http.StatusOK, "events", view{Data: d})
}

// values encodes f as a query string, with or without the cursor.
func (f eventFilter) values(withCursor bool) url.Values {
	v := url.Values{}
	add := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	if withCursor {
		add("after", f.After)
	}
	add("types", f.Types)
	add("streamType", f.StreamType)
	add("streamId", f.StreamID)
	add("from", f.From)
	add("to", f.To)
	return v
}

func indentJSON(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return string(raw)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return string(raw)
	}
	return string(b)
}

// liveData is the live tail page: the filter and the stream it reads.
type liveData struct {
	Filter    eventFilter
	StreamURL string
}

func (con *Console) eventsLive(c *echo.Context) error {
	if _, err := con.eventSource(); err != nil {
		return err
	}
	f := readEventFilter(c)
	f.After, f.From, f.To = "", "", ""
	if _, msg := f.query(tailPage); msg != "" {
		return con.invalid(c, "live", msg, view{Data: liveData{Filter: f}})
	}
	return con.render(c, http.StatusOK, "live", view{Data: liveData{Filter: f,
		StreamURL: "/console/admin/events/stream?" + f.values(false).Encode()}})
}

// eventStream is the live tail: Server-Sent Events, one "mana-event" per
// event matching the filter, from the head of the log at the first
// connection (or after Last-Event-ID on a reconnection), for tailWindow.
// Each event's id is its cursor.
func (con *Console) eventStream(c *echo.Context) error {
	src, err := con.eventSource()
	if err != nil {
		return err
	}
	f := readEventFilter(c)
	f.From, f.To = "", ""
	if last := c.Request().Header.Get("Last-Event-ID"); last != "" {
		f.After = last
	}
	q, msg := f.query(tailPage)
	if msg != "" {
		return domain.Errorf(domain.CodeValidationFailed, "%s", msg)
	}
	ctx := c.Request().Context()
	if q.After == "" {
		if q.After, err = src.Head(ctx); err != nil {
			return err
		}
	}
	res := c.Response()
	h := res.Header()
	h.Set(echo.HeaderContentType, "text/event-stream")
	h.Set(echo.HeaderCacheControl, "no-store")
	h.Set("X-Accel-Buffering", "no") // a buffering proxy would hold the events back
	res.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(res)
	w := bufio.NewWriter(res)
	// A fresh stream names its start, so a reconnection resumes there even
	// when nothing arrived in between.
	fmt.Fprintf(w, "retry: 1000\nid: %s\n\n", q.After)

	end := time.NewTimer(tailWindow)
	defer end.Stop()
	tick := time.NewTicker(tailPoll)
	defer tick.Stop()
	for {
		if err := w.Flush(); err != nil {
			return nil // the client went away
		}
		if err := rc.Flush(); err != nil {
			return nil
		}
		page, err := src.Query(ctx, q)
		if err != nil {
			if ctx.Err() == nil {
				// The status line is out: this only logs it. The client
				// reconnects and resumes.
				_ = con.renderError(c, err)
			}
			return nil
		}
		for _, e := range page.Events {
			b, _ := json.Marshal(e)
			fmt.Fprintf(w, "id: %s\nevent: mana-event\ndata: %s\n\n", e.Cursor, b)
		}
		if page.Next != "" && page.Next != q.After {
			q.After = page.Next
			if len(page.Events) == 0 {
				fmt.Fprintf(w, "id: %s\n\n", q.After) // the filter skipped events: move the resume point on
			}
		}
		if page.More {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-end.C:
			_ = w.Flush()
			return nil
		case <-tick.C:
		}
	}
}

// --- operations ---

func (con *Console) operations() (Operations, error) {
	if con.cfg.Operations == nil {
		return nil, domain.Errorf(domain.CodeNotFound, "This page is not available.")
	}
	return con.cfg.Operations, nil
}

func (con *Console) projections(c *echo.Context) error {
	ops, err := con.operations()
	if err != nil {
		return err
	}
	list, err := ops.Projections(c.Request().Context())
	if err != nil {
		return err
	}
	return con.render(c, http.StatusOK, "projections", view{Data: list})
}

// ledgerData is the ledger page: the latest signed checkpoint and, when
// asked for, the auditor checks.
type ledgerData struct {
	Checkpoint *domain.Checkpoint
	Checks     []LedgerCheck
	Ran        bool
	OK         bool
}

// ledger shows the latest checkpoint and, with ?verify=1, runs the checks
// of `mana ledger verify` (read-only, so auditors may run them too).
func (con *Console) ledger(c *echo.Context) error {
	ops, err := con.operations()
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	var d ledgerData
	if con.cfg.Checkpoints != nil {
		cp, err := con.cfg.Checkpoints.LatestCheckpoint(ctx)
		switch {
		case err == nil:
			d.Checkpoint = &cp
		case domain.ErrorCode(err) != domain.CodeNotFound:
			return err
		}
	}
	if c.QueryParam("verify") != "" {
		if d.Checks, err = ops.VerifyLedger(ctx); err != nil {
			return err
		}
		d.Ran, d.OK = true, true
		for _, ch := range d.Checks {
			d.OK = d.OK && ch.OK
		}
	}
	return con.render(c, http.StatusOK, "ledger", view{Data: d})
}
