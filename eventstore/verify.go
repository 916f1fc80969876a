package eventstore

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/eventstore/internal/db"
	"github.com/manacore/mana/internal/pg"
)

// ChainBreak describes the first event whose hash chain does not verify.
type ChainBreak struct {
	Cursor        Cursor
	EventID       string
	StreamType    string
	StreamID      string
	StreamVersion int64
	Reason        string
}

// Error implements error.
func (b *ChainBreak) Error() string {
	return fmt.Sprintf("hash chain broken at %s (%s/%s v%d, event %s): %s",
		b.Cursor, b.StreamType, b.StreamID, b.StreamVersion, b.EventID, b.Reason)
}

// verifyPage is how many events one keyset page reads.
const verifyPage = 2000

// VerifyChains recomputes every stream's hash chain from the stored columns
// (payload as read back from jsonb) in pages of constant size, and returns
// the number of events checked and the first break, or nil when every chain
// holds. Versions must run 1, 2, 3 … with each prev_hash equal to the
// previous event's hash (GenesisHash for version 1). Each page is its own
// transaction; VerifyLedger runs the same check with the other ledger
// checks in one snapshot.
func (s *Store) VerifyChains(ctx context.Context) (checked int64, brk *ChainBreak, err error) {
	var c chainChecker
	for {
		var rows []db.Event
		err := pg.InTx(ctx, s.pool, pg.Actor{Role: pg.RoleAuditor, Scope: pg.ScopeAuditor}, func(tx pgx.Tx) error {
			var err error
			rows, err = db.New(tx).EventsByStreamOrder(ctx, db.EventsByStreamOrderParams{
				AfterType: c.afterType, AfterID: c.afterID, AfterVersion: c.afterVersion, MaxEvents: verifyPage,
			})
			return err
		})
		if err != nil {
			return c.checked, nil, fmt.Errorf("read events: %w", err)
		}
		for _, row := range rows {
			r := recordFromRow(row)
			if b := c.check(&r); b != nil {
				return c.checked, b, nil
			}
		}
		if len(rows) < verifyPage {
			return c.checked, nil, nil
		}
	}
}
