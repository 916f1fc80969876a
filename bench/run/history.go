package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/pg"
)

// buildHistory gives user's credit account n more spends of 1 credit,
// batch events per transaction, through the event store itself: the same
// CreditSpent events, hash chain, user position, charge rows and account
// row a spend over HTTP leaves, only many per command. It takes seconds
// where n spends over HTTP would take minutes, because one account's
// spends are serial by design. The account must be open (one spend made)
// and idle. Spends seal their metadata as personal data, so the store
// needs the service's keyring (DATA_KEK, EMAIL_INDEX_KEY). Returns the
// cursor of the last event appended.
func buildHistory(ctx context.Context, dsn string, kr *keyring.Keyring, user uuid.UUID, n, batch int) (eventstore.Cursor, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return eventstore.Cursor{}, err
	}
	defer pool.Close()
	store, err := eventstore.New(pool, eventstore.Options{Keyring: kr})
	if err != nil {
		return eventstore.Cursor{}, err
	}
	var last eventstore.Cursor
	for done := 0; done < n; {
		k := min(batch, n-done)
		cmd := eventstore.Command{
			Name:     "bench.history",
			Actor:    pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem, UserID: user},
			Metadata: domain.Metadata{Actor: "user:" + user.String(), AppID: "bench"},
		}
		_, err := store.Execute(ctx, cmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			a := domain.Account{UserID: user}
			var head []byte
			err := tx.QueryRow(ctx, `SELECT version, free, paid, held, total_earned, total_spent, created_at, last_daily_grant, last_hash
FROM credit_accounts WHERE user_id = $1 FOR UPDATE`, user).Scan(&a.Version, &a.Free, &a.Paid, &a.Held, &a.TotalEarned,
				&a.TotalSpent, &a.CreatedAt, &a.LastDailyGrant, &head)
			if err != nil {
				return domain.Receipt{}, fmt.Errorf("lock account: %w", err)
			}
			before := a.Version
			events := make([]domain.Event, 0, k)
			var (
				ids                  []uuid.UUID
				amounts, free, paids []int64
			)
			for range k {
				id, err := uuid.NewV7()
				if err != nil {
					return domain.Receipt{}, err
				}
				ev, err := a.Spend(id, "bench", 1, "history", nil)
				if err != nil {
					return domain.Receipt{}, err
				}
				a.Apply(ev)
				events = append(events, ev)
				ids = append(ids, id)
				amounts = append(amounts, int64(ev.Amount))
				free = append(free, int64(ev.Split.Free))
				paids = append(paids, int64(ev.Split.Paid))
			}
			a.Version += int64(k)
			recs, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamCreditAccount, StreamID: user.String(),
				ExpectedVersion: before, PrevHash: head, Users: []uuid.UUID{user}, Events: events})
			if err != nil {
				return domain.Receipt{}, err
			}
			last = recs[len(recs)-1].Cursor
			tx.Queue(`INSERT INTO credit_charges (transaction_id, user_id, app_id, amount, free_part, paid_part, created_at)
SELECT t, $2, 'bench', a, f, p, $6 FROM unnest($1::uuid[], $3::bigint[], $4::bigint[], $5::bigint[]) AS u(t, a, f, p)`,
				ids, user, amounts, free, paids, tx.Now())
			tx.Queue(`UPDATE credit_accounts SET version = $2, free = $3, paid = $4, held = $5, total_earned = $6, total_spent = $7,
last_daily_grant = $8, last_hash = $9 WHERE user_id = $1`,
				user, a.Version, a.Free, a.Paid, a.Held, a.TotalEarned, a.TotalSpent, a.LastDailyGrant, recs[len(recs)-1].Hash)
			return domain.Receipt{Status: http.StatusCreated}, nil
		})
		if err != nil {
			return eventstore.Cursor{}, fmt.Errorf("history batch at %d: %w", done, err)
		}
		done += k
	}
	return last, nil
}

// awaitProjections waits until every projection's checkpoint has passed c.
func awaitProjections(ctx context.Context, pool *pgxpool.Pool, c eventstore.Cursor, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var behind int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM projection_checkpoints WHERE (tx_id, position) < ($1::xid8, $2::bigint)`,
			c.TxID, c.Position).Scan(&behind)
		if err != nil {
			return err
		}
		if behind == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d projections still behind %s after %s", behind, c, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkpoint reads a projection's checkpoint.
func checkpoint(ctx context.Context, pool *pgxpool.Pool, name string) (eventstore.Cursor, error) {
	var c eventstore.Cursor
	err := pool.QueryRow(ctx, `SELECT tx_id, position FROM projection_checkpoints WHERE name = $1`, name).Scan(&c.TxID, &c.Position)
	return c, err
}
