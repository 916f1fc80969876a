package domain

import (
	"context"

	"github.com/google/uuid"
)

// ReadYourWrites makes a user's reads of a read model see that user's own
// earlier writes, on whichever node serves them.
type ReadYourWrites interface {
	// Await returns nil once read model readModel has applied every write
	// that touched user and the feed position minPosition (empty for
	// none), waiting a bounded time; then it fails with
	// READ_MODEL_LAGGING. A malformed minPosition is VALIDATION_FAILED.
	Await(ctx context.Context, readModel string, user uuid.UUID, minPosition string) error
}
