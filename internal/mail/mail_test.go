package mail_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/internal/mail"
	"github.com/manacore/mana/internal/mail/mailpit"
)

var at = time.Date(2026, 11, 26, 8, 30, 0, 0, time.UTC)

const token = "q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6j7k8l9z0x1c"

func TestRenderEveryKind(t *testing.T) {
	t.Parallel()
	r, err := mail.NewRenderer("", "https://app.example.com/account/")
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range mail.Kinds {
		t.Run(kind, func(t *testing.T) {
			p := mail.Payload{To: "ada@example.com", At: at, DeviceName: `Ada's <script>alert(1)</script> phone`,
				IPAddress: "203.0.113.7", UserAgent: "Mozilla/5.0"}
			if kind == mail.KindVerifyEmail || kind == mail.KindResetPassword {
				p.Token, p.ExpiresAt = token, at.Add(time.Hour)
			}
			m, err := r.Render(uuid.New(), kind, p, at)
			if err != nil {
				t.Fatal(err)
			}
			if m.Subject == "" || strings.ContainsAny(m.Subject, "\r\n") || m.To != p.To || m.From != "\"Mana Core\" <no-reply@localhost>" {
				t.Errorf("subject %q, to %q, from %q", m.Subject, m.To, m.From)
			}
			if strings.Contains(m.HTML, "<script>") {
				t.Error("the HTML part does not escape the device name")
			}
			switch kind {
			case mail.KindVerifyEmail, mail.KindResetPassword:
				page := map[string]string{mail.KindVerifyEmail: "verify-email", mail.KindResetPassword: "reset-password"}[kind]
				link := "https://app.example.com/account/" + page + "?token=" + token
				for part, body := range map[string]string{"text": m.Text, "html": m.HTML} {
					if !strings.Contains(body, token) || !strings.Contains(body, link) {
						t.Errorf("%s part lacks the token or the link %s:\n%s", part, link, body)
					}
				}
				if !strings.Contains(m.Text, "1 hour") {
					t.Errorf("text does not say how long the token lives:\n%s", m.Text)
				}
			default:
				if !strings.Contains(m.Text, "2026-11-26 08:30 UTC") || !strings.Contains(m.Text, "Ada's <script>") {
					t.Errorf("notice lacks the time or device:\n%s", m.Text)
				}
			}
		})
	}
	// Without APP_URL the token mails carry the token alone.
	r, err = mail.NewRenderer("Support <support@example.com>", "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := r.Render(uuid.New(), mail.KindResetPassword, mail.Payload{To: "a@example.com", Token: token, At: at, ExpiresAt: at.Add(time.Hour)}, at)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(m.Text, "http") || !strings.Contains(m.Text, token) || m.From != "\"Support\" <support@example.com>" {
		t.Errorf("from %q, text:\n%s", m.From, m.Text)
	}
}

func TestRendererRejectsBadSettings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ from, appURL string }{
		{"not an address", ""}, {"", "ftp://example.com"}, {"", "/relative"}, {"", "https://example.com/?a=b"},
	} {
		if _, err := mail.NewRenderer(tc.from, tc.appURL); err == nil {
			t.Errorf("NewRenderer(%q, %q) accepted", tc.from, tc.appURL)
		}
	}
}

func TestParseSMTPURL(t *testing.T) {
	t.Parallel()
	c, err := mail.ParseSMTPURL("smtp://user:s3cr%40t@mail.example.com:2525")
	if err != nil || c.Host != "mail.example.com" || c.Port != 2525 || c.Username != "user" || c.Password != "s3cr@t" || c.ImplicitTLS {
		t.Errorf("got %+v, %v", c, err)
	}
	c, err = mail.ParseSMTPURL("smtps://mail.example.com")
	if err != nil || c.Port != 465 || !c.ImplicitTLS {
		t.Errorf("smtps: %+v, %v", c, err)
	}
	c, err = mail.ParseSMTPURL("smtp://localhost")
	if err != nil || c.Port != 587 {
		t.Errorf("default port: %+v, %v", c, err)
	}
	for _, bad := range []string{"http://x", "smtp://", "smtp://h:0", "smtp://h:99999", "smtp://u:topsecret@h/path", "smtp://h?x=1", "::"} {
		_, err := mail.ParseSMTPURL(bad)
		if err == nil {
			t.Errorf("%q accepted", bad)
		} else if strings.Contains(err.Error(), "topsecret") {
			t.Errorf("the error repeats the password: %v", err)
		}
	}
}

// TestLogMailerLogsNoRecipientOrContent: without SMTP_URL a mail is only
// logged, by kind and id.
func TestLogMailerLogsNoRecipientOrContent(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	lm := mail.LogMailer{Logger: slog.New(slog.NewJSONHandler(&buf, nil))}
	r, _ := mail.NewRenderer("", "https://app.example.com")
	m, err := r.Render(uuid.New(), mail.KindResetPassword, mail.Payload{To: "secret.person@example.com", Token: token, At: at, ExpiresAt: at.Add(time.Hour)}, at)
	if err != nil {
		t.Fatal(err)
	}
	if err := lm.Send(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.Contains(out, mail.KindResetPassword) || !strings.Contains(out, m.ID.String()) {
		t.Errorf("log lacks kind or id: %s", out)
	}
	for _, secret := range []string{"secret.person", token, m.Subject} {
		if strings.Contains(out, secret) {
			t.Errorf("log carries %q: %s", secret, out)
		}
	}
}

// TestSMTPDeliversToMailpit sends through a real SMTP server (mailpit, with
// credentials, which Go sends over plain text to loopback only) and reads
// the mail back through its API.
func TestSMTPDeliversToMailpit(t *testing.T) {
	t.Parallel()
	mp := mailpit.Start(t)
	cfg, err := mail.ParseSMTPURL("smtp://tester:pw@" + mp.SMTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := mail.NewRenderer("Mana <no-reply@mana.test>", "https://app.example.com")
	to := "smtp." + uuid.NewString()[:8] + "@example.com"
	m, err := r.Render(uuid.New(), mail.KindVerifyEmail, mail.Payload{To: to, Token: token, At: at, ExpiresAt: at.Add(24 * time.Hour)}, at)
	if err != nil {
		t.Fatal(err)
	}
	m.Subject = "Verify — ünïcode"
	if err := mail.NewSMTP(cfg).Send(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	got := mp.Wait(to, 1, 10*time.Second)[0]
	if got.Subject != m.Subject || got.From.Address != "no-reply@mana.test" || !strings.Contains(got.MessageID, m.ID.String()) {
		t.Errorf("got subject %q from %q id %q", got.Subject, got.From.Address, got.MessageID)
	}
	link := "https://app.example.com/verify-email?token=" + token
	if !strings.Contains(got.Text, link) || !strings.Contains(got.HTML, link) || !strings.Contains(got.Text, "24 hours") {
		t.Errorf("text %q\nhtml %q", got.Text, got.HTML)
	}

	// A server that is not there: a retryable error, not a permanent one.
	dead := cfg
	dead.Host, dead.Port, dead.Timeout = "127.0.0.1", 1, 2*time.Second
	err = mail.NewSMTP(dead).Send(context.Background(), m)
	if err == nil || errors.Is(err, mail.ErrPermanent) {
		t.Errorf("send to a closed port: %v", err)
	}
	// A malformed recipient is permanent.
	bad := m
	bad.To = "not an address"
	if err := mail.NewSMTP(cfg).Send(context.Background(), bad); !errors.Is(err, mail.ErrPermanent) {
		t.Errorf("bad recipient: %v", err)
	}
}
