package pg_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/pg"
)

// TestMarkUnavailable: errors saying PostgreSQL is unreachable or going away
// become domain.ErrUnavailable; query errors and nil stay as they are.
func TestMarkUnavailable(t *testing.T) {
	t.Parallel()
	if pg.MarkUnavailable(nil) != nil {
		t.Error("MarkUnavailable(nil) != nil")
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "57P01"}, true},
		{&pgconn.PgError{Code: "57P03"}, true},
		{&pgconn.PgError{Code: "08006"}, true},
		{fmt.Errorf("commit: %w", &pgconn.PgError{Code: "08003"}), true},
		{&pgconn.PgError{Code: "23505"}, false},
		{&pgconn.PgError{Code: "40001"}, false},
		{errors.New("decide: something else"), false},
		{context.Canceled, false},
	} {
		got := pg.MarkUnavailable(tc.err)
		if errors.Is(got, domain.ErrUnavailable) != tc.want {
			t.Errorf("MarkUnavailable(%v) unavailable = %v, want %v", tc.err, !tc.want, tc.want)
		}
		if !errors.Is(got, tc.err) {
			t.Errorf("MarkUnavailable(%v) lost the cause", tc.err)
		}
	}

	// A real refused connection: nothing listens on port 1.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := pgconn.Connect(ctx, "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=5")
	if err == nil {
		t.Fatal("connected to port 1")
	}
	if !errors.Is(pg.MarkUnavailable(err), domain.ErrUnavailable) {
		t.Errorf("a refused connection (%v) is not marked unavailable", err)
	}
}
