package eventstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/keyring"
)

// The fuzz targets of the codec decode with fixed ids and a fixed data key,
// so that the sealed payloads of their seed corpus open: a sealed field is
// bound to its event id and field name, and names its data subject.
var (
	fuzzEventID = uuid.MustParse("01890000-0000-7000-8000-0000000000e1")
	fuzzSubject = uuid.MustParse("0b7e4a52-9c1d-4f3e-8a6b-5d2c1e0f9a87")
)

// fuzzDataKey returns the data key of fuzzSubject: fixed key bytes,
// wrapped with a fixed KEK and opened the way the store opens data keys
// (UnwrapDataKey opens what the KEK sealed under the subject's bytes).
func fuzzDataKey(t testing.TB) keyring.DataKey {
	t.Helper()
	kek := sha256.Sum256([]byte("eventstore fuzz: key-encryption key"))
	idx := sha256.Sum256([]byte("eventstore fuzz: email index key"))
	raw := sha256.Sum256([]byte("eventstore fuzz: data key"))
	kr, err := keyring.New(kek[:], idx[:])
	if err != nil {
		t.Fatal(err)
	}
	key, err := kr.UnwrapDataKey(fuzzSubject, kr.Wrap(string(fuzzSubject[:]), raw[:]))
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// FuzzEventCodec decodes arbitrary payloads as every registered event
// type, at every schema version the build reads, with the data key of
// fuzzSubject at hand. Decoding (and piiSubjects, which picks the keys to
// load) never panics, and every event e it gives,
// as well as every event e the payload gives under plain encoding/json
// (the events the service itself could record), satisfies
// checkEventRoundTrip: decode(encode(e)) == e, personal fields sealed in
// the encoding, and read as zero values without the subject's key.
func FuzzEventCodec(f *testing.F) {
	key := fuzzDataKey(f)
	keys := map[uuid.UUID]keyring.DataKey{fuzzSubject: key}
	f.Fuzz(func(t *testing.T, payload []byte) {
		piiSubjects([]Record{{EventID: fuzzEventID, Payload: payload}})
		for _, typ := range domain.EventTypes() {
			cur, _ := domain.NewEvent(typ)
			for v := 1; v <= cur.SchemaVersion(); v++ {
				ev, err := decodeRecord(Record{EventID: fuzzEventID, EventType: typ, SchemaVersion: v, Payload: payload}, keys)
				if err != nil {
					continue
				}
				if ev.EventType() != typ || ev.SchemaVersion() != cur.SchemaVersion() {
					t.Fatalf("%s v%d decoded to %s v%d", typ, v, ev.EventType(), ev.SchemaVersion())
				}
				checkEventRoundTrip(t, ev, key, fmt.Sprintf("decoded %s v%d", typ, v))
			}
			plain, _ := domain.NewEvent(typ)
			if json.Unmarshal(payload, plain) == nil {
				checkEventRoundTrip(t, plain, key, "plain "+typ)
			}
		}
	})
}

// checkEventRoundTrip encodes ev as the store does, sealing personal
// fields with key, and checks that
//   - encoding succeeds, unless ev carries credential material
//     (ErrSecretInPayload);
//   - every personal field present in the encoding is sealed for ev's
//     data subject;
//   - decoding the encoding with the subject's key gives ev back
//     (reflect.DeepEqual after sameEventForm: instants compared in UTC,
//     and an empty map or slice of an omitempty field, which encodes as
//     absent, taken as nil);
//   - decoding it without the key (an erased subject) gives ev with its
//     personal fields zero.
func checkEventRoundTrip(t *testing.T, ev domain.Event, key keyring.DataKey, what string) {
	t.Helper()
	payload, err := encodePayload(ev, fuzzEventID, &key)
	if errors.Is(err, ErrSecretInPayload) {
		return
	}
	if err != nil {
		t.Fatalf("%s: encode %+v: %v", what, ev, err)
	}
	var fields map[string]any
	if err := unmarshalNumbers(payload, &fields); err != nil || fields == nil {
		t.Fatalf("%s: encoded payload %s is not a JSON object: %v", what, payload, err)
	}
	keys := map[uuid.UUID]keyring.DataKey{}
	var personal []string
	if pd, ok := ev.(domain.PersonalData); ok {
		keys[pd.DataSubject()] = key
		personal = pd.PersonalFields()
		prefix := piiPrefix + pd.DataSubject().String() + ":"
		for _, name := range personal {
			v, present := fields[name]
			if s, ok := v.(string); present && v != nil && (!ok || !strings.HasPrefix(s, prefix)) {
				t.Fatalf("%s: personal field %s is not sealed for %s: %v", what, name, pd.DataSubject(), v)
			}
		}
	}
	rec := Record{EventID: fuzzEventID, EventType: ev.EventType(), SchemaVersion: ev.SchemaVersion(), Payload: payload}
	back, err := decodeRecord(rec, keys)
	if err != nil {
		t.Fatalf("%s: the encoding %s of %+v does not decode: %v", what, payload, ev, err)
	}
	want := sameEventForm(t, ev, nil)
	if got := sameEventForm(t, back, nil); !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: round trip through %s\n gave %#v\n want %#v", what, payload, got, want)
	}
	erased, err := decodeRecord(rec, nil)
	if err != nil {
		t.Fatalf("%s: without the data key, %s does not decode: %v", what, payload, err)
	}
	want = sameEventForm(t, ev, personal)
	if got := sameEventForm(t, erased, nil); !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: without the data key %s\n gave %#v\n want %#v", what, payload, got, want)
	}
}

// sameEventForm returns a copy of the event ev points to in the form
// events are compared in: every time.Time in UTC, every empty map or slice
// of an omitempty field nil, and the top-level fields named zero (by JSON
// name).
func sameEventForm(t *testing.T, ev domain.Event, zero []string) any {
	t.Helper()
	p := reflect.ValueOf(ev)
	if p.Kind() != reflect.Pointer || p.Elem().Kind() != reflect.Struct {
		t.Fatalf("event %T is not a pointer to a struct", ev)
	}
	v := reflect.New(p.Elem().Type()).Elem()
	v.Set(p.Elem())
	for _, name := range zero {
		f, ok := fieldByJSONName(v, name)
		if !ok {
			t.Fatalf("%T has no field %q", ev, name)
		}
		f.SetZero()
	}
	normalizeValue(v)
	return v.Interface()
}

func fieldByJSONName(v reflect.Value, name string) (reflect.Value, bool) {
	for i := range v.NumField() {
		tag, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ",")
		if tag == name {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

var timeType = reflect.TypeFor[time.Time]()

// normalizeValue rewrites the settable value v in place as sameEventForm
// describes. Shared maps and slices are copied before they change.
func normalizeValue(v reflect.Value) {
	switch {
	case v.Type() == timeType:
		v.Set(reflect.ValueOf(v.Interface().(time.Time).UTC()))
	case v.Kind() == reflect.Pointer && !v.IsNil():
		c := reflect.New(v.Elem().Type())
		c.Elem().Set(v.Elem())
		normalizeValue(c.Elem())
		v.Set(c)
	case v.Kind() == reflect.Slice && !v.IsNil():
		c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		reflect.Copy(c, v)
		for i := range c.Len() {
			normalizeValue(c.Index(i))
		}
		v.Set(c)
	case v.Kind() == reflect.Struct:
		for i := range v.NumField() {
			f, sf := v.Field(i), v.Type().Field(i)
			if !sf.IsExported() {
				continue
			}
			_, opts, _ := strings.Cut(sf.Tag.Get("json"), ",")
			if strings.Contains(","+opts+",", ",omitempty,") && (f.Kind() == reflect.Map || f.Kind() == reflect.Slice) && f.Len() == 0 {
				f.SetZero()
				continue
			}
			normalizeValue(f)
		}
	}
}

// FuzzParseCursor: ParseCursor never panics; a cursor it returns has a
// non-negative position, and its String parses back to the same cursor
// and is its own canonical form. Every cursor with a non-negative
// position survives String and ParseCursor; one with a negative position
// is refused.
func FuzzParseCursor(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string, tx uint64, pos int64) {
		if c, err := ParseCursor(s); err == nil {
			if c.Position < 0 {
				t.Fatalf("ParseCursor(%q) = %+v: negative position", s, c)
			}
			back, err := ParseCursor(c.String())
			if err != nil || back != c {
				t.Fatalf("ParseCursor(%q) = %+v, whose String %q parses to %+v, %v", s, c, c.String(), back, err)
			}
			if back.String() != c.String() {
				t.Fatalf("%q: String is not stable: %q, %q", s, c.String(), back.String())
			}
			if c.IsZero() != (c == Cursor{}) {
				t.Fatalf("%q: IsZero %v for %+v", s, c.IsZero(), c)
			}
		}
		c := Cursor{TxID: tx, Position: pos}
		back, err := ParseCursor(c.String())
		switch {
		case pos < 0 && err == nil:
			t.Fatalf("%+v: negative position accepted from %q", c, c.String())
		case pos >= 0 && (err != nil || back != c):
			t.Fatalf("%+v: String %q parses to %+v, %v", c, c.String(), back, err)
		case pos >= 0 && (back.Less(c) || c.Less(back)):
			t.Fatalf("%+v: ordered apart from its own parse %+v", c, back)
		}
	})
}

// FuzzEventLine decodes arbitrary bytes as an NDJSON event line. Record
// never panics and fails only when the cursor or a hash does not parse.
// The Record it gives round-trips through its public form: Line, encoded
// as one line of JSON and decoded, gives the same Record back (raw JSON
// compared as encoding/json writes it, absent as null), with the
// canonical cursor and lowercase hex hashes, and the same chain hash.
func FuzzEventLine(f *testing.F) {
	f.Fuzz(func(t *testing.T, line []byte) {
		var l EventLine
		if json.Unmarshal(line, &l) != nil {
			return
		}
		rec, err := l.Record()
		if err != nil {
			_, cerr := ParseCursor(l.Cursor)
			_, perr := hex.DecodeString(l.PrevHash)
			_, herr := hex.DecodeString(l.Hash)
			if cerr == nil && perr == nil && herr == nil {
				t.Fatalf("Record failed on a line whose cursor and hashes parse: %v", err)
			}
			return
		}
		out := rec.Line()
		if out.Cursor != rec.Cursor.String() || out.PrevHash != hex.EncodeToString(rec.PrevHash) || out.Hash != hex.EncodeToString(rec.Hash) {
			t.Fatalf("Line %+v of %+v", out, rec)
		}
		enc, err := json.Marshal(out)
		if err != nil {
			t.Fatalf("encode %+v: %v", out, err)
		}
		if bytes.ContainsAny(enc, "\r\n") {
			t.Fatalf("the line %q spans lines", enc)
		}
		var back EventLine
		if err := json.Unmarshal(enc, &back); err != nil {
			t.Fatalf("decode %s: %v", enc, err)
		}
		again, err := back.Record()
		if err != nil {
			t.Fatalf("%s: Record: %v", enc, err)
		}
		if d := recordDiff(rec, again); d != "" {
			t.Fatalf("round trip through %s changed %s", enc, d)
		}
		h1, err1 := ComputeHash(&rec)
		h2, err2 := ComputeHash(&again)
		if (err1 == nil) != (err2 == nil) || !bytes.Equal(h1, h2) {
			t.Fatalf("round trip through %s changed the hash: %x (%v), %x (%v)", enc, h1, err1, h2, err2)
		}
	})
}

// recordDiff names the first field in which a and b differ, "" if none.
func recordDiff(a, b Record) string {
	switch {
	case a.Cursor != b.Cursor:
		return "cursor"
	case a.EventID != b.EventID:
		return "event_id"
	case a.StreamType != b.StreamType || a.StreamID != b.StreamID || a.StreamVersion != b.StreamVersion:
		return "stream"
	case a.EventType != b.EventType || a.SchemaVersion != b.SchemaVersion:
		return "event type"
	case !a.OccurredAt.Equal(b.OccurredAt):
		return "occurred_at"
	case !a.RecordedAt.Equal(b.RecordedAt):
		return "recorded_at"
	case !bytes.Equal(rawForm(a.Metadata), rawForm(b.Metadata)):
		return "metadata"
	case !bytes.Equal(rawForm(a.Payload), rawForm(b.Payload)):
		return "payload"
	case !bytes.Equal(a.PrevHash, b.PrevHash):
		return "prev_hash"
	case !bytes.Equal(a.Hash, b.Hash):
		return "hash"
	}
	return ""
}

// rawForm is raw JSON as encoding/json writes it: compact, HTML-escaped,
// null when absent.
func rawForm(m json.RawMessage) []byte {
	b, err := json.Marshal(m)
	if err != nil {
		return append([]byte("invalid: "), m...)
	}
	return b
}

// TestEventRoundTripCheckCanFail: checkEventRoundTrip's comparison sees a
// changed field, an unsealed personal field would be caught by its seal
// check, and sameEventForm only forgives what it documents.
func TestEventRoundTripCheckCanFail(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 26, 8, 30, 0, 123456000, time.FixedZone("", 3600))
	a := &domain.UserRegistered{UserID: fuzzSubject, Email: "ada@example.com", Name: "Ada", Role: "user", RegisteredAt: at}
	b := *a
	b.RegisteredAt = at.UTC()
	if !reflect.DeepEqual(sameEventForm(t, a, nil), sameEventForm(t, &b, nil)) {
		t.Error("the same instant in another zone compares unequal")
	}
	b.Role = "admin"
	if reflect.DeepEqual(sameEventForm(t, a, nil), sameEventForm(t, &b, nil)) {
		t.Error("a changed role compares equal")
	}
	erased := sameEventForm(t, a, []string{"email", "name"}).(domain.UserRegistered)
	if erased.Email != "" || erased.Name != "" || erased.Role != "user" {
		t.Errorf("zeroing personal fields gave %+v", erased)
	}
	s := &domain.CreditSpent{UserID: fuzzSubject, Metadata: map[string]any{}, Postings: []domain.Posting{}}
	n := sameEventForm(t, s, nil).(domain.CreditSpent)
	if n.Metadata != nil || n.Postings == nil {
		t.Errorf("empty omitempty map kept or empty plain slice dropped: %#v", n)
	}
	if s.Metadata == nil {
		t.Error("sameEventForm changed the event it was given")
	}
}
