package console

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
)

// TestEveryTemplateRenders executes every page with typical data, as an
// admin, an auditor and (for public pages) anonymously, so a template
// that refers to a missing field fails here rather than in a browser.
func TestEveryTemplateRenders(t *testing.T) {
	t.Parallel()
	p, err := parsePages()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := func(v string) *string { return &v }
	txs := []domain.Transaction{{ID: uuid.New(), Type: "spend", Amount: 7, AppID: s("chat"), Description: s("a <b>spend</b>"), CreatedAt: now}}
	qr, err := newQRCode("otpauth://totp/Mana:user@example.com?secret=JBSWY3DPEHPK3PXP&issuer=Mana")
	if err != nil {
		t.Fatal(err)
	}
	bal := domain.Balance{Balance: 150, FreeCreditsRemaining: 100, PaidBalance: 50, HeldCredits: 5, TotalEarned: 160, TotalSpent: 5, DailyFreeCredits: 5}
	data := map[string][]any{
		"login":    {loginForm{Email: "user@example.com"}},
		"login2fa": {nil},
		"signup":   {signupForm{Name: "Ann", Email: "ann@example.com"}},
		"forgot":   {nil},
		"verify":   {tokenForm{Token: "abc"}, tokenForm{}},
		"reset":    {tokenForm{Token: "abc"}, tokenForm{}},
		"error":    {api.Problem{Status: 404}, api.Problem{Status: 401}, api.Problem{Status: 500}, api.Problem{Status: 409}},
		"account": {accountData{Balance: bal, Transactions: txs, Prev: 0, Next: 40, Offset: 20,
			Usage: newUsageChart([]domain.UsageDay{{Day: "2026-01-01", AppID: "chat", Credits: 7, Count: 1}, {Day: "2026-01-02", AppID: "img<gen>", Credits: 30, Count: 2}}, 30)},
			accountData{Prev: -1, Next: -1}},
		"sessions": {[]domain.SessionView{{ID: uuid.New(), DeviceName: s("Phone"), IPAddress: s("192.0.2.1"), UserAgent: s("Firefox"), CreatedAt: now, LastActivityAt: now, ExpiresAt: now, Current: true},
			{ID: uuid.New(), CreatedAt: now}}, []domain.SessionView(nil)},
		"security": {securityData{Events: []domain.SecurityEventView{{ID: uuid.New(), Type: "login_failed", IPAddress: s("192.0.2.1"), CreatedAt: now}}},
			securityData{QR: qr, Secret: "JBSWY3DPEHPK3PXP"}, securityData{RecoveryCodes: []string{"abcde-fghij"}}},
		"buy": {buyData{Packages: []domain.Package{{ID: uuid.New(), Name: "Starter", Credits: 100, PriceCents: 100}},
			Purchases: []domain.PurchaseView{{ID: uuid.New(), Credits: 100, AmountCents: 100, Status: "pending", CreatedAt: now}},
			Started:   &domain.PurchaseStarted{URL: "https://checkout.example/x", AmountCents: 100, Credits: 100}}, buyData{}},
		"admin": {nil},
		"users": {userSearchData{Email: "ann@example.com", User: &domain.AdminUserView{ID: uuid.New(), Email: "ann@example.com", Role: "user", CreatedAt: now}},
			userSearchData{}},
		"user": {userLedgerData{UserID: uuid.New(), Balance: bal, Transactions: txs, Prev: -1, Next: 20, Key: "k",
			Form: creditForm{Op: "grant", Amount: "5", Reason: "r"}}},
		"events": {eventsData{Filter: eventFilter{Types: "credit.spent"}, Types: domain.EventTypes(), NextURL: "/console/admin/events?after=1-2", LiveURL: "/console/admin/events/live",
			Events: []eventRow{{Event: Event{Cursor: "1-2", ID: uuid.New(), Type: "credit.spent", StreamType: "credit_account", StreamID: "x", OccurredAt: now}, Payload: `{"a": 1}`}}},
			eventsData{}},
		"live":        {liveData{StreamURL: "/console/admin/events/stream?types=credit.granted"}, liveData{}},
		"projections": {[]ProjectionStatus{{Name: "balances", Checkpoint: "1-2", LagEvents: 3, LagSeconds: 1.5, Failures: 1, Holder: "h"}}},
		"ledger": {ledgerData{Checkpoint: &domain.Checkpoint{ID: 1, Cursor: "1-2", TreeSize: 2, Root: "ab", KeyID: "k", Signature: "sig", SignedAt: now},
			Ran: true, OK: false, Checks: []LedgerCheck{{Line: "hash chains: ok", OK: true}, {Line: "postings: FAILED", OK: false}}}, ledgerData{}},
	}
	viewers := []*viewer{nil, {Email: "a@example.com", Role: "admin", Admin: true, Auditor: true}, {Email: "b@example.com", Role: "auditor", Auditor: true}}
	for name, tmpl := range p.byName {
		samples, ok := data[name]
		if !ok {
			t.Errorf("page %s has no sample data here: add it", name)
			continue
		}
		for _, d := range samples {
			for _, who := range viewers {
				var buf bytes.Buffer
				v := view{Viewer: who, CSRF: "token", Notice: "n", Error: "e", Asset: assetVersion, Data: d}
				if err := tmpl.ExecuteTemplate(&buf, "layout", v); err != nil {
					t.Errorf("page %s with %T: %v", name, d, err)
					continue
				}
				out := buf.String()
				if strings.Contains(out, "<b>") || strings.Contains(out, "img<gen>") {
					t.Errorf("page %s: unescaped text", name)
				}
				if strings.Count(out, "<form") != strings.Count(out, `name="csrf"`)+strings.Count(out, `method="get"`) {
					t.Errorf("page %s: a POST form without the CSRF field", name)
				}
			}
		}
	}
	for name := range data {
		if _, ok := p.byName[name]; !ok {
			t.Errorf("sample data for %s, which is no page", name)
		}
	}
}
