package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/keyring"
	"github.com/manacore/mana/internal/ledger"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
)

// tamperLedger is one fresh database for the tamper matrix: the seeded
// packages, the Plus package's stream grown to three events, two credit
// accounts, the balances read model rebuilt up to the last event, and a
// signed checkpoint over all of it.
type tamperLedger struct {
	dsn  string
	vars map[string]string
	// plus is the Plus package's stream id (package.created, then two
	// package.updated); a and b are the two credit accounts, a with four
	// events (signup bonus, paid grant, hold, capture), b with two (signup
	// bonus, negative adjustment).
	plus, a, b string
	cp         domain.Checkpoint
}

func newTamperLedger(t *testing.T) *tamperLedger {
	t.Helper()
	dsn := pgtest.NewDB(t)
	l := &tamperLedger{dsn: dsn, vars: map[string]string{"DATABASE_URL": dsn, "DATA_DIR": t.TempDir()}}
	if res := runCmd(t, l.vars, "migrate"); res.code != 0 {
		t.Fatalf("migrate = %d, stderr %q", res.code, res.stderr)
	}
	ctx, cancel := context.WithTimeout(t.Context(), commandTimeout)
	defer cancel()
	pool, err := pg.Open(ctx, dsn, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	kek, idx := make([]byte, 32), make([]byte, 32)
	_, _ = rand.Read(kek)
	_, _ = rand.Read(idx)
	kr, err := keyring.New(kek, idx)
	if err != nil {
		t.Fatal(err)
	}
	store, err := eventstore.New(pool, eventstore.Options{Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	var last eventstore.Cursor
	appendTo := func(streamType, streamID string, ev domain.Event) {
		t.Helper()
		_, err := store.Execute(ctx, eventstore.Command{Name: "test.tamper", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem},
			Metadata: domain.Metadata{Actor: domain.SystemActor, RequestID: "req-tamper"}},
			func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
				recs, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: streamType, StreamID: streamID,
					ExpectedVersion: eventstore.AnyVersion, Events: []domain.Event{ev}})
				if err == nil {
					last = recs[0].Cursor
				}
				return domain.Receipt{Status: http.StatusCreated}, err
			})
		if err != nil {
			t.Fatalf("append %s: %v", ev.EventType(), err)
		}
	}
	plus := domain.DefaultPackages()[2]
	l.plus = plus.PackageID.String()
	price, order := int64(1600), 9
	appendTo(domain.StreamPackage, l.plus, domain.PackageUpdated{PackageID: plus.PackageID, PriceCents: &price})
	appendTo(domain.StreamPackage, l.plus, domain.PackageUpdated{PackageID: plus.PackageID, SortOrder: &order})

	a, b := uuid.New(), uuid.New()
	l.a, l.b = a.String(), b.String()
	accA, accB := domain.Account{UserID: a}, domain.Account{UserID: b}
	credit := func(acct *domain.Account, ev domain.CreditEvent, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		appendTo(domain.StreamCreditAccount, acct.UserID.String(), ev)
		acct.Apply(ev)
	}
	credit(&accA, domain.NewSignupBonus(a, 150), nil)
	g, err := accA.Grant(uuid.New(), 300, "paid", "welcome")
	credit(&accA, g, err)
	holdID := uuid.New()
	h, err := accA.PlaceHold(holdID, "img", 200, time.Now().Add(time.Hour))
	credit(&accA, h, err)
	c, err := domain.Hold{ID: holdID, UserID: a, AppID: "img", Amount: h.Amount, Split: h.Split, Status: domain.HoldActive}.Capture(uuid.New(), 120)
	credit(&accA, c, err)
	credit(&accB, domain.NewSignupBonus(b, 150), nil)
	adj, err := accB.Adjust(uuid.New(), -20, "correction")
	credit(&accB, adj, err)

	// The balances read model up to the last event (a transaction of a
	// parallel test may hold the feed's horizon back for a moment), then a
	// checkpoint over every event.
	deadline := time.Now().Add(time.Minute)
	for {
		res := runCmd(t, l.vars, "projections", "rebuild", "balances")
		if res.code != 0 {
			t.Fatalf("projections rebuild balances = %d, stderr %q", res.code, res.stderr)
		}
		if res.stdout == "rebuilt balances up to "+last.String()+"\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("projections rebuild balances: %q, want it up to %s", res.stdout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitFeedSafe(t, dsn)
	res := runCmd(t, l.vars, "ledger", "checkpoint")
	if res.code != 0 {
		t.Fatalf("ledger checkpoint = %d, stderr %q", res.code, res.stderr)
	}
	if err := json.Unmarshal([]byte(res.stdout), &l.cp); err != nil {
		t.Fatalf("ledger checkpoint printed %q: %v", res.stdout, err)
	}
	if l.cp.TreeSize != 4+2+6 {
		t.Fatalf("the checkpoint covers %d events, want 12", l.cp.TreeSize)
	}
	if res := runCmd(t, l.vars, "ledger", "verify", "--checkpoint", "latest"); res.code != 0 {
		t.Fatalf("ledger verify --checkpoint latest before tampering = %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}
	return l
}

// tamper runs fn as the superuser in one transaction with the events
// table's append-only trigger disabled, and enables it again before the
// commit.
func (l *tamperLedger) tamper(t *testing.T, fn func(ctx context.Context, tx pgx.Tx) error) {
	t.Helper()
	conn := connect(t, l.dsn)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "ALTER TABLE events DISABLE TRIGGER events_no_update_delete"); err != nil {
			return err
		}
		if err := fn(ctx, tx); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "ALTER TABLE events ENABLE TRIGGER events_no_update_delete")
		return err
	})
	if err != nil {
		t.Fatalf("tamper: %v", err)
	}
}

// streamEvent reads version v of a stream, and its cursor.
func streamEvent(ctx context.Context, tx pgx.Tx, streamType, streamID string, v int64) (eventstore.Record, error) {
	var r eventstore.Record
	err := tx.QueryRow(ctx, `SELECT tx_id, position, event_id, stream_type, stream_id, stream_version, event_type, schema_version,
		occurred_at, metadata, payload, prev_hash, hash FROM events
		WHERE stream_type = $1 AND stream_id = $2 AND stream_version = $3`, streamType, streamID, v).
		Scan(&r.TxID, &r.Position, &r.EventID, &r.StreamType, &r.StreamID, &r.StreamVersion, &r.EventType, &r.SchemaVersion,
			&r.OccurredAt, &r.Metadata, &r.Payload, &r.PrevHash, &r.Hash)
	return r, err
}

// rehashFrom recomputes the hash of version from of a stream and, when
// through is true, the prev_hash and hash of every later version: what a
// forger with write access does to keep the chain whole.
func rehashFrom(ctx context.Context, tx pgx.Tx, streamType, streamID string, from int64, through bool) error {
	for v := from; ; v++ {
		r, err := streamEvent(ctx, tx, streamType, streamID, v)
		if err == pgx.ErrNoRows {
			return nil
		}
		if err != nil {
			return err
		}
		if v > from {
			prev, err := streamEvent(ctx, tx, streamType, streamID, v-1)
			if err != nil {
				return err
			}
			r.PrevHash = prev.Hash
		}
		h, err := eventstore.ComputeHash(&r)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE events SET prev_hash = $1, hash = $2 WHERE event_id = $3", r.PrevHash, h, r.EventID); err != nil {
			return err
		}
		if !through {
			return nil
		}
	}
}

// TestLedgerTamperMatrix tampers with a signed ledger in every way a
// superuser can (disabling the guard triggers), one kind per fresh
// database, and checks what catches it:
//
//   - `ledger verify --checkpoint latest` exits 1 naming the problem for
//     every kind (the plain checks run first, so it names theirs when they
//     fail);
//   - the signed checkpoint alone (ledger.Service.Verify) fails for every
//     kind that touches the hash column: a recomputed hash changes the
//     Merkle root, a removed or added event the size. Its leaves are the
//     stored hashes, so a payload or metadata changed under its old hash
//     leaves it intact: that is what the hash-chain check (which `ledger
//     verify --checkpoint` runs first) finds;
//   - plain `ledger verify` exits 1 for every kind it can see. Only the
//     checkpoint catches: a deleted last event of a stream whose events
//     are not credit events (nothing follows it in the chain, nothing
//     folds it), a consistent rewrite (payload changed and the hashes of
//     the event and of every later one in its stream recomputed) of a
//     non-credit stream, and an event inserted with a forged old cursor at
//     the end of a non-credit stream. For credit streams the balances check
//     catches the deletion of the last event and a consistent rewrite that
//     moves credits, as long as the balances projection had applied them.
func TestLedgerTamperMatrix(t *testing.T) {
	t.Parallel()
	const (
		rewritten = "events were rewritten"
		resized   = "events were added or removed"
	)
	for _, tc := range []struct {
		name string
		// do tampers and returns the cursor plain verify must name ("" when
		// only the checkpoint catches the change).
		do func(t *testing.T, l *tamperLedger, ctx context.Context, tx pgx.Tx) (string, error)
		// plain is what plain verify's one line must contain, "" when it
		// passes; checkpoint what the signed checkpoint alone reports, ""
		// when it holds: its tree pins the hash column, so a change under
		// an unchanged hash is the chain check's to find.
		plain, checkpoint string
	}{
		{
			name: "payload changed",
			do: func(t *testing.T, l *tamperLedger, ctx context.Context, tx pgx.Tx) (string, error) {
				var at string
				err := tx.QueryRow(ctx, `UPDATE events SET payload = jsonb_set(payload, '{reason}', '"forged"')
					WHERE stream_type = 'credit_account' AND stream_id = $1 AND stream_version = 2
					RETURNING tx_id::text || '-' || position`, l.a).Scan(&at)
				return at, err
			},
			plain: "hash chains: FAILED",
		},
		{
			name: "metadata changed",
			do: func(t *testing.T, l *tamperLedger, ctx context.Context, tx pgx.Tx) (string, error) {
				var at string
				err := tx.QueryRow(ctx, `UPDATE events SET metadata = jsonb_set(metadata, '{actor}', '"admin:forged"')
					WHERE stream_type = 'package' AND stream_id = $1 AND stream_version = 2
					RETURNING tx_id::text || '-' || position`, l.plus).Scan(&at)
				return at, err
			},
			plain: "hash chains: FAILED",
		},
		{
			name: "middle event deleted",
			do: func(t *testing.T, l *tamperLedger, ctx context.Context, tx pgx.Tx) (string, error) {
				if _, err := tx.Exec(ctx, `DELETE FROM events WHERE stream_type = 'package' AND stream_id = $1 AND stream_version = 2`, l.plus); err != nil {
					return "", err
				}
				// The break shows at the next version.
				r, err := streamEvent(ctx, tx, domain.StreamPackage, l.plus, 3)
				return r.Cursor.String(), err
			},
			plain: "version 3 follows 1", checkpoint: resized,
		},
		{
			name: "last event of a credit stream deleted",
			do: func(t *testing.T, l *tamperLedger, ctx context.Context, tx pgx.Tx) (string, error) {
				// The balances check names the account's last remaining
				// event up to the projection's checkpoint.
				r, err := streamEvent(ctx, tx, domain.StreamCreditAccount, l.b, 1)
				if err != nil {
					return "", err
				}
				_, err = tx.Exec(ctx, `DELETE FROM events WHERE stream_type = 'credit_account' AND stream_id = $1 AND stream_version = 2`, l.b)
				return r.Cursor.String(), err
			},
			plain: "balances: FAILED", checkpoint: resized,
		},
		{
			name: "last event of a package stream deleted",
			do: func(t *testing.T, l *tamperLedger, ctx context.Context, tx pgx.Tx) (string, error) {
				_, err := tx.Exec(ctx, `DELETE FROM events WHERE stream_type = 'package' AND stream_id = $1 AND stream_version = 3`, l.plus)
				return "", err
			},
			checkpoint: resized,
		},
		{
			name: "payload changed and its hash recomputed",
			do: func(t *testing.T, l *tamperLedger, ctx context.Context, tx pgx.Tx) (string, error) {
				if _, err := tx.Exec(ctx, `UPDATE events SET payload = jsonb_set(payload, '{priceCents}', '1')
					WHERE stream_type = 'package' AND stream_id = $1 AND stream_version = 2`, l.plus); err != nil {
					return "", err
				}
				if err := rehashFrom(ctx, tx, domain.StreamPackage, l.plus, 2, false); err != nil {
					return "", err
				}
				// The next event's prev_hash no longer matches.
				r, err := streamEvent(ctx, tx, domain.StreamPackage, l.plus, 3)
				return r.Cursor.String(), err
			},
			plain: "prev_hash does not match the previous event's hash", checkpoint: rewritten,
		},
		{
			name: "package stream rewritten with every later hash recomputed",
			do: func(t *testing.T, l *tamperLedger, ctx context.Context, tx pgx.Tx) (string, error) {
				if _, err := tx.Exec(ctx, `UPDATE events SET payload = jsonb_set(payload, '{priceCents}', '1')
					WHERE stream_type = 'package' AND stream_id = $1 AND stream_version = 2`, l.plus); err != nil {
					return "", err
				}
				return "", rehashFrom(ctx, tx, domain.StreamPackage, l.plus, 2, true)
			},
			checkpoint: rewritten,
		},
		{
			name: "credit grant inflated with every later hash recomputed",
			do: func(t *testing.T, l *tamperLedger, ctx context.Context, tx pgx.Tx) (string, error) {
				// Ten times the grant, postings still summing to zero, the
				// chain whole: only the fold disagrees with the read model.
				if _, err := tx.Exec(ctx, `UPDATE events SET payload = jsonb_set(jsonb_set(jsonb_set(payload,
						'{amount}', '3000'), '{postings,0,amount}', '3000'), '{postings,1,amount}', '-3000')
					WHERE stream_type = 'credit_account' AND stream_id = $1 AND stream_version = 2`, l.a); err != nil {
					return "", err
				}
				if err := rehashFrom(ctx, tx, domain.StreamCreditAccount, l.a, 2, true); err != nil {
					return "", err
				}
				r, err := streamEvent(ctx, tx, domain.StreamCreditAccount, l.a, 4)
				return r.Cursor.String(), err
			},
			plain: "paid is 300 in the read model, 3000 by the fold", checkpoint: rewritten,
		},
		{
			name: "event inserted with a forged old cursor",
			do: func(t *testing.T, l *tamperLedger, ctx context.Context, tx pgx.Tx) (string, error) {
				// A well-formed version 4 of the Plus package, chained to
				// version 3, given the tx_id of the first event and an
				// unused position: it sorts before the checkpoint's cursor.
				// Only a superuser who disables the cursor guard can
				// (TestEventCursorGuard: the service's roles cannot).
				if _, err := tx.Exec(ctx, "ALTER TABLE events DISABLE TRIGGER events_guard_cursor"); err != nil {
					return "", err
				}
				head, err := streamEvent(ctx, tx, domain.StreamPackage, l.plus, 3)
				if err != nil {
					return "", err
				}
				forged := head
				forged.EventID, forged.StreamVersion, forged.PrevHash = uuid.New(), 4, head.Hash
				forged.EventType, forged.Payload = "package.updated", json.RawMessage(`{"packageId":"`+l.plus+`","priceCents":1}`)
				if forged.Hash, err = eventstore.ComputeHash(&forged); err != nil {
					return "", err
				}
				_, err = tx.Exec(ctx, `INSERT INTO events (position, tx_id, event_id, stream_type, stream_id, stream_version, event_type,
						schema_version, occurred_at, metadata, payload, prev_hash, hash)
					OVERRIDING SYSTEM VALUE
					SELECT min(position) - 1, min(tx_id), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 FROM events`,
					forged.EventID, forged.StreamType, forged.StreamID, forged.StreamVersion, forged.EventType, forged.SchemaVersion,
					forged.OccurredAt, forged.Metadata, forged.Payload, forged.PrevHash, forged.Hash)
				if err != nil {
					return "", err
				}
				_, err = tx.Exec(ctx, "ALTER TABLE events ENABLE TRIGGER events_guard_cursor")
				return "", err
			},
			checkpoint: resized,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := newTamperLedger(t)
			var at string
			l.tamper(t, func(ctx context.Context, tx pgx.Tx) error {
				var err error
				at, err = tc.do(t, l, ctx, tx)
				return err
			})

			plain := runCmd(t, l.vars, "ledger", "verify")
			switch {
			case tc.plain == "":
				if plain.code != 0 {
					t.Errorf("plain ledger verify = %d, stderr %q; this kind was expected to pass it (only the checkpoint catches it)", plain.code, plain.stderr)
				}
			case plain.code != 1 || len(lines(plain.stderr)) != 1 ||
				!strings.Contains(plain.stderr, tc.plain) || !strings.Contains(plain.stderr, "FAILED at cursor "+at+" "):
				t.Errorf("plain ledger verify = %d, stderr %q; want 1 and one line with %q at cursor %s", plain.code, plain.stderr, tc.plain, at)
			}

			res := runCmd(t, l.vars, "ledger", "verify", "--checkpoint", "latest")
			if res.code != 1 || len(lines(res.stderr)) != 1 {
				t.Fatalf("ledger verify --checkpoint latest = %d, stdout %q, stderr %q; want 1 and one line", res.code, res.stdout, res.stderr)
			}
			want := tc.plain
			if want == "" {
				want = "checkpoint " + strconv.FormatInt(l.cp.ID, 10) + ": FAILED (cursor " + l.cp.Cursor
			}
			if !strings.Contains(res.stderr, want) || tc.plain == "" && !strings.Contains(res.stderr, tc.checkpoint) {
				t.Errorf("ledger verify --checkpoint latest: stderr %q, want %q", res.stderr, want)
			}

			// The checkpoint on its own catches every kind that changes the
			// hash column: a hash, or an event added or removed.
			ctx, cancel := context.WithTimeout(t.Context(), commandTimeout)
			defer cancel()
			pool, err := pg.Open(ctx, l.dsn, 2)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			v, err := ledger.New(pool, ledger.Options{}).Verify(ctx, 0)
			if err != nil {
				t.Fatalf("checkpoint verify: %v", err)
			}
			if v.Checkpoint.ID != l.cp.ID || tc.checkpoint == "" && v.Problem != "" || !strings.Contains(v.Problem, tc.checkpoint) {
				t.Errorf("checkpoint %d verify: problem %q, want %q", v.Checkpoint.ID, v.Problem, tc.checkpoint)
			}
		})
	}
}
