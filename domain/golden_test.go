package domain_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/manacore/mana/domain"
)

// goldenName matches a golden payload file: <event_type>.v<N>.json.
var goldenName = regexp.MustCompile(`^([a-z][a-z_]*\.[a-z][a-z_]*)\.v([0-9]+)\.json$`)

// TestEveryVersionHasAGoldenPayload: a golden file pins every version an
// event type ever had, 1 up to the current one, so every old version an
// upcaster reads stays on record (eventstore's upcast test feeds each to
// its upcaster); and no golden file names an unknown type or a version
// this build does not have.
func TestEveryVersionHasAGoldenPayload(t *testing.T) {
	t.Parallel()
	dir := filepath.Join("testdata", "events")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m := goldenName.FindStringSubmatch(e.Name())
		if m == nil {
			t.Errorf("%s: not a golden payload name (<event_type>.v<N>.json)", e.Name())
			continue
		}
		v, _ := strconv.Atoi(m[2])
		ev, ok := domain.NewEvent(m[1])
		switch {
		case !ok:
			t.Errorf("%s: %s is not in the catalog", e.Name(), m[1])
		case v < 1 || v > ev.SchemaVersion():
			t.Errorf("%s: %s is at version %d", e.Name(), m[1], ev.SchemaVersion())
		}
		have[e.Name()] = true
	}
	for _, typ := range domain.EventTypes() {
		ev, _ := domain.NewEvent(typ)
		for v := 1; v <= ev.SchemaVersion(); v++ {
			if name := fmt.Sprintf("%s.v%d.json", typ, v); !have[name] {
				t.Errorf("%s v%d has no golden payload %s", typ, v, name)
			}
		}
	}
}

// docHeading matches an event's heading in docs/events.md:
// "#### `<event_type>` v<N>".
var docHeading = regexp.MustCompile("^#### `([a-z][a-z_]*\\.[a-z][a-z_]*)` v([0-9]+)")

// TestEveryEventTypeIsDocumented: docs/events.md has a section for every
// event type, headed with its current schema version, and none for a type
// the catalog does not have.
func TestEveryEventTypeIsDocumented(t *testing.T) {
	t.Parallel()
	f, err := os.Open(filepath.Join("..", "docs", "events.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	documented := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := docHeading.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		v, _ := strconv.Atoi(m[2])
		if _, dup := documented[m[1]]; dup {
			t.Errorf("docs/events.md documents %s twice", m[1])
		}
		documented[m[1]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, typ := range domain.EventTypes() {
		ev, _ := domain.NewEvent(typ)
		v, ok := documented[typ]
		switch {
		case !ok:
			t.Errorf("docs/events.md does not document %s (add a \"#### `%s` v%d\" section)", typ, typ, ev.SchemaVersion())
		case v != ev.SchemaVersion():
			t.Errorf("docs/events.md documents %s as v%d; it is at v%d", typ, v, ev.SchemaVersion())
		}
		delete(documented, typ)
	}
	for typ := range documented {
		t.Errorf("docs/events.md documents %s, which is not in the catalog", typ)
	}
}
