package domain_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
)

var update = flag.Bool("update", false, "rewrite the golden event payloads")

var at = time.Date(2026, 11, 26, 8, 30, 0, 123456000, time.UTC)

// samples holds one fully populated event of every type. A new event type
// without a sample fails TestEveryEventTypeHasAGoldenPayload.
var samples = []domain.Event{
	&domain.PackageCreated{PackageID: uuid.MustParse("8e0c3d1a-4f55-5d0e-9b1c-2a7f4e6d8c90"), Name: "Starter", Credits: 100, PriceCents: 100, Currency: "eur", SortOrder: 1, Active: true},
	&domain.UserRegistered{UserID: uuid.MustParse("0b7e4a52-9c1d-4f3e-8a6b-5d2c1e0f9a87"), Email: "ada@example.com", Name: "Ada", Role: "user", RegisteredAt: at},
	&domain.UserErased{UserID: uuid.MustParse("0b7e4a52-9c1d-4f3e-8a6b-5d2c1e0f9a87"), ErasedAt: at},
	&domain.UserLoginSucceeded{UserID: uid, SessionID: sid, IPAddress: "203.0.113.7"},
	&domain.UserLoginFailed{UserID: uid, Failures: 3, IPAddress: "203.0.113.7"},
	&domain.UserLocked{UserID: uid, LockedUntil: at.Add(30 * time.Minute)},
	&domain.UserPasswordChanged{UserID: uid, Reason: "change"},
	&domain.UserRoleChanged{UserID: uid, From: "user", To: "admin"},
	&domain.UserTwoFactorEnabled{UserID: uid, Method: domain.TwoFactorMethodTOTP, CodesIssued: domain.RecoveryCodeCount},
	&domain.UserTwoFactorDisabled{UserID: uid, Method: domain.TwoFactorMethodTOTP},
	&domain.UserRecoveryCodeUsed{UserID: uid, Remaining: 9},
	&domain.UserVerificationRequested{UserID: uid, ExpiresAt: at.Add(24 * time.Hour)},
	&domain.UserEmailVerified{UserID: uid, Via: domain.VerifiedByLink},
	&domain.UserPasswordResetRequested{UserID: uid, ExpiresAt: at.Add(time.Hour)},
	&domain.UserPasswordReset{UserID: uid, SessionsRevoked: 2, Unlocked: true},
	&domain.UserProfileUpdated{UserID: uid, Name: "Ada Lovelace"},
	&domain.SessionStarted{SessionID: sid, UserID: uid, DeviceID: "dev-1", DeviceName: "Ada's phone", IPAddress: "203.0.113.7", UserAgent: "Mozilla/5.0", ExpiresAt: at.Add(7 * 24 * time.Hour)},
	&domain.SessionRefreshed{SessionID: sid, UserID: uid, Counter: 2, ExpiresAt: at.Add(7 * 24 * time.Hour)},
	&domain.SessionRevoked{SessionID: sid, UserID: uid, Reason: domain.RevokedLogout},
	func() *domain.CreditSignupBonusGranted { e := domain.NewSignupBonus(uid, 150); return &e }(),
	&domain.CreditDailyGranted{UserID: uid, Amount: 5, Day: "2026-11-26", Postings: []domain.Posting{{Account: "user:" + uid.String() + ":free", Amount: 5}, {Account: "system:daily_grant", Amount: -5}}},
	&domain.CreditSpent{TransactionID: txid, UserID: uid, AppID: "chat", Amount: 7, Split: domain.Split{Free: 5, Paid: 2}, Description: "GPT call", Metadata: map[string]any{"model": "m1"},
		Postings: []domain.Posting{{Account: "user:" + uid.String() + ":free", Amount: -5}, {Account: "user:" + uid.String() + ":paid", Amount: -2}, {Account: "app:chat:revenue", Amount: 7}}},
	&domain.CreditRefunded{TransactionID: txid, UserID: uid, RefundOf: hid, AppID: "chat", Amount: 7, Split: domain.Split{Free: 5, Paid: 2}, Reason: "failed call",
		Postings: []domain.Posting{{Account: "user:" + uid.String() + ":free", Amount: 5}, {Account: "user:" + uid.String() + ":paid", Amount: 2}, {Account: "app:chat:revenue", Amount: -7}}},
	&domain.CreditGranted{TransactionID: txid, UserID: uid, Amount: 100, Bucket: "free", Reason: "support", Postings: []domain.Posting{{Account: "user:" + uid.String() + ":free", Amount: 100}, {Account: "system:grants", Amount: -100}}},
	&domain.CreditAdjusted{TransactionID: txid, UserID: uid, Amount: -3, Split: domain.Split{Free: -3}, Reason: "correction", Postings: []domain.Posting{{Account: "user:" + uid.String() + ":free", Amount: -3}, {Account: "system:adjustments", Amount: 3}}},
	&domain.CreditHoldPlaced{HoldID: hid, UserID: uid, AppID: "chat", Amount: 10, Split: domain.Split{Free: 8, Paid: 2}, ExpiresAt: at.Add(time.Hour),
		Postings: []domain.Posting{{Account: "user:" + uid.String() + ":free", Amount: -8}, {Account: "user:" + uid.String() + ":paid", Amount: -2}, {Account: "user:" + uid.String() + ":held", Amount: 10}}},
	&domain.CreditHoldCaptured{HoldID: hid, TransactionID: txid, UserID: uid, AppID: "chat", Captured: domain.Split{Free: 8, Paid: 1}, Returned: domain.Split{Paid: 1},
		Postings: []domain.Posting{{Account: "user:" + uid.String() + ":held", Amount: -10}, {Account: "user:" + uid.String() + ":paid", Amount: 1}, {Account: "app:chat:revenue", Amount: 9}}},
	&domain.CreditHoldReleased{HoldID: hid, UserID: uid, AppID: "chat", Returned: domain.Split{Free: 8, Paid: 2},
		Postings: []domain.Posting{{Account: "user:" + uid.String() + ":held", Amount: -10}, {Account: "user:" + uid.String() + ":free", Amount: 8}, {Account: "user:" + uid.String() + ":paid", Amount: 2}}},
	&domain.CreditHoldExpired{HoldID: hid, UserID: uid, AppID: "chat", Returned: domain.Split{Free: 8, Paid: 2},
		Postings: []domain.Posting{{Account: "user:" + uid.String() + ":held", Amount: -10}, {Account: "user:" + uid.String() + ":free", Amount: 8}, {Account: "user:" + uid.String() + ":paid", Amount: 2}}},
	&domain.PackageUpdated{PackageID: pid, Name: ptr("Starter+"), PriceCents: ptr(int64(120)), Active: ptr(false)},
	&domain.PurchaseCreated{PurchaseID: purid, UserID: uid, PackageID: pid, Credits: 500, AmountCents: 500, Currency: "eur", Kind: "payment_intent", Provider: "stripe", ProviderID: "pi_123"},
	&domain.PurchaseCompleted{PurchaseID: purid, UserID: uid, StripeEventID: "evt_1"},
	&domain.PurchaseFailed{PurchaseID: purid, UserID: uid, StripeEventID: "evt_2", Reason: "card_declined"},
	&domain.PurchasePaymentRejected{PurchaseID: purid, UserID: uid, StripeEventID: "evt_3", Reason: "amount_mismatch", AmountCents: 1, Currency: "eur"},
	func() *domain.CreditPurchased {
		e := domain.NewCreditPurchased(txid, uid, purid, 500, false)
		return &e
	}(),
	&domain.CreditWrittenOff{UserID: uid, Amount: 12, Split: domain.Split{Free: 10, Paid: 2},
		Postings: []domain.Posting{{Account: "user:" + uid.String() + ":free", Amount: -10}, {Account: "user:" + uid.String() + ":paid", Amount: -2}, {Account: "system:writeoff", Amount: 12}}},
}

var (
	uid   = uuid.MustParse("0b7e4a52-9c1d-4f3e-8a6b-5d2c1e0f9a87")
	sid   = uuid.MustParse("5f3c2b1a-0e9d-4c8b-a7f6-e5d4c3b2a190")
	txid  = uuid.MustParse("7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
	hid   = uuid.MustParse("9c8b7a6d-5e4f-4321-8765-4321fedcba98")
	pid   = uuid.MustParse("8e0c3d1a-4f55-5d0e-9b1c-2a7f4e6d8c90")
	purid = uuid.MustParse("3b2a1c0d-9e8f-47a6-b5c4-d3e2f1a0b9c8")
)

func ptr[T any](v T) *T { return &v }

// TestEveryEventTypeHasAGoldenPayload pins each payload's JSON shape: a
// change to a field name, type or tag shows up as a golden diff and needs a
// new schema version with an upcaster.
func TestEveryEventTypeHasAGoldenPayload(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for _, ev := range samples {
		name := fmt.Sprintf("%s.v%d.json", ev.EventType(), ev.SchemaVersion())
		seen[ev.EventType()] = true
		t.Run(name, func(t *testing.T) {
			got, err := json.MarshalIndent(ev, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			path := filepath.Join("testdata", "events", name)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("no golden payload (run go test ./domain -update): %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("payload of %s changed:\n got %s\nwant %s", ev.EventType(), got, want)
			}
			// The golden file decodes back to the same event, with unknown
			// fields refused.
			fresh, ok := domain.NewEvent(ev.EventType())
			if !ok {
				t.Fatalf("%s is not in the catalog", ev.EventType())
			}
			dec := json.NewDecoder(bytes.NewReader(want))
			dec.DisallowUnknownFields()
			if err := dec.Decode(fresh); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(fresh, ev) {
				t.Fatalf("decoded %+v, want %+v", fresh, ev)
			}
		})
	}
	for _, typ := range domain.EventTypes() {
		if !seen[typ] {
			t.Errorf("event type %s has no golden sample", typ)
		}
	}
}

func TestEventTypesFollowTheNamingRule(t *testing.T) {
	t.Parallel()
	rule := regexp.MustCompile(`^[a-z][a-z_]*\.[a-z][a-z_]*$`)
	for _, typ := range domain.EventTypes() {
		if !rule.MatchString(typ) {
			t.Errorf("%s is not <aggregate>.<past_tense>", typ)
		}
		ev, _ := domain.NewEvent(typ)
		if ev.SchemaVersion() < 1 {
			t.Errorf("%s has schema version %d", typ, ev.SchemaVersion())
		}
	}
}

func TestPersonalFieldsExistInThePayload(t *testing.T) {
	t.Parallel()
	for _, ev := range samples {
		pd, ok := ev.(domain.PersonalData)
		if !ok {
			continue
		}
		raw, _ := json.Marshal(ev)
		var fields map[string]any
		json.Unmarshal(raw, &fields)
		for _, f := range pd.PersonalFields() {
			if _, ok := fields[f]; !ok {
				t.Errorf("%s names personal field %q that its payload does not have", ev.EventType(), f)
			}
		}
		if pd.DataSubject() == uuid.Nil {
			t.Errorf("%s has no data subject", ev.EventType())
		}
	}
}

func TestDefaultPackagesAreStable(t *testing.T) {
	t.Parallel()
	a, b := domain.DefaultPackages(), domain.DefaultPackages()
	if !reflect.DeepEqual(a, b) || len(a) != 4 {
		t.Fatalf("default packages differ between calls or count %d", len(a))
	}
	for _, p := range a {
		if p.PriceCents != p.Credits || p.Currency != "eur" {
			t.Errorf("%s: %d credits for %d cents %s, want 100 credits per euro", p.Name, p.Credits, p.PriceCents, p.Currency)
		}
	}
}

func TestErrorCodeAndMessage(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("wrapped: %w", domain.Errorf(domain.CodeBusy, "busy %d", 1))
	if domain.ErrorCode(err) != domain.CodeBusy || domain.ErrorMessage(err) != "busy 1" {
		t.Fatalf("code %s message %q", domain.ErrorCode(err), domain.ErrorMessage(err))
	}
	plain := fmt.Errorf("pq: relation users does not exist")
	if domain.ErrorCode(plain) != domain.CodeInternal || domain.ErrorMessage(plain) == plain.Error() {
		t.Fatal("an infrastructure error leaks its text")
	}
	if domain.ErrorCode(nil) != "" {
		t.Fatal("nil has a code")
	}
}

// TestCreditPostingsBalance: every credit sample's postings sum to zero.
func TestCreditPostingsBalance(t *testing.T) {
	t.Parallel()
	for _, ev := range samples {
		if ce, ok := ev.(domain.CreditEvent); ok && domain.SumPostings(ce.Entries()) != 0 {
			t.Errorf("%s postings sum to %d", ev.EventType(), domain.SumPostings(ce.Entries()))
		}
	}
}
