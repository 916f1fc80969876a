package eventstore

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/keyring"
)

func fixedRecord() Record {
	return Record{
		EventID:       uuid.MustParse("01932c4e-7a10-7c3e-9f00-4b1d2e3f4a5b"),
		StreamType:    "package",
		StreamID:      "starter",
		StreamVersion: 1,
		EventType:     "package.created",
		SchemaVersion: 1,
		OccurredAt:    time.Date(2026, 11, 26, 8, 30, 0, 123456789, time.UTC),
		Metadata:      json.RawMessage(`{"actor":"system","requestId":"r1"}`),
		Payload:       json.RawMessage(`{"name":"Starter","credits":100,"active":true,"sortOrder":1}`),
		PrevHash:      GenesisHash,
	}
}

// TestHashIsPinned fixes the chain's hash format: any change to the hashed
// fields, their canonical JSON or the time layout breaks every existing
// chain, and this test.
func TestHashIsPinned(t *testing.T) {
	t.Parallel()
	r := fixedRecord()
	h, err := ComputeHash(&r)
	if err != nil {
		t.Fatal(err)
	}
	// Computed independently: sha256(32 zero bytes ‖ sorted-key compact JSON).
	const want = "109c693319c507e65a99d045e9247790319fef04f74b78c53746ce56fbea6266"
	if got := hex.EncodeToString(h); got != want {
		t.Fatalf("hash = %s, want %s", got, want)
	}
}

// TestHashIgnoresJSONBReformatting: jsonb reorders keys and drops
// whitespace; the canonical form makes the hash independent of both.
func TestHashIgnoresJSONBReformatting(t *testing.T) {
	t.Parallel()
	a, b := fixedRecord(), fixedRecord()
	b.Payload = json.RawMessage(`{ "sortOrder": 1, "active": true, "credits": 100, "name": "Starter" }`)
	b.Metadata = json.RawMessage(`{"requestId": "r1", "actor": "system"}`)
	ha, _ := ComputeHash(&a)
	hb, _ := ComputeHash(&b)
	if hex.EncodeToString(ha) != hex.EncodeToString(hb) {
		t.Fatal("reformatted JSON hashes differently")
	}
	for name, mutate := range map[string]func(*Record){
		"payload": func(r *Record) {
			r.Payload = json.RawMessage(`{"name":"Starter","credits":101,"active":true,"sortOrder":1}`)
		},
		"prev":     func(r *Record) { r.PrevHash = make([]byte, 32); r.PrevHash[0] = 1 },
		"version":  func(r *Record) { r.StreamVersion = 2 },
		"time":     func(r *Record) { r.OccurredAt = r.OccurredAt.Add(time.Microsecond) },
		"metadata": func(r *Record) { r.Metadata = json.RawMessage(`{"actor":"user:x"}`) },
		"type":     func(r *Record) { r.EventType = "package.updated" },
	} {
		c := fixedRecord()
		mutate(&c)
		hc, _ := ComputeHash(&c)
		if hex.EncodeToString(hc) == hex.EncodeToString(ha) {
			t.Errorf("changing %s does not change the hash", name)
		}
	}
}

func testKeys(t *testing.T) *keyring.Keyring {
	kek, idx := make([]byte, 32), make([]byte, 32)
	rand.Read(kek)
	rand.Read(idx)
	k, err := keyring.New(kek, idx)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestPersonalFieldsAreSealedAndBoundToTheirEvent(t *testing.T) {
	t.Parallel()
	kr := testKeys(t)
	user := uuid.New()
	key, _, err := kr.NewDataKey(user)
	if err != nil {
		t.Fatal(err)
	}
	ev := domain.UserRegistered{UserID: user, Email: "ada@example.com", Name: "Ada", Role: "user", RegisteredAt: time.Unix(0, 0).UTC()}
	id := uuid.New()
	payload, err := encodePayload(ev, id, &key)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(payload), "ada@example.com") || strings.Contains(string(payload), `"Ada"`) {
		t.Fatalf("plaintext personal data in %s", payload)
	}
	if !strings.Contains(string(payload), user.String()) || !strings.Contains(string(payload), `"role":"user"`) {
		t.Fatalf("non-personal fields were sealed: %s", payload)
	}
	keys := map[uuid.UUID]keyring.DataKey{user: key}
	got, err := decodeRecord(Record{EventID: id, EventType: ev.EventType(), SchemaVersion: 1, Payload: payload}, keys)
	if err != nil {
		t.Fatal(err)
	}
	if r := got.(*domain.UserRegistered); r.Email != ev.Email || r.Name != ev.Name {
		t.Fatalf("decoded %+v", r)
	}
	// A sealed field copied into another event does not open.
	if _, err := decodeRecord(Record{EventID: uuid.New(), EventType: ev.EventType(), SchemaVersion: 1, Payload: payload}, keys); err == nil {
		t.Fatal("a sealed field opened under another event id")
	}
	// Without the key (erased), personal fields read as empty.
	erased, err := decodeRecord(Record{EventID: id, EventType: ev.EventType(), SchemaVersion: 1, Payload: payload}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := erased.(*domain.UserRegistered); r.Email != "" || r.UserID != user {
		t.Fatalf("erased decode %+v", r)
	}
}

func TestDecodeUpcastsOldVersions(t *testing.T) {
	// Not parallel: it registers a temporary upcaster.
	k := "package.created@0"
	upcasters[k] = func(p map[string]any) (map[string]any, error) {
		p["priceCents"] = p["price"]
		delete(p, "price")
		return p, nil
	}
	defer delete(upcasters, k)
	ev, err := decodeRecord(Record{EventID: uuid.New(), EventType: "package.created", SchemaVersion: 0,
		Payload: json.RawMessage(`{"name":"Old","credits":5,"price":7}`)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := ev.(*domain.PackageCreated); p.PriceCents != 7 || p.Name != "Old" {
		t.Fatalf("upcast %+v", p)
	}
	if _, err := decodeRecord(Record{EventID: uuid.New(), EventType: "package.created", SchemaVersion: 9, Payload: json.RawMessage(`{}`)}, nil); err == nil {
		t.Fatal("a newer schema version decoded")
	}
}
