package eventstore_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
)

// register records a user the way registration does: the event with the
// user's personal data, the email claim and the password hash in the
// credential table, all in one transaction.
func register(t *testing.T, e *testEnv, email, name, passwordHash string) (uuid.UUID, error) {
	t.Helper()
	user := uuid.New()
	_, err := e.store.Execute(ctxT(t), systemCmd("auth.register"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		if err := tx.ClaimEmail(ctx, email, user); err != nil {
			return domain.Receipt{}, err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO password_credentials (user_id, password_hash) VALUES ($1, $2)", user, passwordHash); err != nil {
			return domain.Receipt{}, err
		}
		_, err := tx.Append(ctx, eventstore.StreamAppend{
			StreamType: domain.StreamUser, StreamID: user.String(), Users: []uuid.UUID{user},
			Events: []domain.Event{domain.UserRegistered{UserID: user, Email: email, Name: name, Role: "user", RegisteredAt: tx.Now()}},
		})
		return domain.Receipt{Status: http.StatusCreated}, err
	})
	return user, err
}

func TestSecretsAndPlaintextPIINeverReachEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const (
		email = "Secret.Person@Example.com"
		name  = "Ada Lovelace-Unique"
		hash  = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$uniquehashvalue0123456789"
	)
	user, err := register(t, e, email, name, hash)
	if err != nil {
		t.Fatal(err)
	}
	if e.count(t, "SELECT count(*) FROM password_credentials WHERE user_id = $1", user) != 1 {
		t.Fatal("the credential was not written in the append transaction")
	}
	for _, needle := range []string{hash, "uniquehashvalue", email, "Secret.Person", "secret.person@example.com", name} {
		n := e.count(t, `SELECT count(*) FROM events WHERE payload::text ILIKE '%' || $1 || '%' OR metadata::text ILIKE '%' || $1 || '%'`, needle)
		if n != 0 {
			t.Errorf("%q found in %d stored events", needle, n)
		}
		if n := e.count(t, `SELECT count(*) FROM email_claims WHERE encode(email_hmac, 'escape') ILIKE '%' || $1 || '%'`, needle); n != 0 {
			t.Errorf("%q found in email_claims", needle)
		}
	}
	// The store decodes the personal data back for those with the key.
	got := loadUser(t, e, user)
	if got.Email != email || got.Name != name {
		t.Fatalf("decoded %+v", got)
	}
}

func TestCodecRefusesCredentialFields(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, err := e.appendOne(t, "package", uuid.NewString(), 0, leakyEvent{Password: "hunter2"})
	if !errors.Is(err, eventstore.ErrSecretInPayload) {
		t.Fatalf("err = %v, want ErrSecretInPayload", err)
	}
	_, err = e.appendOne(t, "package", uuid.NewString(), 0, nestedLeak{Data: map[string]string{"refresh_token": "x"}})
	if !errors.Is(err, eventstore.ErrSecretInPayload) {
		t.Fatalf("nested: err = %v, want ErrSecretInPayload", err)
	}
	if n := e.count(t, "SELECT count(*) FROM events"); n != 0 {
		t.Fatalf("%d events stored", n)
	}
}

type leakyEvent struct {
	Password string `json:"password"`
}

func (leakyEvent) EventType() string  { return "package.leaked" }
func (leakyEvent) SchemaVersion() int { return 1 }

type nestedLeak struct {
	Data map[string]string `json:"data"`
}

func (nestedLeak) EventType() string  { return "package.leaked" }
func (nestedLeak) SchemaVersion() int { return 1 }

func loadUser(t *testing.T, e *testEnv, user uuid.UUID) *domain.UserRegistered {
	t.Helper()
	var got *domain.UserRegistered
	_, err := e.store.Execute(ctxT(t), systemCmd("test.load"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		evs, _, err := tx.Load(ctx, domain.StreamUser, user.String(), 0)
		if err != nil {
			return domain.Receipt{}, err
		}
		if len(evs) != 1 {
			t.Fatalf("loaded %d events", len(evs))
		}
		got = evs[0].Event.(*domain.UserRegistered)
		return domain.Receipt{}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestErasureShredsPersonalDataAndTheChainStillVerifies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	user, err := register(t, e, "erase.me@example.com", "Erin", "hash-1")
	if err != nil {
		t.Fatal(err)
	}
	other, err := register(t, e, "keep.me@example.com", "Kim", "hash-2")
	if err != nil {
		t.Fatal(err)
	}
	var before []byte
	if err := e.pool.QueryRow(ctxT(t), "SELECT hash FROM events WHERE stream_id = $1", user.String()).Scan(&before); err != nil {
		t.Fatal(err)
	}
	_, err = e.store.Execute(ctxT(t), systemCmd("auth.erase"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		if err := tx.EraseSubject(ctx, user); err != nil {
			return domain.Receipt{}, err
		}
		_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamUser, StreamID: user.String(), ExpectedVersion: 1,
			Events: []domain.Event{domain.UserErased{UserID: user, ErasedAt: tx.Now()}}})
		return domain.Receipt{Status: 204}, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, "SELECT count(*) FROM data_keys WHERE subject_id = $1", user); n != 0 {
		t.Fatal("the data key survived erasure")
	}
	if n := e.count(t, "SELECT count(*) FROM email_claims WHERE user_id = $1", user); n != 0 {
		t.Fatal("the email claim survived erasure")
	}
	var evs []eventstore.Decoded
	_, err = e.store.Execute(ctxT(t), systemCmd("test.load"), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		var err error
		evs, _, err = tx.Load(ctx, domain.StreamUser, user.String(), 0)
		return domain.Receipt{}, err
	})
	if err != nil {
		t.Fatal(err)
	}
	reg := evs[0].Event.(*domain.UserRegistered)
	if reg.Email != "" || reg.Name != "" || reg.UserID != user {
		t.Fatalf("erased user decodes as %+v", reg)
	}
	if got := loadUser(t, e, other); got.Email != "keep.me@example.com" {
		t.Fatalf("another user's data was lost: %+v", got)
	}
	var after []byte
	e.pool.QueryRow(ctxT(t), "SELECT hash FROM events WHERE stream_id = $1 AND stream_version = 1", user.String()).Scan(&after)
	if string(after) != string(before) {
		t.Fatal("erasure changed a stored event")
	}
	if n, brk, err := e.store.VerifyChains(ctxT(t)); err != nil || brk != nil || n != 3 {
		t.Fatalf("verify after erasure: n=%d brk=%v err=%v", n, brk, err)
	}
	// The address is free again.
	if _, err := register(t, e, "erase.me@example.com", "Erin 2", "hash-3"); err != nil {
		t.Fatalf("re-register after erasure: %v", err)
	}
}

func TestEmailClaimsAreUniqueUnderConcurrency(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n = 10
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			// Case and spaces differ; the blind index normalizes them.
			email := "Same@Example.com"
			if i%2 == 1 {
				email = "  same@example.COM "
			}
			_, errs[i] = register(t, e, email, "n", "h")
		}(i)
	}
	close(start)
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch domain.ErrorCode(err) {
		case "":
			ok++
		case domain.CodeEmailAlreadyRegistered:
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d registrations of one address succeeded", ok)
	}
	if c := e.count(t, "SELECT count(*) FROM events WHERE event_type = 'user.registered'"); c != 1 {
		t.Fatalf("%d registration events", c)
	}
}

func TestVerifyFindsATamperedEvent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	stream := uuid.NewString()
	recs, err := e.appendOne(t, "package", stream, 0, pkg("a"), pkg("b"), pkg("c"))
	if err != nil {
		t.Fatal(err)
	}
	if n, brk, err := e.store.VerifyChains(ctxT(t)); err != nil || brk != nil || n != 3 {
		t.Fatalf("clean log: n=%d brk=%v err=%v", n, brk, err)
	}
	// Only someone who can disable the triggers can rewrite history; the
	// chain is what catches it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		"ALTER TABLE events DISABLE TRIGGER events_no_update_delete",
		"UPDATE events SET payload = jsonb_set(payload, '{credits}', '1000000') WHERE stream_id = '" + stream + "' AND stream_version = 2",
		"ALTER TABLE events ENABLE TRIGGER events_no_update_delete",
	} {
		if _, err := tx.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	n, brk, err := e.store.VerifyChains(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if brk == nil || brk.Cursor != recs[1].Cursor || n != 1 {
		t.Fatalf("verify: n=%d brk=%v, want a break at %s", n, brk, recs[1].Cursor)
	}
}
