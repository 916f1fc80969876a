package pg

import (
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/manacore/mana/domain"
)

// MarkUnavailable returns err wrapped with domain.ErrUnavailable when it
// says PostgreSQL cannot be reached or is going away (a refused or broken
// connection, a server shutting down or starting up), so the API answers
// 503 UNAVAILABLE with Retry-After instead of 500; other errors, and nil,
// are returned unchanged. A write whose commit failed this way may or may
// not have committed: the client retries with the same Idempotency-Key and
// gets the one outcome.
func MarkUnavailable(err error) error {
	if err == nil || errors.Is(err, domain.ErrUnavailable) || !unreachable(err) {
		return err
	}
	return fmt.Errorf("%w: %w", domain.ErrUnavailable, err)
}

func unreachable(err error) bool {
	var (
		pgErr   *pgconn.PgError
		connErr *pgconn.ConnectError
		netErr  *net.OpError
	)
	switch {
	case errors.As(err, &pgErr):
		// Class 08: connection exception; 57P01–57P03: admin shutdown,
		// crash shutdown, cannot connect now (starting up).
		return pgErr.Code[:2] == "08" || pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03"
	case errors.As(err, &connErr), errors.As(err, &netErr):
		return true
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return true
	}
	return pgconn.SafeToRetry(err)
}
