package projections_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
	"github.com/manacore/mana/projections"
)

var updateFixtures = flag.Bool("update-fixtures", false, "rewrite the old-version fixture streams")

// legacyFixture is a stream as `mana events export` printed it from a
// database written before purchase.created v2: a package, two purchases
// (one paid, one expired) and the credits of the paid one, every
// purchase.created at schema version 1.
var legacyFixture = filepath.Join("..", "domain", "testdata", "events", "fixtures", "purchases.v1.ndjson")

var (
	legacyUser     = uuid.MustParse("0b7e4a52-9c1d-4f3e-8a6b-5d2c1e0f9a87")
	legacyPackage  = uuid.MustParse("6b1f0c2e-5d4a-4b3c-9e8f-7a6b5c4d3e21")
	legacyPaid     = uuid.MustParse("1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d")
	legacyExpired  = uuid.MustParse("2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e")
	legacyTransact = uuid.MustParse("3c4d5e6f-7a8b-4c9d-8e0f-2a3b4c5d6e7f")
	legacyAt       = time.Date(2026, 1, 10, 9, 0, 0, 250000000, time.UTC)
)

// writeLegacyFixture builds the fixture: v1 payloads written by hand (the
// v1 struct no longer exists), hashes chained per stream with
// eventstore.ComputeHash, cursors of the old database.
func writeLegacyFixture(t *testing.T) {
	t.Helper()
	u, pkg, paid, expired, txn := legacyUser.String(), legacyPackage.String(), legacyPaid.String(), legacyExpired.String(), legacyTransact.String()
	type ev struct {
		tx                        uint64
		streamType, streamID, typ string
		meta, payload             string
	}
	evs := []ev{
		{9001, domain.StreamPackage, pkg, "package.created", `{"actor":"admin:` + u + `","requestId":"req-legacy-1"}`,
			`{"packageId":"` + pkg + `","name":"Legacy 500","credits":500,"priceCents":450,"currency":"eur","sortOrder":9,"active":true}`},
		{9002, domain.StreamPurchase, paid, "purchase.created", `{"actor":"user:` + u + `","requestId":"req-legacy-2"}`,
			`{"purchaseId":"` + paid + `","userId":"` + u + `","packageId":"` + pkg + `","credits":500,"amountCents":450,"currency":"eur","kind":"payment_intent","providerId":"pi_legacy_1"}`},
		{9003, domain.StreamPurchase, expired, "purchase.created", `{"actor":"user:` + u + `","requestId":"req-legacy-3"}`,
			`{"purchaseId":"` + expired + `","userId":"` + u + `","packageId":"` + pkg + `","credits":500,"amountCents":450,"currency":"eur","kind":"checkout","providerId":"cs_legacy_2"}`},
		{9004, domain.StreamPurchase, paid, "purchase.completed", `{"actor":"system","causationId":"evt_legacy_1"}`,
			`{"purchaseId":"` + paid + `","userId":"` + u + `","stripeEventId":"evt_legacy_1"}`},
		{9004, domain.StreamCreditAccount, u, "credit.purchased", `{"actor":"system","causationId":"evt_legacy_1"}`,
			`{"transactionId":"` + txn + `","userId":"` + u + `","purchaseId":"` + paid + `","amount":500,"postings":[{"account":"user:` + u + `:paid","amount":500},{"account":"system:purchases","amount":-500}]}`},
		{9005, domain.StreamPurchase, expired, "purchase.failed", `{"actor":"system","causationId":"evt_legacy_2"}`,
			`{"purchaseId":"` + expired + `","userId":"` + u + `","stripeEventId":"evt_legacy_2","reason":"expired"}`},
	}
	heads := map[string]eventstore.Record{}
	var out bytes.Buffer
	for i, e := range evs {
		key := e.streamType + "/" + e.streamID
		r := eventstore.Record{
			Cursor:        eventstore.Cursor{TxID: e.tx, Position: int64(i + 1)},
			EventID:       uuid.MustParse("01944a10-0000-7000-8000-00000000000" + string(rune('1'+i))),
			StreamType:    e.streamType,
			StreamID:      e.streamID,
			StreamVersion: heads[key].StreamVersion + 1,
			EventType:     e.typ,
			SchemaVersion: 1,
			OccurredAt:    legacyAt.Add(time.Duration(i) * time.Minute),
			RecordedAt:    legacyAt.Add(time.Duration(i)*time.Minute + 2*time.Millisecond),
			Metadata:      json.RawMessage(e.meta),
			Payload:       json.RawMessage(e.payload),
			PrevHash:      eventstore.GenesisHash,
		}
		if h, ok := heads[key]; ok {
			r.PrevHash = h.Hash
		}
		var err error
		if r.Hash, err = eventstore.ComputeHash(&r); err != nil {
			t.Fatal(err)
		}
		heads[key] = r
		b, err := json.Marshal(r.Line())
		if err != nil {
			t.Fatal(err)
		}
		out.Write(append(b, '\n'))
	}
	if err := os.MkdirAll(filepath.Dir(legacyFixture), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(legacyFixture, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// readFixture parses an NDJSON fixture into records, checking that every
// line's hash is what eventstore.ComputeHash gives for it.
func readFixture(t *testing.T, path string) []eventstore.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("fixture (go test ./projections -run TestOldVersionsReplay -update-fixtures): %v", err)
	}
	defer f.Close()
	var recs []eventstore.Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l eventstore.EventLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("%s line %d: %v", path, len(recs)+1, err)
		}
		r, err := l.Record()
		if err != nil {
			t.Fatal(err)
		}
		h, err := eventstore.ComputeHash(&r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(h, r.Hash) {
			t.Fatalf("%s line %d: hash %s, computed %s", path, len(recs)+1, l.Hash, hex.EncodeToString(h))
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return recs
}

// importRaw inserts records as an import would: the stored columns as
// they are, fresh tx_id and position, one transaction per transaction of
// the source database so the feed order stays the same.
func importRaw(t *testing.T, ctx context.Context, conn *pgx.Conn, recs []eventstore.Record) {
	t.Helper()
	for i := 0; i < len(recs); {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		j := i
		for ; j < len(recs) && recs[j].TxID == recs[i].TxID; j++ {
			r := recs[j]
			if _, err := tx.Exec(ctx, `INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type,
    schema_version, occurred_at, recorded_at, metadata, payload, prev_hash, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
				r.EventID, r.StreamType, r.StreamID, r.StreamVersion, r.EventType, r.SchemaVersion,
				r.OccurredAt, r.RecordedAt, r.Metadata, r.Payload, r.PrevHash, r.Hash); err != nil {
				t.Fatalf("insert %s: %v", r.EventID, err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		i = j
	}
}

// TestOldVersionsReplay imports a fixture stream of old schema versions
// into the events table as stored bytes, then reads it every way the
// service does: the hash chains verify, the feed hands out the stored v1
// lines untouched, Store.Decode and Tx.Load upcast them to the current
// events, and rebuilding the purchases and packages projections from them
// gives the current read models.
func TestOldVersionsReplay(t *testing.T) {
	t.Parallel()
	if *updateFixtures {
		writeLegacyFixture(t)
	}
	fixture := readFixture(t, legacyFixture)
	if len(fixture) != 6 {
		t.Fatalf("fixture has %d events, want 6", len(fixture))
	}
	ctx := ctxT(t)
	dsn := pgtest.NewDB(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	importRaw(t, ctx, conn, fixture)

	pool, err := pg.Open(ctx, dsn, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := eventstore.New(pool, eventstore.Options{})
	if err != nil {
		t.Fatal(err)
	}

	// The chains verify from the stored columns: an import keeps every hash.
	checked, brk, err := store.VerifyChains(ctx)
	if err != nil || brk != nil || checked != int64(len(fixture)) {
		t.Fatalf("verify: %d checked, break %v, error %v", checked, brk, err)
	}

	// The feed keeps the stored form: version 1, no provider field. (It
	// shows the events once every transaction older than them has ended
	// anywhere on the shared test server.)
	var recs []eventstore.Record
	for deadline := time.Now().Add(wait); ; time.Sleep(20 * time.Millisecond) {
		if recs, err = store.ReadFeed(ctx, eventstore.Cursor{}, 100); err != nil {
			t.Fatal(err)
		}
		if len(recs) >= len(fixture) || time.Now().After(deadline) {
			break
		}
	}
	if len(recs) != len(fixture) {
		t.Fatalf("feed has %d events, want %d", len(recs), len(fixture))
	}
	for i, r := range recs {
		if r.EventID != fixture[i].EventID || r.SchemaVersion != 1 || !bytes.Equal(r.Hash, fixture[i].Hash) {
			t.Fatalf("feed event %d = %s v%d, want %s v1 in fixture order", i, r.EventID, r.SchemaVersion, fixture[i].EventID)
		}
	}
	if bytes.Contains(recs[1].Payload, []byte(`"provider"`)) {
		t.Fatalf("the stored v1 payload changed: %s", recs[1].Payload)
	}

	// Store.Decode upcasts to the current shapes.
	decoded, err := store.Decode(ctx, recs)
	if err != nil {
		t.Fatal(err)
	}
	want := []domain.Event{
		&domain.PackageCreated{PackageID: legacyPackage, Name: "Legacy 500", Credits: 500, PriceCents: 450, Currency: "eur", SortOrder: 9, Active: true},
		&domain.PurchaseCreated{PurchaseID: legacyPaid, UserID: legacyUser, PackageID: legacyPackage, Credits: 500, AmountCents: 450, Currency: "eur",
			Kind: "payment_intent", Provider: domain.PaymentProviderStripe, ProviderID: "pi_legacy_1"},
		&domain.PurchaseCreated{PurchaseID: legacyExpired, UserID: legacyUser, PackageID: legacyPackage, Credits: 500, AmountCents: 450, Currency: "eur",
			Kind: "checkout", Provider: domain.PaymentProviderStripe, ProviderID: "cs_legacy_2"},
		&domain.PurchaseCompleted{PurchaseID: legacyPaid, UserID: legacyUser, StripeEventID: "evt_legacy_1"},
		func() *domain.CreditPurchased {
			e := domain.NewCreditPurchased(legacyTransact, legacyUser, legacyPaid, 500, false)
			return &e
		}(),
		&domain.PurchaseFailed{PurchaseID: legacyExpired, UserID: legacyUser, StripeEventID: "evt_legacy_2", Reason: "expired"},
	}
	for i, d := range decoded {
		if !reflect.DeepEqual(d.Event, want[i]) {
			t.Errorf("decoded event %d (%s v%d) = %+v, want %+v", i, d.EventType, d.SchemaVersion, d.Event, want[i])
		}
	}

	// Tx.Load, the write side's read of a stream, upcasts the same way.
	var loaded []eventstore.Decoded
	_, err = store.Execute(ctx, eventstore.Command{Name: "test.load", Actor: pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}},
		func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			var err error
			loaded, _, err = tx.Load(ctx, domain.StreamPurchase, legacyExpired.String(), 0)
			return domain.Receipt{Status: http.StatusOK}, err
		})
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded) != 2 || !reflect.DeepEqual(loaded[0].Event, want[2]) || !reflect.DeepEqual(loaded[1].Event, want[5]) {
		t.Fatalf("Tx.Load = %+v", loaded)
	}

	// Rebuilt read models hold the upcast events.
	for _, p := range []projections.Projection{projections.Purchases(), projections.Packages()} {
		cur, err := projections.Rebuild(ctx, store, p, "fixture-replay")
		if err != nil {
			t.Fatal(err)
		}
		if cur != recs[len(recs)-1].Cursor {
			t.Fatalf("rebuild %s stopped at %s, want %s", p.Name(), cur, recs[len(recs)-1].Cursor)
		}
	}
	list, err := projections.UserPurchases(ctx, pool, legacyUser, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	status := map[uuid.UUID]string{}
	for _, p := range list {
		status[p.ID] = p.Status
		if p.AmountCents != 450 || p.Credits != 500 || p.Currency != "eur" || p.PackageID != legacyPackage {
			t.Errorf("purchase row %+v", p)
		}
	}
	if len(list) != 2 || status[legacyPaid] != domain.PurchaseStatusCompleted || status[legacyExpired] != domain.PurchaseStatusFailed {
		t.Errorf("purchases read model = %+v", list)
	}
	pkgs, err := projections.AllPackages(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) != 1 || pkgs[0].ID != legacyPackage || pkgs[0].Name != "Legacy 500" || pkgs[0].PriceCents != 450 || !pkgs[0].Active {
		t.Errorf("packages read model = %+v", pkgs)
	}
}
