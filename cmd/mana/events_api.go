package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
)

// eventsAPIPiece is how many events one read of GET /api/v1/events holds
// in memory, whatever the page's limit.
const eventsAPIPiece = 500

// eventLogAPI serves GET /api/v1/events (api.EventLog) from the store.
type eventLogAPI struct {
	store *eventstore.Store
	// piece overrides eventsAPIPiece (tests).
	piece int
}

func (l eventLogAPI) Page(ctx context.Context, after string, types []string, limit int) (string, int, error) {
	from, err := eventstore.ParseCursor(after)
	if err != nil {
		return "", 0, badCursor("after")
	}
	end, n, err := l.store.FeedPageEnd(ctx, from, types, limit)
	if err != nil {
		return "", 0, err
	}
	return end.String(), n, nil
}

func (l eventLogAPI) Lines(ctx context.Context, after, end string, types []string, emit func([]byte) error) error {
	from, err := eventstore.ParseCursor(after)
	if err != nil {
		return badCursor("after")
	}
	upTo, err := eventstore.ParseCursor(end)
	if err != nil {
		return fmt.Errorf("events page end %q: %w", end, err)
	}
	piece := eventsAPIPiece
	if l.piece > 0 {
		piece = l.piece
	}
	for from.Less(upTo) {
		recs, err := l.store.ReadFeedRange(ctx, from, upTo, types, piece)
		if err != nil {
			return err
		}
		if len(recs) == 0 {
			return nil
		}
		for _, r := range recs {
			line, err := json.Marshal(r.Line())
			if err != nil {
				return fmt.Errorf("encode event %s: %w", r.EventID, err)
			}
			if err := emit(line); err != nil {
				return err
			}
		}
		from = recs[len(recs)-1].Cursor
	}
	return nil
}

func badCursor(field string) error {
	return &domain.Error{
		Code:    domain.CodeValidationFailed,
		Message: fmt.Sprintf("The field %q is invalid: must be a cursor <tx_id>-<position>.", field),
		Details: []domain.FieldError{{Field: field, Message: "must be a cursor <tx_id>-<position>"}},
	}
}
