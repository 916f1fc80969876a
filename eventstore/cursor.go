package eventstore

import (
	"fmt"
	"strconv"
	"strings"
)

// Cursor is a position in the feed: the (tx_id, position) of an event. The
// feed is ordered by this pair, never by position alone. Its text form
// "<tx_id>-<position>" is the one public way to name a point in the log;
// clients treat it as opaque.
type Cursor struct {
	TxID     uint64
	Position int64
}

// String returns the "<tx_id>-<position>" form.
func (c Cursor) String() string {
	return strconv.FormatUint(c.TxID, 10) + "-" + strconv.FormatInt(c.Position, 10)
}

// IsZero reports whether c is the start of the feed.
func (c Cursor) IsZero() bool { return c == Cursor{} }

// Less reports whether c comes before o in the feed.
func (c Cursor) Less(o Cursor) bool {
	return c.TxID < o.TxID || c.TxID == o.TxID && c.Position < o.Position
}

// ParseCursor parses the "<tx_id>-<position>" form. The empty string and
// "0" are the start of the feed.
func ParseCursor(s string) (Cursor, error) {
	if s == "" || s == "0" {
		return Cursor{}, nil
	}
	tx, pos, ok := strings.Cut(s, "-")
	if !ok {
		return Cursor{}, fmt.Errorf("cursor %q: want <tx_id>-<position>", s)
	}
	t, err := strconv.ParseUint(tx, 10, 64)
	if err != nil {
		return Cursor{}, fmt.Errorf("cursor %q: bad tx_id", s)
	}
	p, err := strconv.ParseInt(pos, 10, 64)
	if err != nil || p < 0 {
		return Cursor{}, fmt.Errorf("cursor %q: bad position", s)
	}
	return Cursor{TxID: t, Position: p}, nil
}
