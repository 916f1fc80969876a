package eventstore

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/keyring"
)

// piiPrefix marks an encrypted personal-data field in a stored payload:
// "pii:v1:<subject uuid>:<base64url(nonce ‖ ciphertext)>". The subject is in
// the clear so a reader knows which key to ask for.
const piiPrefix = "pii:v1:"

// ErrSecretInPayload is returned when an event's JSON carries a field whose
// name says it is credential material. Secrets belong in credential tables.
var ErrSecretInPayload = errors.New("eventstore: credential material in event payload")

// secretFieldWords are refused anywhere in a payload or its metadata, at any
// depth. A credential needs a credential table, not an event.
var secretFieldWords = []string{
	"password", "secret", "refreshtoken", "accesstoken", "privatekey",
	"servicekey", "apikey", "recoverycode", "totp", "resettoken", "sessionkey",
}

// fieldSeparators are ignored when matching field names against
// secretFieldWords, so refresh_token and refresh-token match refreshtoken.
var fieldSeparators = strings.NewReplacer("_", "", "-", "")

// Upcaster turns a payload of one schema version into the next version.
type Upcaster func(payload map[string]any) (map[string]any, error)

// upcasters maps "<event_type>@<from version>" to the step to the next
// version. Each registered step is exercised by a fixture test.
var upcasters = map[string]Upcaster{}

// RegisterUpcaster adds the step that turns version from of eventType into
// version from+1. It panics on a duplicate.
func RegisterUpcaster(eventType string, from int, up Upcaster) {
	k := fmt.Sprintf("%s@%d", eventType, from)
	if _, dup := upcasters[k]; dup {
		panic("eventstore: upcaster registered twice: " + k)
	}
	upcasters[k] = up
}

// encodePayload marshals ev and seals its personal fields with key.
func encodePayload(ev domain.Event, eventID uuid.UUID, key *keyring.DataKey) (json.RawMessage, error) {
	raw, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", ev.EventType(), err)
	}
	var fields map[string]any
	if err := unmarshalNumbers(raw, &fields); err != nil {
		return nil, fmt.Errorf("encode %s: payload must be a JSON object: %w", ev.EventType(), err)
	}
	if f := findSecretField(fields); f != "" {
		return nil, fmt.Errorf("%w: %s.%s", ErrSecretInPayload, ev.EventType(), f)
	}
	if pd, ok := ev.(domain.PersonalData); ok {
		if key == nil {
			return nil, fmt.Errorf("encode %s: no data key for subject", ev.EventType())
		}
		subject := pd.DataSubject()
		for _, name := range pd.PersonalFields() {
			v, present := fields[name]
			if !present || v == nil {
				continue
			}
			plain, err := json.Marshal(v)
			if err != nil {
				return nil, err
			}
			sealed := key.Seal(plain, fieldAAD(eventID, name))
			fields[name] = piiPrefix + subject.String() + ":" + base64.RawURLEncoding.EncodeToString(sealed)
		}
	}
	return json.Marshal(fields)
}

func findSecretField(v any) string {
	switch t := v.(type) {
	case map[string]any:
		for k, inner := range t {
			norm := strings.ToLower(fieldSeparators.Replace(k))
			for _, w := range secretFieldWords {
				if strings.Contains(norm, w) {
					return k
				}
			}
			if f := findSecretField(inner); f != "" {
				return k + "." + f
			}
		}
	case []any:
		for _, inner := range t {
			if f := findSecretField(inner); f != "" {
				return f
			}
		}
	}
	return ""
}

func fieldAAD(eventID uuid.UUID, field string) []byte {
	return append(eventID[:], field...)
}

// sealedSubject returns the subject of an encrypted field value.
func sealedSubject(v any) (uuid.UUID, bool) {
	s, ok := v.(string)
	if !ok || !strings.HasPrefix(s, piiPrefix) {
		return uuid.Nil, false
	}
	id, _, ok := strings.Cut(s[len(piiPrefix):], ":")
	if !ok {
		return uuid.Nil, false
	}
	u, err := uuid.Parse(id)
	return u, err == nil
}

// openField decrypts one sealed field; a missing key (erased subject) gives
// nil, which decodes as the field's zero value.
func openField(v any, eventID uuid.UUID, name string, keys map[uuid.UUID]keyring.DataKey) (any, error) {
	subject, ok := sealedSubject(v)
	if !ok {
		return v, nil
	}
	key, ok := keys[subject]
	if !ok {
		return nil, nil
	}
	_, b64, _ := strings.Cut(v.(string)[len(piiPrefix):], ":")
	sealed, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("field %s: %w", name, keyring.ErrDecrypt)
	}
	plain, err := key.Open(sealed, fieldAAD(eventID, name))
	if err != nil {
		return nil, fmt.Errorf("field %s: %w", name, err)
	}
	var out any
	if err := unmarshalNumbers(plain, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// unmarshalNumbers decodes JSON keeping numbers exact (json.Number), so
// int64 amounts survive a round trip through a map.
func unmarshalNumbers(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(v)
}

// piiSubjects lists the subjects whose keys are needed to open records.
func piiSubjects(recs []Record) []uuid.UUID {
	seen := map[uuid.UUID]bool{}
	var out []uuid.UUID
	for _, r := range recs {
		if !bytes.Contains(r.Payload, []byte(piiPrefix)) {
			continue
		}
		var fields map[string]any
		if err := unmarshalNumbers(r.Payload, &fields); err != nil {
			continue
		}
		for _, v := range fields {
			if s, ok := sealedSubject(v); ok && !seen[s] {
				seen[s] = true
				out = append(out, s)
			}
		}
	}
	return out
}

// decodeRecord opens r's personal fields with keys, upcasts the payload to
// the current schema version and unmarshals it into its domain type.
func decodeRecord(r Record, keys map[uuid.UUID]keyring.DataKey) (domain.Event, error) {
	ev, ok := domain.NewEvent(r.EventType)
	if !ok {
		return nil, fmt.Errorf("decode %s: unknown event type %q", r.EventID, r.EventType)
	}
	var fields map[string]any
	if err := unmarshalNumbers(r.Payload, &fields); err != nil {
		return nil, fmt.Errorf("decode %s: %w", r.EventID, err)
	}
	if fields == nil {
		// A JSON null: the upcasters and the sealed fields need an object.
		return nil, fmt.Errorf("decode %s: payload is not a JSON object", r.EventID)
	}
	// Only the fields the type declares personal are sealed. Any other
	// value is plain, even one that looks sealed (a device id a client
	// chose, say), and must not be opened.
	if pd, ok := ev.(domain.PersonalData); ok {
		for _, name := range pd.PersonalFields() {
			v, present := fields[name]
			if !present {
				continue
			}
			opened, err := openField(v, r.EventID, name, keys)
			if err != nil {
				return nil, fmt.Errorf("decode %s: %w", r.EventID, err)
			}
			fields[name] = opened
		}
	}
	for v := r.SchemaVersion; v < ev.SchemaVersion(); v++ {
		up, ok := upcasters[fmt.Sprintf("%s@%d", r.EventType, v)]
		if !ok {
			return nil, fmt.Errorf("decode %s: no upcaster for %s v%d", r.EventID, r.EventType, v)
		}
		var err error
		if fields, err = up(fields); err != nil {
			return nil, fmt.Errorf("decode %s: upcast %s v%d: %w", r.EventID, r.EventType, v, err)
		}
	}
	if r.SchemaVersion > ev.SchemaVersion() {
		return nil, fmt.Errorf("decode %s: %s v%d is newer than this build (v%d)", r.EventID, r.EventType, r.SchemaVersion, ev.SchemaVersion())
	}
	raw, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(ev); err != nil {
		return nil, fmt.Errorf("decode %s: %w", r.EventID, err)
	}
	return ev, nil
}
