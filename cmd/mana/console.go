package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/api/console"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/projections"
)

// mountConsole serves the web console at /console/ (docs/console.md) with
// cfg's ports. Cookies are Secure in production even when TLS ends at a
// proxy; the CSRF key comes from DATA_KEK.
func mountConsole(e *env, srv *api.Server, cfg console.Config) error {
	key, err := consoleKey(e.cfg.DataKEK)
	if err != nil {
		return err
	}
	cfg.Key, cfg.SecureCookies, cfg.Logger = key, e.cfg.Production(), e.log
	con, err := console.New(cfg)
	if err != nil {
		return err
	}
	srv.SetConsole(con)
	return nil
}

// consoleKey derives the console's CSRF key from DATA_KEK, so every node
// of a deployment signs the same tokens without another secret to manage.
func consoleKey(kek []byte) ([]byte, error) {
	if len(kek) == 0 {
		return nil, errors.New("console: DATA_KEK is not loaded")
	}
	m := hmac.New(sha256.New, kek)
	m.Write([]byte("mana console csrf key v1"))
	return m.Sum(nil), nil
}

// consoleScanBudget bounds how many events one explorer request (or one
// poll of the live tail) looks at; a filter that matches rarely pages on
// with the cursor it reached.
const consoleScanBudget = 5000

// consoleEvents is the console's event explorer over the store's feed.
type consoleEvents struct {
	store *eventstore.Store
}

// Head returns the newest readable cursor.
func (s consoleEvents) Head(ctx context.Context) (string, error) {
	c, err := s.store.FeedHead(ctx)
	if err != nil {
		return "", err
	}
	return c.String(), nil
}

// Query reads the feed in pages after q.After, keeping the events that
// match, until q.Limit of them, the end of the readable feed or
// consoleScanBudget events looked at.
func (s consoleEvents) Query(ctx context.Context, q console.EventQuery) (console.EventPage, error) {
	after, err := eventstore.ParseCursor(q.After)
	if err != nil {
		return console.EventPage{}, badCursor("after")
	}
	types := map[string]bool{}
	for _, t := range q.Types {
		types[t] = true
	}
	var page console.EventPage
	for scanned := 0; scanned < consoleScanBudget; {
		recs, err := s.store.ReadFeed(ctx, after, exportPage)
		if err != nil {
			return console.EventPage{}, err
		}
		for _, r := range recs {
			after = r.Cursor
			scanned++
			if !consoleMatch(r, q, types) {
				continue
			}
			page.Events = append(page.Events, consoleEvent(r))
			if len(page.Events) == q.Limit {
				page.Next, page.More = after.String(), true
				return page, nil
			}
		}
		if len(recs) < exportPage {
			page.Next = after.String()
			return page, nil
		}
	}
	page.Next, page.More = after.String(), true
	return page, nil
}

func consoleMatch(r eventstore.Record, q console.EventQuery, types map[string]bool) bool {
	switch {
	case len(types) > 0 && !types[r.EventType],
		q.StreamType != "" && r.StreamType != q.StreamType,
		q.StreamID != "" && r.StreamID != q.StreamID,
		!q.From.IsZero() && r.OccurredAt.Before(q.From),
		!q.To.IsZero() && r.OccurredAt.After(q.To):
		return false
	}
	return true
}

func consoleEvent(r eventstore.Record) console.Event {
	return console.Event{Cursor: r.Cursor.String(), ID: r.EventID, Type: r.EventType, StreamType: r.StreamType,
		StreamID: r.StreamID, StreamVersion: r.StreamVersion, OccurredAt: r.OccurredAt, Metadata: r.Metadata, Payload: r.Payload}
}

// consoleOperations serves the console's projections and ledger pages
// with what `mana projections status` and `mana ledger verify` run.
type consoleOperations struct {
	pool  *pgxpool.Pool
	store *eventstore.Store
}

// Projections returns the status of every read model.
func (o consoleOperations) Projections(ctx context.Context) ([]console.ProjectionStatus, error) {
	sts, err := projections.Statuses(ctx, o.pool, projections.All())
	if err != nil {
		return nil, err
	}
	out := make([]console.ProjectionStatus, len(sts))
	for i, st := range sts {
		out[i] = console.ProjectionStatus{Name: st.Name, Checkpoint: st.Checkpoint.String(), LagEvents: st.LagEvents,
			LagSeconds: st.LagSeconds, Failures: st.Failures, Holder: st.Holder}
	}
	return out, nil
}

// VerifyLedger runs the checks of `mana ledger verify`: one line per
// passed check, then the first discrepancy, if any.
func (o consoleOperations) VerifyLedger(ctx context.Context) ([]console.LedgerCheck, error) {
	var out []console.LedgerCheck
	_, d, err := o.store.VerifyLedger(ctx, eventstore.VerifyOptions{Passed: func(check string, r eventstore.LedgerReport) {
		out = append(out, console.LedgerCheck{Line: r.Line(check), OK: true})
	}})
	if err != nil {
		return nil, err
	}
	if d != nil {
		out = append(out, console.LedgerCheck{Line: d.Error(), OK: false})
	}
	return out, nil
}
