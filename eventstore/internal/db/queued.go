package db

// The statements a command queues (eventstore.Tx.Queue) to send in the
// pipelined batch before its commit, rather than in a round trip each. Their
// parameters are those of the generated methods of the same names.
const (
	// IdempotencyCompleteSQL is IdempotencyComplete's statement.
	IdempotencyCompleteSQL = idempotencyComplete
	// IdempotencyReleaseSQL is IdempotencyRelease's statement.
	IdempotencyReleaseSQL = idempotencyRelease
)
