package projections

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
)

// usageStatsProjection builds GET /credits/usage, table usage_stats: the
// credits a user spent per app and UTC day of the events' OccurredAt, and
// how many charges made them up.
type usageStatsProjection struct{ Handlers }

// UsageStats returns the projection "usage_stats", keyed by (user, app,
// UTC day of the event's OccurredAt):
//
//   - credit.spent adds its amount and counts one charge.
//   - credit.hold_captured adds the amount captured and counts one charge
//     (placing, releasing or expiring a hold charges nothing).
//   - credit.refunded subtracts its amount, and leaves the count alone, on
//     the refund's own day and app. It is not moved back to the day of the
//     spend it reverses: that day is not in the refund event, and a
//     projection reads no table but its own, so booking it there would
//     need state this table does not keep. Usage therefore shows what
//     happened on each day, net; a day whose refunds exceed its charges
//     (a refund of an earlier day's spend) has negative credits, and a day
//     with only refunds a row with count 0.
//   - user.erased deletes every row of the user.
func UsageStats() Projection {
	return usageStatsProjection{Handlers{
		"credit.spent":         applyUsageEvent,
		"credit.hold_captured": applyUsageEvent,
		"credit.refunded":      applyUsageEvent,
		"user.erased":          applyUsageErased,
	}}
}

func (usageStatsProjection) Name() string { return "usage_stats" }

func (usageStatsProjection) Tables() []Table {
	return []Table{{Name: "usage_stats", Access: func(t string) string {
		return creditReadModelAccess("usage_stats", t)
	}}}
}

func applyUsageEvent(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	var (
		user   uuid.UUID
		app    string
		amount domain.Credits
		count  int64
	)
	switch e := ev.Event.(type) {
	case *domain.CreditSpent:
		user, app, amount, count = e.UserID, e.AppID, e.Amount, 1
	case *domain.CreditHoldCaptured:
		user, app, amount, count = e.UserID, e.AppID, e.Captured.Total(), 1
	case *domain.CreditRefunded:
		user, app, amount, count = e.UserID, e.AppID, -e.Amount, 0
	default:
		return fmt.Errorf("%s: unexpected payload %T", ev.EventType, ev.Event)
	}
	_, err := w.Exec(ctx, `INSERT INTO `+w.Table("usage_stats")+` AS u (user_id, app_id, day, credits, count)
VALUES ($1, $2, $3::date, $4, $5)
ON CONFLICT (user_id, app_id, day) DO UPDATE SET
    credits = u.credits + excluded.credits, count = u.count + excluded.count`,
		user, app, domain.Day(ev.OccurredAt), amount, count)
	if err != nil {
		return fmt.Errorf("add usage: %w", err)
	}
	return nil
}

func applyUsageErased(ctx context.Context, w *Writer, ev eventstore.Decoded) error {
	e, ok := ev.Event.(*domain.UserErased)
	if !ok {
		return fmt.Errorf("user.erased: unexpected payload %T", ev.Event)
	}
	if _, err := w.Exec(ctx, `DELETE FROM `+w.Table("usage_stats")+` WHERE user_id = $1`, e.UserID); err != nil {
		return fmt.Errorf("delete usage: %w", err)
	}
	return nil
}

// UserUsage returns user's usage on the UTC days from from's to to's, both
// included, ordered by day, then app id; Day is YYYY-MM-DD. It reads as
// mana_app in user's scope, so row-level security limits it to user's
// rows. It does not wait for the projection: callers wait for
// read-your-writes first. No usage (to's day before from's included) is
// an empty list, not nil.
func UserUsage(ctx context.Context, pool *pgxpool.Pool, user uuid.UUID, from, to time.Time) ([]domain.UsageDay, error) {
	fromDay, toDay := domain.Day(from), domain.Day(to)
	out := []domain.UsageDay{}
	err := pg.InTx(ctx, pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user}, func(tx pgx.Tx) error {
		// The primary key (user_id, app_id, day) narrows this to the
		// user's rows.
		rows, err := tx.Query(ctx, `SELECT to_char(day, 'YYYY-MM-DD'), app_id, credits, count
FROM usage_stats
WHERE user_id = $1 AND day BETWEEN $2::date AND $3::date
ORDER BY day, app_id`, user, fromDay, toDay)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (domain.UsageDay, error) {
			var u domain.UsageDay
			err := r.Scan(&u.Day, &u.AppID, &u.Credits, &u.Count)
			return u, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read usage: %w", err)
	}
	return out, nil
}
