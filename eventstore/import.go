package eventstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/manacore/mana/internal/pg"
)

// Defaults of ImportOptions.
const (
	// DefaultImportBatch is how many events one import transaction inserts.
	DefaultImportBatch = 1000
	// DefaultImportMaxPending bounds the events an import holds back until
	// their stream's previous version has been read (see Import).
	DefaultImportMaxPending = 10000
	// DefaultImportMaxLine bounds one input line.
	DefaultImportMaxLine = 16 << 20
)

// The kinds of ImportError; errors.Is tells them apart.
var (
	// ErrImportFormat: the line is not an event line of `mana events
	// export` (NDJSON).
	ErrImportFormat = errors.New("not an event line")
	// ErrImportHash: the stored hash is not the one recomputed from the
	// line's fields: the line was changed after it was exported.
	ErrImportHash = errors.New("hash does not match the event")
	// ErrImportChain: the line's prev_hash is not the hash of its stream's
	// previous version, or the previous version never came.
	ErrImportChain = errors.New("hash chain broken")
	// ErrImportDuplicate: the event id is already in the database or
	// earlier in the input.
	ErrImportDuplicate = errors.New("duplicate event")
	// ErrImportConflict: the database (or an earlier line) already holds
	// another event at the line's stream version.
	ErrImportConflict = errors.New("stream version taken")
	// ErrImportOrder: too many events wait for their stream's previous
	// version (ImportOptions.MaxPending).
	ErrImportOrder = errors.New("input too far out of stream order")
)

// ImportError names the input line an import stopped at, and why.
type ImportError struct {
	// Line is the 1-based line number in the input.
	Line          int64
	EventID       string
	StreamType    string
	StreamID      string
	StreamVersion int64
	// Kind is one of the ErrImport* errors.
	Kind   error
	Reason string
}

// Error implements error: "line N (event E, T/I vV): kind: reason".
func (e *ImportError) Error() string {
	where := fmt.Sprintf("line %d", e.Line)
	if e.EventID != "" {
		where += fmt.Sprintf(" (event %s, %s/%s v%d)", e.EventID, e.StreamType, e.StreamID, e.StreamVersion)
	}
	return fmt.Sprintf("%s: %v: %s", where, e.Kind, e.Reason)
}

// Unwrap returns the kind, for errors.Is.
func (e *ImportError) Unwrap() error { return e.Kind }

// ImportOptions tunes Import.
type ImportOptions struct {
	// BatchSize is how many events one transaction inserts;
	// DefaultImportBatch when zero.
	BatchSize int
	// MaxPending bounds how many events may wait for their stream's
	// previous version; DefaultImportMaxPending when zero.
	MaxPending int
	// MaxLineBytes bounds one input line; DefaultImportMaxLine when zero.
	MaxLineBytes int
	// Progress, when set, is called after each committed transaction with
	// the number of events imported so far and the last one's cursor.
	Progress func(imported int64, last Cursor)
}

// ImportReport is what an import did, also when it failed part-way: the
// events of committed transactions stay.
type ImportReport struct {
	// Lines is the number of non-empty input lines read.
	Lines int64
	// Events is the number of events inserted, in Batches transactions.
	Events, Batches int64
	// Last is the cursor, in this database, of the last event inserted.
	Last Cursor
}

// Import reads events as `mana events export` writes them (NDJSON, one
// EventLine per line; cursor and recorded_at are ignored) and inserts them
// in input order, in transactions of BatchSize events, keeping event_id,
// stream, version, type, schema version, occurred_at, metadata, payload,
// prev_hash and hash; tx_id, position and recorded_at are this database's
// (the hash covers none of them, docs/events.md).
//
// Before an event is inserted, its hash is recomputed from its fields
// (ComputeHash) and its prev_hash must be the hash of its stream's previous
// version: GenesisHash for version 1, or the newest event of the stream in
// the database, or an earlier line. So the target may be empty, or hold the
// beginning of the streams (an earlier export), but never another history:
// an event id already present is ErrImportDuplicate, a stream version
// already taken ErrImportConflict.
//
// The feed order of an export is (tx_id, position), which may show a
// stream's version n+1 before version n (a transaction can get its id
// before another that commits first, then append after it). Such an event
// waits, verified on its own, until its predecessor has been inserted, and
// is inserted right after it; at most MaxPending events wait at once. An
// event whose predecessor never comes fails the import at the end of the
// input (ErrImportChain).
//
// Memory stays constant: the batch being written (by COPY), at most two
// more read and hashed ahead meanwhile, the waiting events and the batch's
// stream heads. Every transaction is short (the feed's horizon is
// cluster-wide). When Import fails, the transactions it committed stay:
// their events verify, as every stream holds a gap-free prefix of its
// chain. When it returns early, its reader may still be blocked in a read
// of r (a pipe, say) until that read returns.
func (s *Store) Import(ctx context.Context, r io.Reader, opts ImportOptions) (ImportReport, error) {
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultImportBatch
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultImportMaxPending
	}
	if opts.MaxLineBytes <= 0 {
		opts.MaxLineBytes = DefaultImportMaxLine
	}
	rd := &importReader{in: bufio.NewReaderSize(r, 256<<10), batch: opts.BatchSize, maxLine: opts.MaxLineBytes}
	im := &importer{
		store:   s,
		opts:    opts,
		pending: map[versionKey]*importLine{},
		waiting: map[uuid.UUID]int64{},
	}
	// One goroutine reads, parses and hashes the next batch while this one
	// writes the current batch to the database.
	batches := make(chan readBatch, 1)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go rd.run(rctx, batches)
	report := func() ImportReport {
		rep := im.report
		rep.Lines = rd.lines.Load()
		return rep
	}
	eof := false
	for b := range batches {
		if b.err != nil {
			return report(), b.err
		}
		if len(b.lines) > 0 {
			if err := im.commit(ctx, b.lines); err != nil {
				return report(), err
			}
		}
		if b.eof {
			eof = true
			break
		}
	}
	if !eof {
		return report(), ctx.Err()
	}
	im.report.Lines = rd.lines.Load()
	if len(im.pending) > 0 {
		// The earliest line still waiting names the gap.
		var first *importLine
		for _, l := range im.pending {
			if first == nil || l.line < first.line {
				first = l
			}
		}
		return im.report, first.fail(ErrImportChain, fmt.Sprintf(
			"version %d of its stream is not in the input (nor in the database): the export is incomplete or an event was removed",
			first.rec.StreamVersion-1))
	}
	return im.report, nil
}

// importLine is one parsed, self-verified input line.
type importLine struct {
	line int64
	rec  Record
}

func (l *importLine) fail(kind error, reason string) *ImportError {
	return &ImportError{Line: l.line, EventID: l.rec.EventID.String(), StreamType: l.rec.StreamType,
		StreamID: l.rec.StreamID, StreamVersion: l.rec.StreamVersion, Kind: kind, Reason: reason}
}

type streamKey struct{ typ, id string }

type versionKey struct {
	streamKey
	version int64
}

type streamHead struct {
	version int64
	hash    []byte
}

type importer struct {
	store  *Store
	opts   ImportOptions
	report ImportReport
	// pending holds events whose stream's previous version has not been
	// inserted yet, by (stream, version); waiting their event ids.
	pending map[versionKey]*importLine
	waiting map[uuid.UUID]int64
}

// importReader reads, parses and self-verifies the input in batches.
type importReader struct {
	in      *bufio.Reader
	batch   int
	maxLine int
	buf     []byte
	lineNo  int64
	// lines counts the non-empty lines read.
	lines atomic.Int64
}

// readBatch is a batch of parsed lines, or the error that ended reading;
// eof marks the last batch.
type readBatch struct {
	lines []*importLine
	eof   bool
	err   error
}

// run sends batches until the end of the input, an error, or ctx's end.
// A read that blocks (a pipe, a terminal) keeps it until it returns.
func (rd *importReader) run(ctx context.Context, out chan<- readBatch) {
	defer close(out)
	for {
		b := rd.next()
		select {
		case out <- b:
		case <-ctx.Done():
			return
		}
		if b.eof || b.err != nil {
			return
		}
	}
}

// next reads up to batch events.
func (rd *importReader) next() readBatch {
	var b readBatch
	for len(b.lines) < rd.batch {
		raw, err := rd.readLine()
		if err == io.EOF {
			b.eof = true
			return b
		}
		if err != nil {
			return readBatch{err: err}
		}
		if len(bytes.TrimSpace(raw)) == 0 {
			continue
		}
		rd.lines.Add(1)
		l, err := parseImportLine(rd.lineNo, raw)
		if err != nil {
			return readBatch{err: err}
		}
		b.lines = append(b.lines, l)
	}
	return b
}

// readLine returns the next line without its end of line, valid until the
// next call.
func (rd *importReader) readLine() ([]byte, error) {
	rd.buf = rd.buf[:0]
	for {
		chunk, err := rd.in.ReadSlice('\n')
		rd.buf = append(rd.buf, chunk...)
		if len(rd.buf) > rd.maxLine {
			return nil, &ImportError{Line: rd.lineNo + 1, Kind: ErrImportFormat,
				Reason: fmt.Sprintf("the line is longer than %d bytes", rd.maxLine)}
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF && len(rd.buf) > 0:
			rd.lineNo++
			return bytes.TrimRight(rd.buf, "\r\n"), nil
		case err != nil:
			if err != io.EOF {
				err = fmt.Errorf("read line %d: %w", rd.lineNo+1, err)
			}
			return nil, err
		}
		rd.lineNo++
		return bytes.TrimRight(rd.buf, "\r\n"), nil
	}
}

// The column checks of sql/migrations/0002_events.sql, so a bad line is
// named before it reaches the database.
var (
	streamTypePattern = regexp.MustCompile(`^[a-z][a-z_]*$`)
	eventTypePattern  = regexp.MustCompile(`^[a-z][a-z_]*\.[a-z][a-z_]*$`)
)

// parseImportLine decodes one export line and checks that its hash is the
// one recomputed from its fields.
func parseImportLine(n int64, raw []byte) (*importLine, error) {
	var el EventLine
	if err := json.Unmarshal(raw, &el); err != nil {
		return nil, &ImportError{Line: n, Kind: ErrImportFormat, Reason: "invalid JSON: " + err.Error()}
	}
	l := &importLine{line: n, rec: Record{
		EventID: el.EventID, StreamType: el.StreamType, StreamID: el.StreamID, StreamVersion: el.StreamVersion,
		EventType: el.EventType, SchemaVersion: el.SchemaVersion,
		OccurredAt: el.OccurredAt.UTC().Truncate(time.Microsecond),
		Metadata:   el.Metadata, Payload: el.Payload,
	}}
	bad := func(reason string) error { return l.fail(ErrImportFormat, reason) }
	switch {
	case el.EventID == uuid.Nil:
		return nil, &ImportError{Line: n, Kind: ErrImportFormat, Reason: "no event_id"}
	case !streamTypePattern.MatchString(el.StreamType):
		return nil, bad(fmt.Sprintf("stream_type %q is not of the form [a-z][a-z_]*", el.StreamType))
	case len(el.StreamID) < 1 || len(el.StreamID) > 200:
		return nil, bad("stream_id must have 1 to 200 characters")
	case el.StreamVersion < 1:
		return nil, bad("stream_version must be positive")
	case !eventTypePattern.MatchString(el.EventType):
		return nil, bad(fmt.Sprintf("event_type %q is not of the form <aggregate>.<past_tense>", el.EventType))
	case el.SchemaVersion < 1:
		return nil, bad("schema_version must be positive")
	case el.OccurredAt.IsZero():
		return nil, bad("no occurred_at")
	case !isJSONObject(el.Metadata):
		return nil, bad("metadata is not a JSON object")
	case !isJSONObject(el.Payload):
		return nil, bad("payload is not a JSON object")
	}
	var err error
	if l.rec.PrevHash, err = decodeHash(el.PrevHash); err != nil {
		return nil, bad("prev_hash: " + err.Error())
	}
	if l.rec.Hash, err = decodeHash(el.Hash); err != nil {
		return nil, bad("hash: " + err.Error())
	}
	h, err := ComputeHash(&l.rec)
	if err != nil {
		return nil, l.fail(ErrImportHash, err.Error())
	}
	if !bytes.Equal(h, l.rec.Hash) {
		return nil, l.fail(ErrImportHash, fmt.Sprintf("the line's fields hash to %x, the line says %s", h, el.Hash))
	}
	return l, nil
}

func isJSONObject(m json.RawMessage) bool {
	m = bytes.TrimSpace(m)
	return len(m) >= 2 && m[0] == '{'
}

func decodeHash(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, errors.New("not hex")
	}
	if len(b) != len(GenesisHash) {
		return nil, fmt.Errorf("%d bytes, want %d", len(b), len(GenesisHash))
	}
	return b, nil
}

// importHeadsQuery returns the newest version and hash of each given
// stream that has events: one backward probe of the stream-version index
// per stream.
const importHeadsQuery = `SELECT s.stream_type, s.stream_id, h.stream_version, h.hash
FROM unnest($1::text[], $2::text[]) AS s(stream_type, stream_id)
CROSS JOIN LATERAL (
    SELECT e.stream_version, e.hash FROM events e
    WHERE e.stream_type = s.stream_type AND e.stream_id = s.stream_id
    ORDER BY e.stream_version DESC
    LIMIT 1
) h`

// importExistingQuery returns which of the given event ids the database
// holds already.
const importExistingQuery = `SELECT event_id FROM events WHERE event_id = ANY($1::uuid[])`

// commit checks batch against the database and the waiting events and
// inserts, in one transaction, every event whose chain is complete.
func (im *importer) commit(ctx context.Context, batch []*importLine) error {
	tx, err := pg.Begin(ctx, im.store.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, pgx.TxOptions{})
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	// Refuse event ids the database or an earlier line already has.
	ids := make([]uuid.UUID, len(batch))
	byID := make(map[uuid.UUID]*importLine, len(batch))
	for i, l := range batch {
		ids[i] = l.rec.EventID
		if first, dup := byID[l.rec.EventID]; dup {
			return l.fail(ErrImportDuplicate, fmt.Sprintf("the event id is also on line %d", first.line))
		}
		if line, dup := im.waiting[l.rec.EventID]; dup {
			return l.fail(ErrImportDuplicate, fmt.Sprintf("the event id is also on line %d", line))
		}
		byID[l.rec.EventID] = l
	}
	rows, err := tx.Query(ctx, importExistingQuery, ids)
	if err != nil {
		return fmt.Errorf("import: look up event ids: %w", err)
	}
	existing, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return fmt.Errorf("import: look up event ids: %w", err)
	}
	if len(existing) > 0 {
		first := byID[existing[0]]
		for _, id := range existing[1:] {
			if l := byID[id]; l.line < first.line {
				first = l
			}
		}
		return first.fail(ErrImportDuplicate, "the database already holds this event")
	}

	// The heads of the batch's streams in the database.
	heads := map[streamKey]streamHead{}
	var types, streamIDs []string
	for _, l := range batch {
		k := streamKey{l.rec.StreamType, l.rec.StreamID}
		if _, seen := heads[k]; !seen {
			heads[k] = streamHead{hash: GenesisHash}
			types, streamIDs = append(types, k.typ), append(streamIDs, k.id)
		}
	}
	rows, err = tx.Query(ctx, importHeadsQuery, types, streamIDs)
	if err != nil {
		return fmt.Errorf("import: read stream heads: %w", err)
	}
	var (
		k streamKey
		h streamHead
	)
	_, err = pgx.ForEachRow(rows, []any{&k.typ, &k.id, &h.version, &h.hash}, func() error {
		heads[k] = streamHead{version: h.version, hash: bytes.Clone(h.hash)}
		return nil
	})
	if err != nil {
		return fmt.Errorf("import: read stream heads: %w", err)
	}

	// Chain every line to its stream's head, in input order; a line ahead
	// of its stream waits for its predecessor.
	var ready []*importLine
	for _, l := range batch {
		k := streamKey{l.rec.StreamType, l.rec.StreamID}
		head := heads[k]
		v := l.rec.StreamVersion
		switch {
		case v <= head.version:
			return l.fail(ErrImportConflict, fmt.Sprintf(
				"the stream already has versions up to %d, in the database or on an earlier line; an import appends to the streams it finds, it never replaces events", head.version))
		case v > head.version+1:
			vk := versionKey{k, v}
			if other, dup := im.pending[vk]; dup {
				return l.fail(ErrImportConflict, fmt.Sprintf("line %d has the same stream version", other.line))
			}
			if len(im.pending) >= im.opts.MaxPending {
				return l.fail(ErrImportOrder, fmt.Sprintf(
					"%d events already wait for an earlier version of their stream; this one waits for version %d",
					len(im.pending), head.version+1))
			}
			im.pending[vk] = l
			im.waiting[l.rec.EventID] = l.line
			continue
		}
		// The next version: chain it, then every waiting successor.
		for l != nil {
			if !bytes.Equal(l.rec.PrevHash, head.hash) {
				what := "the hash of version " + fmt.Sprint(head.version)
				if head.version == 0 {
					what = "the genesis hash (zeros)"
				}
				return l.fail(ErrImportChain, fmt.Sprintf("prev_hash %x is not %s, %x", l.rec.PrevHash, what, head.hash))
			}
			ready = append(ready, l)
			head = streamHead{version: l.rec.StreamVersion, hash: l.rec.Hash}
			next := versionKey{k, head.version + 1}
			l = im.pending[next]
			if l != nil {
				delete(im.pending, next)
				delete(im.waiting, l.rec.EventID)
			}
		}
		heads[k] = head
	}
	if len(ready) == 0 {
		return nil
	}

	// COPY is the fastest way in; tx_id, position and recorded_at take
	// their defaults.
	_, err = tx.CopyFrom(ctx, pgx.Identifier{"events"}, importColumns, pgx.CopyFromSlice(len(ready), func(i int) ([]any, error) {
		r := &ready[i].rec
		return []any{r.EventID, r.StreamType, r.StreamID, r.StreamVersion, r.EventType, int32(r.SchemaVersion),
			r.OccurredAt, r.Metadata, r.Payload, r.PrevHash, r.Hash}, nil
	}))
	if err != nil {
		return importInsertError(err)
	}
	var last Cursor
	if err := tx.QueryRow(ctx, `SELECT tx_id, position FROM events WHERE event_id = $1`, ready[len(ready)-1].rec.EventID).
		Scan(&last.TxID, &last.Position); err != nil {
		return fmt.Errorf("import: read back the last event: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return importInsertError(fmt.Errorf("commit: %w", err))
	}
	im.report.Events += int64(len(ready))
	im.report.Batches++
	im.report.Last = last
	im.store.metrics.appended.Add(float64(len(ready)))
	if fn := im.store.onAppend.Load(); fn != nil {
		(*fn)()
	}
	if im.opts.Progress != nil {
		im.opts.Progress(im.report.Events, im.report.Last)
	}
	return nil
}

// importColumns are the columns an import writes; COPY sends them in
// this order.
var importColumns = []string{"event_id", "stream_type", "stream_id", "stream_version", "event_type", "schema_version",
	"occurred_at", "metadata", "payload", "prev_hash", "hash"}

// importInsertError names what a concurrent writer (the checks above ran in
// this transaction, so only another one can) got in first.
func importInsertError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		kind := ErrImportConflict
		if pgErr.ConstraintName == "events_event_id_key" {
			kind = ErrImportDuplicate
		}
		return fmt.Errorf("import: %w: %s (%s): another writer appended to the database during the import", kind, pgErr.Message, pgErr.Detail)
	}
	return fmt.Errorf("import: insert events: %w", err)
}
