package mail

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"net/mail"
	"net/url"
	"strings"
	texttemplate "text/template"
	"time"

	"github.com/google/uuid"
)

//go:embed templates/*.txt templates/*.html
var templateFS embed.FS

// DefaultFrom is the sender without MAIL_FROM.
const DefaultFrom = "Mana Core <no-reply@localhost>"

// product names the service in mails.
const product = "Mana Core"

// Renderer turns queued mails into messages with the embedded templates:
// per kind, templates/<kind>.txt (text/template; its "subject" block is the
// subject) and templates/<kind>.html (html/template, inside layout.html).
type Renderer struct {
	from   string
	appURL *url.URL
	text   map[string]*texttemplate.Template
	html   map[string]*htmltemplate.Template
}

// NewRenderer parses the templates. from is the sender address (DefaultFrom
// when empty); appURL, when not empty, is the http(s) base URL of the web
// app the token mails link to (<appURL>/verify-email?token=… and
// <appURL>/reset-password?token=…); without it they carry the token alone.
func NewRenderer(from, appURL string) (*Renderer, error) {
	if from == "" {
		from = DefaultFrom
	}
	addr, err := mail.ParseAddress(from)
	if err != nil {
		return nil, errors.New("the sender is not an email address (want name <address> or address)")
	}
	r := &Renderer{from: addr.String(), text: map[string]*texttemplate.Template{}, html: map[string]*htmltemplate.Template{}}
	if appURL != "" {
		u, err := url.Parse(appURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, errors.New("the app URL must be an absolute http(s) URL without query or fragment")
		}
		u.Path = strings.TrimSuffix(u.Path, "/")
		r.appURL = u
	}
	for _, kind := range Kinds {
		t, err := texttemplate.New(kind+".txt").Option("missingkey=error").ParseFS(templateFS, "templates/"+kind+".txt")
		if err != nil {
			return nil, fmt.Errorf("mail template %s.txt: %w", kind, err)
		}
		if t.Lookup("subject") == nil {
			return nil, fmt.Errorf("mail template %s.txt has no subject block", kind)
		}
		h, err := htmltemplate.New("layout.html").Option("missingkey=error").ParseFS(templateFS, "templates/layout.html", "templates/"+kind+".html")
		if err != nil {
			return nil, fmt.Errorf("mail template %s.html: %w", kind, err)
		}
		r.text[kind], r.html[kind] = t, h
	}
	return r, nil
}

// From returns the sender address.
func (r *Renderer) From() string { return r.from }

// templateData is what the templates see.
type templateData struct {
	Product    string
	Subject    string
	Token      string
	Link       string
	ExpiresIn  string
	ExpiresAt  string
	At         string
	DeviceName string
	IPAddress  string
	UserAgent  string
}

// Render builds the message of the queued mail id of kind.
func (r *Renderer) Render(id uuid.UUID, kind string, p Payload, now time.Time) (Message, error) {
	tt, ok := r.text[kind]
	if !ok {
		return Message{}, fmt.Errorf("mail: unknown kind %q", kind)
	}
	d := templateData{
		Product:    product,
		Token:      p.Token,
		DeviceName: p.DeviceName,
		IPAddress:  p.IPAddress,
		UserAgent:  p.UserAgent,
	}
	if !p.At.IsZero() {
		d.At = p.At.UTC().Format("2006-01-02 15:04 UTC")
	}
	if !p.ExpiresAt.IsZero() {
		d.ExpiresAt = p.ExpiresAt.UTC().Format("2006-01-02 15:04 UTC")
		d.ExpiresIn = humanDuration(p.ExpiresAt.Sub(p.At))
	}
	if r.appURL != nil && p.Token != "" {
		page := map[string]string{KindVerifyEmail: "/verify-email", KindResetPassword: "/reset-password"}[kind]
		if page != "" {
			u := *r.appURL
			u.Path += page
			u.RawQuery = url.Values{"token": {p.Token}}.Encode()
			d.Link = u.String()
		}
	}
	var subj, text, html bytes.Buffer
	if err := tt.ExecuteTemplate(&subj, "subject", d); err != nil {
		return Message{}, fmt.Errorf("mail %s subject: %w", kind, err)
	}
	d.Subject = strings.TrimSpace(subj.String())
	if err := tt.Execute(&text, d); err != nil {
		return Message{}, fmt.Errorf("mail %s text: %w", kind, err)
	}
	if err := r.html[kind].Execute(&html, d); err != nil {
		return Message{}, fmt.Errorf("mail %s html: %w", kind, err)
	}
	return Message{ID: id, Kind: kind, From: r.from, To: p.To, Subject: d.Subject,
		Text: text.String(), HTML: html.String(), Date: now}, nil
}

// humanDuration says how long a token lives, in whole hours or minutes.
func humanDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "a moment"
	case d%time.Hour == 0 && d >= time.Hour:
		if d == time.Hour {
			return "1 hour"
		}
		return fmt.Sprintf("%d hours", d/time.Hour)
	case d >= 2*time.Minute:
		return fmt.Sprintf("%d minutes", (d+30*time.Second)/time.Minute)
	default:
		return "1 minute"
	}
}
