package eventstore

import (
	"bytes"
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
// previous event's hash (GenesisHash for version 1).
func (s *Store) VerifyChains(ctx context.Context) (checked int64, brk *ChainBreak, err error) {
	var (
		afterType, afterID string
		afterVersion       int64
		prevHash           []byte
	)
	for {
		var rows []db.Event
		err := pg.InTx(ctx, s.pool, pg.Actor{Role: pg.RoleAuditor, Scope: pg.ScopeAuditor}, func(tx pgx.Tx) error {
			var err error
			rows, err = db.New(tx).EventsByStreamOrder(ctx, db.EventsByStreamOrderParams{
				AfterType: afterType, AfterID: afterID, AfterVersion: afterVersion, MaxEvents: verifyPage,
			})
			return err
		})
		if err != nil {
			return checked, nil, fmt.Errorf("read events: %w", err)
		}
		for _, row := range rows {
			r := recordFromRow(row)
			sameStream := r.StreamType == afterType && r.StreamID == afterID
			wantVersion, wantPrev := int64(1), GenesisHash
			if sameStream {
				wantVersion, wantPrev = afterVersion+1, prevHash
			}
			fail := func(reason string) (int64, *ChainBreak, error) {
				return checked, &ChainBreak{Cursor: r.Cursor, EventID: r.EventID.String(), StreamType: r.StreamType,
					StreamID: r.StreamID, StreamVersion: r.StreamVersion, Reason: reason}, nil
			}
			if r.StreamVersion != wantVersion {
				return fail(fmt.Sprintf("version %d follows %d", r.StreamVersion, wantVersion-1))
			}
			if !bytes.Equal(r.PrevHash, wantPrev) {
				return fail("prev_hash does not match the previous event's hash")
			}
			h, err := ComputeHash(&r)
			if err != nil {
				return fail(err.Error())
			}
			if !bytes.Equal(h, r.Hash) {
				return fail("stored hash does not match the recomputed hash")
			}
			checked++
			afterType, afterID, afterVersion, prevHash = r.StreamType, r.StreamID, r.StreamVersion, r.Hash
		}
		if len(rows) < verifyPage {
			return checked, nil, nil
		}
	}
}
