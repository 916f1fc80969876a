package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// exportPage is how many events one feed read returns: memory stays
// constant whatever the log's size.
const exportPage = 1000

func cmdEvents(ctx context.Context, e *env, args []string) error {
	const help = "Usage: mana events export|tail|import [flags]\n\n  export  write the log (or a cursor range) to stdout as NDJSON or CSV\n  tail    follow the log from now (or --from) until interrupted\n  import  append an NDJSON export to this database, verifying every hash and chain\n"
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" {
		fmt.Fprint(e.stdout, help)
		if len(args) == 0 {
			return fmt.Errorf("%w: missing subcommand", errUsage)
		}
		return nil
	}
	switch args[0] {
	case "export":
		return eventsExport(ctx, e, args[1:], false)
	case "tail":
		return eventsExport(ctx, e, args[1:], true)
	case "import":
		return eventsImport(ctx, e, args[1:])
	}
	return fmt.Errorf("%w: unknown subcommand %q", errUsage, args[0])
}

func eventsExport(ctx context.Context, e *env, args []string, follow bool) error {
	name, synopsis := "events export", "events export [--from CURSOR] [--to CURSOR] [--types a,b] [--stream-type T] [--format ndjson|csv]\n\nWrites every event after --from up to and including --to, in feed order, one per line. Cursors are <tx_id>-<position>."
	if follow {
		name, synopsis = "events tail", "events tail [--from CURSOR] [--types a,b] [--stream-type T] [--format ndjson|csv]\n\nFollows the log: prints events as they become readable, from now (or after --from), until interrupted."
	}
	fs := newFlags(e, name, synopsis)
	from := fs.String("from", "", "start after this cursor (default: the beginning; for tail: now)")
	to := fs.String("to", "", "stop at this cursor, inclusive (export only)")
	types := fs.String("types", "", "comma-separated event types to keep")
	streamType := fs.String("stream-type", "", "keep only this stream type")
	format := fs.String("format", "ndjson", "ndjson or csv")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	after, err := eventstore.ParseCursor(*from)
	if err != nil {
		return fmt.Errorf("%w: --from: %v", errUsage, err)
	}
	var until *eventstore.Cursor
	if *to != "" {
		c, err := eventstore.ParseCursor(*to)
		if err != nil {
			return fmt.Errorf("%w: --to: %v", errUsage, err)
		}
		until = &c
	}
	if *format != "ndjson" && *format != "csv" {
		return fmt.Errorf("%w: --format must be ndjson or csv", errUsage)
	}
	keep := map[string]bool{}
	for _, t := range strings.Split(*types, ",") {
		if t = strings.TrimSpace(t); t != "" {
			keep[t] = true
		}
	}

	pool, err := pg.Open(ctx, e.cfg.DatabaseURL, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := eventstore.New(pool, eventstore.Options{})
	if err != nil {
		return err
	}
	var before *startSnapshot
	if follow && *from == "" {
		if after, err = store.FeedHead(ctx); err != nil {
			return err
		}
		// The head is only what the feed shows: events committed before
		// now may still sit above it, behind a transaction in flight
		// anywhere in the cluster. Skip those too.
		if before, err = currentSnapshot(ctx, pool); err != nil {
			return err
		}
	}
	// An export includes every event committed before it started: it pages
	// until the feed's horizon has passed every transaction that was in
	// flight then (write transactions are short, so this is milliseconds).
	committed, err := store.CommittedBy(ctx)
	if err != nil {
		return err
	}
	out := bufio.NewWriterSize(e.stdout, 64<<10)
	defer out.Flush()
	w := newLineWriter(out, *format)
	progress := newProgress(e.stderr)
	written := 0
	idle := 50 * time.Millisecond
	for {
		// The horizon is read before the page: if it already covered
		// every transaction committed at the start, a short page means
		// the export is complete.
		horizon, err := store.Horizon(ctx)
		if err != nil {
			if ctx.Err() != nil && follow {
				return nil
			}
			return err
		}
		recs, err := store.ReadFeed(ctx, after, exportPage)
		if err != nil {
			if ctx.Err() != nil && follow {
				return nil
			}
			return err
		}
		for _, r := range recs {
			if until != nil && until.Less(r.Cursor) {
				progress.done(written)
				return w.flush()
			}
			after = r.Cursor
			if before != nil && before.committed(r.TxID) {
				continue
			}
			if len(keep) > 0 && !keep[r.EventType] || *streamType != "" && r.StreamType != *streamType {
				continue
			}
			if err := w.write(r.Line()); err != nil {
				return err
			}
			written++
		}
		progress.update(written, after)
		if len(recs) < exportPage {
			if !follow {
				if horizon >= committed {
					progress.done(written)
					return w.flush()
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(5 * time.Millisecond):
				}
				continue
			}
			if err := w.flush(); err != nil {
				return err
			}
			if err := out.Flush(); err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(idle):
			}
		}
	}
}

// eventsImport is `mana events import`: it appends an NDJSON export to the
// database, checking every line's hash and chain first (eventstore.Import).
func eventsImport(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "events import", "events import [--file FILE|-] [--batch N]\n\n"+
		"Appends the events of an NDJSON export (mana events export) to the database in input order, in transactions of --batch events. "+
		"Each line's hash is recomputed from its fields and its prev_hash must be the hash of its stream's previous event (in the database or an earlier line) before it is inserted. "+
		"Event ids, streams, versions, types, occurred_at, metadata, payloads and hashes are kept; tx_id, position and recorded_at are this database's. "+
		"A missing database is created and migrated, without the default packages (they come with the export): import into a new database, not one `mana migrate` seeded. "+
		"The database may also hold the beginning of the same streams (an earlier export); an event id already present, or another event at a taken stream version, stops the import. "+
		"Transactions committed before a failure stay, and still verify.")
	file := fs.String("file", "-", "the NDJSON file to read; - for standard input")
	batch := fs.Int("batch", eventstore.DefaultImportBatch, "events per transaction (1 to 100000)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *batch < 1 || *batch > 100000 {
		return fmt.Errorf("%w: --batch must be between 1 and 100000", errUsage)
	}
	var in io.Reader = os.Stdin
	if *file != "-" && *file != "" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	pool, err := pg.Open(ctx, e.cfg.DatabaseURL, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrate(ctx, pool); err != nil {
		return err
	}
	// Hashes and chains need no keys: personal fields stay sealed as
	// exported, readable only where their data keys are.
	store, err := eventstore.New(pool, eventstore.Options{})
	if err != nil {
		return err
	}
	progress := newProgress(e.stderr)
	rep, err := store.Import(ctx, in, eventstore.ImportOptions{
		BatchSize: *batch,
		Progress: func(n int64, last eventstore.Cursor) {
			progress.update(int(n), last)
		},
	})
	if progress.on {
		fmt.Fprintln(e.stderr)
	}
	if err != nil {
		var ie *eventstore.ImportError
		if errors.As(err, &ie) && errors.Is(err, eventstore.ErrImportConflict) && ie.StreamType == domain.StreamPackage {
			err = fmt.Errorf("%w (a database `mana migrate` seeded holds its own default packages: import into a new database)", err)
		}
		if rep.Events > 0 {
			return fmt.Errorf("%w; the %d events of the lines before it were imported, up to cursor %s", err, rep.Events, rep.Last)
		}
		return fmt.Errorf("%w; nothing was imported", err)
	}
	plural := "s"
	if rep.Batches == 1 {
		plural = ""
	}
	fmt.Fprintf(e.stdout, "imported %d events in %d transaction%s, up to cursor %s\n", rep.Events, rep.Batches, plural, rep.Last)
	return nil
}

// startSnapshot tells which transactions had committed when a tail
// started: those below xmin, and those below xmax not in flight then.
type startSnapshot struct {
	xmin, xmax uint64
	inFlight   map[uint64]bool
}

func (s *startSnapshot) committed(txID uint64) bool {
	return txID < s.xmin || txID < s.xmax && !s.inFlight[txID]
}

// currentSnapshot reads pg_current_snapshot(), "xmin:xmax:xip,...".
func currentSnapshot(ctx context.Context, pool *pgxpool.Pool) (*startSnapshot, error) {
	var text string
	if err := pool.QueryRow(ctx, "SELECT pg_current_snapshot()::text").Scan(&text); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	parts := strings.Split(text, ":")
	if len(parts) != 3 {
		return nil, fmt.Errorf("snapshot %q: unexpected form", text)
	}
	s := &startSnapshot{inFlight: map[uint64]bool{}}
	var err error
	if s.xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", text, err)
	}
	if s.xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", text, err)
	}
	for _, x := range strings.Split(parts[2], ",") {
		if x == "" {
			continue
		}
		id, err := strconv.ParseUint(x, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("snapshot %q: %w", text, err)
		}
		s.inFlight[id] = true
	}
	return s, nil
}

// lineWriter writes events as NDJSON or CSV rows with the same fields.
type lineWriter struct {
	out    io.Writer
	csv    *csv.Writer
	header bool
}

var csvColumns = []string{"cursor", "event_id", "event_type", "schema_version", "stream_type", "stream_id",
	"stream_version", "occurred_at", "recorded_at", "metadata", "payload", "prev_hash", "hash"}

func newLineWriter(out io.Writer, format string) *lineWriter {
	w := &lineWriter{out: out}
	if format == "csv" {
		w.csv = csv.NewWriter(out)
	}
	return w
}

func (w *lineWriter) write(l eventstore.EventLine) error {
	if w.csv == nil {
		b, err := json.Marshal(l)
		if err != nil {
			return err
		}
		_, err = w.out.Write(append(b, '\n'))
		return err
	}
	if !w.header {
		w.header = true
		if err := w.csv.Write(csvColumns); err != nil {
			return err
		}
	}
	return w.csv.Write([]string{l.Cursor, l.EventID.String(), l.EventType, strconv.Itoa(l.SchemaVersion),
		l.StreamType, l.StreamID, strconv.FormatInt(l.StreamVersion, 10),
		l.OccurredAt.Format(time.RFC3339Nano), l.RecordedAt.Format(time.RFC3339Nano),
		string(l.Metadata), string(l.Payload), l.PrevHash, l.Hash})
}

func (w *lineWriter) flush() error {
	if w.csv != nil {
		w.csv.Flush()
		return w.csv.Error()
	}
	return nil
}

// progress reports on stderr, only when stderr is a terminal.
type progress struct {
	out  io.Writer
	on   bool
	last time.Time
}

func newProgress(stderr io.Writer) *progress {
	p := &progress{out: stderr}
	if f, ok := stderr.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.on = true
		}
	}
	return p
}

func (p *progress) update(n int, c eventstore.Cursor) {
	if !p.on || time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(p.out, "\r%d events, at %s ", n, c)
}

func (p *progress) done(n int) {
	if p.on {
		fmt.Fprintf(p.out, "\r%d events exported\n", n)
	}
}
