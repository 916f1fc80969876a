package eventstore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
)

// goldenDir holds the golden payload of every event type and version.
var goldenDir = filepath.Join("..", "domain", "testdata", "events")

func readGolden(t *testing.T, typ string, v int) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(goldenDir, fmt.Sprintf("%s.v%d.json", typ, v)))
	if err != nil {
		t.Fatalf("golden payload of %s v%d: %v", typ, v, err)
	}
	return b
}

// TestUpcastersMatchTheGoldenPayloads: every type whose current version is
// above 1 has one step per older version; each step turns the golden
// payload of its version into exactly the golden payload of the next (as
// JSON values, numbers exact); and decoding a stored old version gives
// the same event as decoding the current golden payload, unknown fields
// refused.
func TestUpcastersMatchTheGoldenPayloads(t *testing.T) {
	t.Parallel()
	for key := range upcasters {
		typ, from, _ := strings.Cut(key, "@")
		v, err := strconv.Atoi(from)
		ev, ok := domain.NewEvent(typ)
		if err != nil || !ok || v < 1 || v >= ev.SchemaVersion() {
			t.Errorf("upcaster %s steps from no old version of a known type", key)
		}
	}
	for _, typ := range domain.EventTypes() {
		ev, _ := domain.NewEvent(typ)
		cur := ev.SchemaVersion()
		for v := 1; v < cur; v++ {
			t.Run(fmt.Sprintf("%s.v%d", typ, v), func(t *testing.T) {
				up, ok := upcasters[fmt.Sprintf("%s@%d", typ, v)]
				if !ok {
					t.Fatalf("%s is at v%d but has no upcaster from v%d", typ, cur, v)
				}
				var in, want map[string]any
				if err := unmarshalNumbers(readGolden(t, typ, v), &in); err != nil {
					t.Fatal(err)
				}
				if err := unmarshalNumbers(readGolden(t, typ, v+1), &want); err != nil {
					t.Fatal(err)
				}
				got, err := up(in)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, want) {
					g, _ := json.Marshal(got)
					w, _ := json.Marshal(want)
					t.Fatalf("v%d upcast to\n %s\nwant the v%d golden payload\n %s", v, g, v+1, w)
				}

				// The whole path a read takes: a stored v payload decodes
				// to the current event.
				old := readGolden(t, typ, v)
				dec, err := decodeRecord(Record{EventID: uuid.New(), EventType: typ, SchemaVersion: v, Payload: old}, nil)
				if err != nil {
					t.Fatal(err)
				}
				current, _ := domain.NewEvent(typ)
				strict := json.NewDecoder(bytes.NewReader(readGolden(t, typ, cur)))
				strict.DisallowUnknownFields()
				if err := strict.Decode(current); err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(dec, current) {
					t.Fatalf("stored v%d decodes to %+v, want %+v", v, dec, current)
				}
			})
		}
	}
}

// TestDecodeRefusesVersionsItCannotRead: a version newer than the build,
// or an old one without a step, fails loudly instead of decoding wrong.
func TestDecodeRefusesVersionsItCannotRead(t *testing.T) {
	t.Parallel()
	payload := readGolden(t, "purchase.created", 2)
	if _, err := decodeRecord(Record{EventID: uuid.New(), EventType: "purchase.created", SchemaVersion: 3, Payload: payload}, nil); err == nil ||
		!strings.Contains(err.Error(), "newer than this build") {
		t.Errorf("v3 of a v2 type: %v", err)
	}
	// user.registered is at v1: a stored "v0" has no step.
	if _, err := decodeRecord(Record{EventID: uuid.New(), EventType: "user.registered", SchemaVersion: 0, Payload: []byte(`{}`)}, nil); err == nil ||
		!strings.Contains(err.Error(), "no upcaster") {
		t.Errorf("v0 without a step: %v", err)
	}
}
