// Command mana-consumer is a runnable example of an analyst's consumer of
// the Mana Core event stream (docs/events.md). It reads the JetStream stream
// MANA_EVENTS from the start, from a stream sequence or after a cursor,
// prints one line per event (cursor, type, id, where it came from), and
// shows the three rules every consumer needs:
//
//   - Delivery is at least once: it drops a message whose event id it has
//     seen, or whose cursor is not past the last one it applied.
//   - Ordering is by cursor: each message's Mana-Prev-Cursor header names
//     the event before it in the feed. If that is not the last cursor
//     applied, events are missing (retention, a filter, a consumer started
//     late), and it reads the missing range from GET /api/v1/events before
//     applying the message.
//   - The full history always comes from the database: with
//     MANA_API_URL and MANA_TOKEN (an admin's or auditor's access token) a
//     consumer started after the stream's retention dropped old events
//     still sees every event once, in order.
//
// It depends on the standard library and nats.go only, so it can be copied
// out of this repository as a starting point.
//
// Usage:
//
//	NATS_URL=nats://127.0.0.1:4222 MANA_API_URL=http://localhost:3001 MANA_TOKEN=… \
//	  mana-consumer [--durable NAME] [--after CURSOR] [--seq N] [--types a,b] [--idle 0]
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The stream and the headers the relay sets (docs/events.md).
const (
	streamName       = "MANA_EVENTS"
	subjectPrefix    = "mana.events."
	headerMsgID      = "Nats-Msg-Id"
	headerCursor     = "Mana-Cursor"
	headerPrevCursor = "Mana-Prev-Cursor"
	headerNextCursor = "X-Mana-Next-Cursor"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// config is what the flags and the environment say.
type config struct {
	natsURL, apiURL, token string
	durable                string
	after                  cursor
	seq                    uint64
	types                  []string
	idle                   time.Duration
}

func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("mana-consumer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: mana-consumer [flags]\n\nPrints the Mana Core event stream once per event, in feed order.\n"+
			"Environment: NATS_URL (default nats://127.0.0.1:4222), MANA_API_URL and MANA_TOKEN (for gaps).\n\n")
		fs.PrintDefaults()
	}
	durable := fs.String("durable", "", "durable consumer name: the server remembers what was acked (default: an ordered, ephemeral consumer)")
	after := fs.String("after", "", "the last cursor already applied: older messages are dropped, a gap after it is read from the API")
	seq := fs.Uint64("seq", 0, "JetStream stream sequence to start at (default: the start of the stream, or the first message after --after)")
	types := fs.String("types", "", "comma-separated event types to keep (subjects mana.events.<type>)")
	idle := fs.Duration("idle", 0, "exit after this long without a message (0: run until interrupted)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	c := config{
		natsURL: getenv("NATS_URL"), apiURL: strings.TrimRight(getenv("MANA_API_URL"), "/"), token: getenv("MANA_TOKEN"),
		durable: *durable, seq: *seq, idle: *idle,
	}
	if c.natsURL == "" {
		c.natsURL = nats.DefaultURL
	}
	var err error
	if c.after, err = parseCursor(*after); err != nil {
		return config{}, fmt.Errorf("--after: %w", err)
	}
	for _, t := range strings.Split(*types, ",") {
		if t = strings.TrimSpace(t); t != "" {
			c.types = append(c.types, t)
		}
	}
	return c, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "mana-consumer:", err)
		return 2
	}
	if err := consume(ctx, cfg, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "mana-consumer:", err)
		return 1
	}
	return 0
}

// consume follows the stream until ctx ends (or it has been idle for
// cfg.idle).
func consume(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	nc, err := nats.Connect(cfg.natsURL, nats.Name("mana-consumer"))
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	stream, err := js.Stream(ctx, streamName)
	if err != nil {
		return fmt.Errorf("stream %s: %w", streamName, err)
	}
	var subjects []string
	for _, t := range cfg.types {
		subjects = append(subjects, subjectPrefix+t)
	}
	deliver, start := jetstream.DeliverAllPolicy, uint64(0)
	if cfg.seq == 0 && !cfg.after.isZero() && cfg.durable == "" {
		// Resume after a cursor: the stream holds the events in feed
		// order, so the first message past the cursor is found by
		// bisecting the stream's sequences on their Mana-Cursor.
		if cfg.seq, err = seqAfter(ctx, stream, cfg.after); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "starting at stream sequence %d, the first message after %s\n", cfg.seq, cfg.after)
	}
	if cfg.seq > 0 {
		deliver, start = jetstream.DeliverByStartSequencePolicy, cfg.seq
	}
	var cons jetstream.Consumer
	if cfg.durable != "" {
		// A durable consumer resumes where its acks stopped, across
		// restarts; --after still guards against redeliveries.
		cons, err = stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable: cfg.durable, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: deliver, OptStartSeq: start,
			FilterSubjects: subjects,
		})
	} else {
		// An ordered consumer: ephemeral, in stream order, recreated by
		// the client on any hiccup. The consumer keeps its own position.
		cons, err = stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			DeliverPolicy: deliver, OptStartSeq: start, FilterSubjects: subjects,
		})
	}
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	msgs, err := cons.Messages()
	if err != nil {
		return err
	}
	defer msgs.Stop()

	f := newFollower(cfg.after)
	api := &feedClient{base: cfg.apiURL, token: cfg.token, http: &http.Client{Timeout: time.Minute}, types: cfg.types}
	out := bufio.NewWriter(stdout)
	defer out.Flush()
	for {
		wait := cfg.idle
		if wait <= 0 {
			wait = time.Hour
		}
		nctx, cancel := context.WithTimeout(ctx, wait)
		msg, err := msgs.Next(jetstream.NextContext(nctx))
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, context.DeadlineExceeded):
			if cfg.idle > 0 {
				return nil
			}
			continue
		case err != nil:
			return err
		}
		seq := uint64(0)
		if md, err := msg.Metadata(); err == nil {
			seq = md.Sequence.Stream
		}
		if err := f.handle(ctx, message{
			cursor: msg.Headers().Get(headerCursor), prev: msg.Headers().Get(headerPrevCursor),
			msgID: msg.Headers().Get(headerMsgID), data: msg.Data(), seq: seq,
		}, api, out, stderr); err != nil {
			if cfg.durable != "" {
				_ = msg.Nak() // redelivered later; nothing was applied
			}
			return err
		}
		if err := out.Flush(); err != nil {
			return err
		}
		if cfg.durable != "" {
			if err := msg.Ack(); err != nil {
				return fmt.Errorf("ack: %w", err)
			}
		}
	}
}

// seqAfter returns the sequence of the stream's first message whose
// Mana-Cursor is past after (the sequence after the last message when none
// is). The relay publishes in feed order and JetStream refuses a message
// whose predecessor it does not hold, so cursors grow with sequences.
func seqAfter(ctx context.Context, stream jetstream.Stream, after cursor) (uint64, error) {
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, err
	}
	lo, hi := info.State.FirstSeq, info.State.LastSeq+1
	if info.State.Msgs == 0 {
		return hi, nil
	}
	for lo < hi {
		mid := lo + (hi-lo)/2
		m, err := stream.GetMsg(ctx, mid)
		if err != nil {
			return 0, fmt.Errorf("stream message %d: %w", mid, err)
		}
		c, err := parseCursor(m.Header.Get(headerCursor))
		if err != nil {
			return 0, fmt.Errorf("stream message %d: %w", mid, err)
		}
		if after.less(c) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}

// message is what the consumer uses of a JetStream message.
type message struct {
	cursor, prev, msgID string
	data                []byte
	seq                 uint64
}

// eventLine is the part of an event line this example prints; a real
// consumer decodes payload by event_type and schema_version.
type eventLine struct {
	Cursor        string          `json:"cursor"`
	EventID       string          `json:"event_id"`
	EventType     string          `json:"event_type"`
	SchemaVersion int             `json:"schema_version"`
	Payload       json.RawMessage `json:"payload"`
}

// handle applies one message: drops it when it is a duplicate, first reads
// a gap before it from the API, then prints it.
func (f *follower) handle(ctx context.Context, m message, api gapReader, out, log io.Writer) error {
	var l eventLine
	if err := json.Unmarshal(m.data, &l); err != nil {
		return fmt.Errorf("message %d: %w", m.seq, err)
	}
	if m.cursor == "" {
		m.cursor = l.Cursor
	}
	if m.msgID == "" {
		m.msgID = l.EventID
	}
	cur, err := parseCursor(m.cursor)
	if err != nil {
		return fmt.Errorf("message %d: %s: %w", m.seq, headerCursor, err)
	}
	prev, err := parseCursor(m.prev)
	if err != nil {
		return fmt.Errorf("message %d: %s: %w", m.seq, headerPrevCursor, err)
	}
	switch f.check(cur, prev, m.msgID) {
	case duplicate:
		fmt.Fprintf(log, "duplicate %s %s (stream seq %d): dropped\n", m.cursor, m.msgID, m.seq)
		return nil
	case gap:
		fmt.Fprintf(log, "gap: %s is followed by %s, which comes after %s: reading (%s, %s] from the API\n",
			f.last, cur, prev, f.last, prev)
		err := api.read(ctx, f.last, prev, func(g eventLine) error {
			c, err := parseCursor(g.Cursor)
			if err != nil {
				return err
			}
			if f.check(c, f.last, g.EventID) == duplicate {
				return nil
			}
			f.applied(c, g.EventID)
			_, err = fmt.Fprintf(out, "%s\t%s\t%s\tapi\n", g.Cursor, g.EventType, g.EventID)
			return err
		})
		if err != nil {
			return fmt.Errorf("fill gap before %s: %w", cur, err)
		}
		f.covered(prev)
	}
	f.applied(cur, m.msgID)
	_, err = fmt.Fprintf(out, "%s\t%s\t%s\tjetstream seq %d\n", m.cursor, l.EventType, m.msgID, m.seq)
	return err
}

// verdict is what to do with a message.
type verdict int

const (
	// apply: the message is the next event after the last one applied.
	apply verdict = iota
	// duplicate: already applied (same event id, or a cursor not past the
	// last one applied); ack and drop it.
	duplicate
	// gap: events between the last one applied and this one are missing;
	// read them first.
	gap
)

// follower is a consumer's state: the last cursor applied and the ids of
// recent events. Cursors are totally ordered, so the cursor check alone
// drops every redelivery; the id set also catches a republished event
// while the stream's duplicate window is long past.
type follower struct {
	last cursor
	ids  *idSet
}

func newFollower(after cursor) *follower {
	return &follower{last: after, ids: newIDSet(100_000)}
}

// check classifies an event at cur whose predecessor in the feed is prev.
func (f *follower) check(cur, prev cursor, id string) verdict {
	if id != "" && f.ids.has(id) || !f.last.less(cur) {
		return duplicate
	}
	if prev != f.last {
		return gap
	}
	return apply
}

// applied records an event as applied.
func (f *follower) applied(cur cursor, id string) {
	f.last = cur
	if id != "" {
		f.ids.add(id)
	}
}

// covered records that everything up to c was read (a gap read with a type
// filter may return nothing: nothing of those types was missing).
func (f *follower) covered(c cursor) {
	if f.last.less(c) {
		f.last = c
	}
}

// idSet remembers the last n ids added.
type idSet struct {
	m    map[string]bool
	ring []string
	next int
}

func newIDSet(n int) *idSet { return &idSet{m: make(map[string]bool, n), ring: make([]string, n)} }

func (s *idSet) has(id string) bool { return s.m[id] }

func (s *idSet) add(id string) {
	if s.m[id] {
		return
	}
	if old := s.ring[s.next]; old != "" {
		delete(s.m, old)
	}
	s.ring[s.next] = id
	s.m[id] = true
	s.next = (s.next + 1) % len(s.ring)
}

// gapReader reads the events after a cursor up to and including another.
type gapReader interface {
	read(ctx context.Context, after, upTo cursor, fn func(eventLine) error) error
}

// feedClient reads GET /api/v1/events.
type feedClient struct {
	base, token string
	http        *http.Client
	types       []string
}

// pageLimit is the page size the example asks for (the API allows 1–10000).
const pageLimit = 1000

// read pages through GET /api/v1/events from after, handing fn every
// event up to and including upTo, in feed order. Each page continues at
// the previous page's X-Mana-Next-Cursor.
func (c *feedClient) read(ctx context.Context, after, upTo cursor, fn func(eventLine) error) error {
	if c.base == "" {
		return errors.New("events are missing and MANA_API_URL is not set: export them with `mana events export --from " + after.String() + "`")
	}
	for after.less(upTo) {
		q := url.Values{"after": {after.String()}, "limit": {strconv.Itoa(pageLimit)}}
		if len(c.types) > 0 {
			q.Set("types", strings.Join(c.types, ","))
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/api/v1/events?"+q.Encode(), nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.token)
		resp, err := c.http.Do(req)
		if err != nil {
			return err
		}
		next, done, err := c.page(resp, upTo, fn)
		resp.Body.Close()
		if err != nil || done {
			return err
		}
		if !after.less(next) {
			// An empty page. With a type filter it means no event of
			// those types is missing; without one the API's log lacks
			// events the stream has (another database?).
			if len(c.types) > 0 {
				return nil
			}
			return fmt.Errorf("the API has no events after %s, yet the stream says %s exists", after, upTo)
		}
		after = next
	}
	return nil
}

// page handles one answer: it returns the next cursor, and done once it
// has passed upTo.
func (c *feedClient) page(resp *http.Response, upTo cursor, fn func(eventLine) error) (cursor, bool, error) {
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return cursor{}, false, fmt.Errorf("GET /api/v1/events: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	next, err := parseCursor(resp.Header.Get(headerNextCursor))
	if err != nil {
		return cursor{}, false, fmt.Errorf("%s: %w", headerNextCursor, err)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var last string
	for sc.Scan() {
		var l eventLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return cursor{}, false, err
		}
		last = l.Cursor
		c, err := parseCursor(l.Cursor)
		if err != nil {
			return cursor{}, false, err
		}
		if upTo.less(c) {
			return next, true, nil
		}
		if err := fn(l); err != nil {
			return cursor{}, false, err
		}
	}
	if err := sc.Err(); err != nil {
		return cursor{}, false, err
	}
	// A whole page ends on the event its header names; anything else was
	// cut short on the way.
	if last != "" && last != next.String() {
		return cursor{}, false, fmt.Errorf("page cut short at %s, want %s", last, next)
	}
	return next, !next.less(upTo), nil
}

// cursor is a feed position "<tx_id>-<position>", ordered by tx_id, then
// position. Clients compare cursors; they never compute with them.
type cursor struct {
	tx  uint64
	pos int64
}

func parseCursor(s string) (cursor, error) {
	if s == "" || s == "0" {
		return cursor{}, nil
	}
	tx, pos, ok := strings.Cut(s, "-")
	if !ok {
		return cursor{}, fmt.Errorf("cursor %q: want <tx_id>-<position>", s)
	}
	t, err := strconv.ParseUint(tx, 10, 64)
	if err != nil {
		return cursor{}, fmt.Errorf("cursor %q: bad tx_id", s)
	}
	p, err := strconv.ParseInt(pos, 10, 64)
	if err != nil || p < 0 {
		return cursor{}, fmt.Errorf("cursor %q: bad position", s)
	}
	return cursor{tx: t, pos: p}, nil
}

func (c cursor) String() string { return fmt.Sprintf("%d-%d", c.tx, c.pos) }

func (c cursor) less(o cursor) bool { return c.tx < o.tx || c.tx == o.tx && c.pos < o.pos }

func (c cursor) isZero() bool { return c == cursor{} }
