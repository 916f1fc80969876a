package mail

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// SMTPConfig is a parsed SMTP_URL.
type SMTPConfig struct {
	// Host and Port of the server.
	Host string
	Port int
	// ImplicitTLS is set for smtps://: TLS from the first byte. smtp://
	// upgrades with STARTTLS whenever the server offers it.
	ImplicitTLS bool
	// Username and Password, when the URL has them: AUTH PLAIN, which Go
	// refuses over an unencrypted connection except to localhost.
	Username, Password string
	// Timeout bounds one delivery, connection included.
	Timeout time.Duration
}

// DefaultSMTPTimeout bounds one delivery.
const DefaultSMTPTimeout = 30 * time.Second

// ParseSMTPURL parses smtp://[user[:password]@]host[:port] (port 587 by
// default) or smtps://… (port 465 by default). The error never repeats the
// password.
func ParseSMTPURL(raw string) (SMTPConfig, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return SMTPConfig{}, errors.New("not a URL (want smtp://user:password@host:port or smtps://…)")
	}
	c := SMTPConfig{Timeout: DefaultSMTPTimeout}
	switch u.Scheme {
	case "smtp":
		c.Port = 587
	case "smtps":
		c.Port, c.ImplicitTLS = 465, true
	default:
		return SMTPConfig{}, fmt.Errorf("scheme %q is not smtp or smtps", u.Scheme)
	}
	c.Host = u.Hostname()
	if c.Host == "" {
		return SMTPConfig{}, errors.New("no host")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return SMTPConfig{}, errors.New("bad port")
		}
		c.Port = n
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "" {
		return SMTPConfig{}, errors.New("no path, query or fragment allowed")
	}
	if u.User != nil {
		c.Username = u.User.Username()
		c.Password, _ = u.User.Password()
	}
	return c, nil
}

// Addr is host:port.
func (c SMTPConfig) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// SMTP delivers mail over SMTP, one connection per message.
type SMTP struct {
	cfg SMTPConfig
	// helo is the name this client greets with.
	helo string
}

// NewSMTP returns a mailer for cfg.
func NewSMTP(cfg SMTPConfig) *SMTP {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultSMTPTimeout
	}
	return &SMTP{cfg: cfg, helo: "localhost"}
}

// Send implements Mailer: connect (TLS for smtps://, STARTTLS when offered
// for smtp://), authenticate when the URL has credentials, and deliver m.
// A recipient the server refuses with a 5xx is ErrPermanent.
func (s *SMTP) Send(ctx context.Context, m Message) error {
	to, err := mail.ParseAddress(m.To)
	if err != nil {
		return fmt.Errorf("%w: invalid recipient address", ErrPermanent)
	}
	from, err := mail.ParseAddress(m.From)
	if err != nil {
		return fmt.Errorf("%w: invalid sender address", ErrPermanent)
	}
	body, err := compose(m)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()

	var conn net.Conn
	d := &net.Dialer{}
	if s.cfg.ImplicitTLS {
		conn, err = (&tls.Dialer{NetDialer: d, Config: &tls.Config{ServerName: s.cfg.Host, MinVersion: tls.VersionTLS12}}).DialContext(ctx, "tcp", s.cfg.Addr())
	} else {
		conn, err = d.DialContext(ctx, "tcp", s.cfg.Addr())
	}
	if err != nil {
		return fmt.Errorf("smtp connect: %w", err)
	}
	// The deadline covers the whole conversation; a cancelled ctx closes
	// the connection.
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()

	c, err := smtp.NewClient(conn, s.cfg.Host)
	if err != nil {
		_ = conn.Close()
		return fmt.Errorf("smtp greeting: %w", err)
	}
	defer c.Close()
	if err := c.Hello(s.helo); err != nil {
		return fmt.Errorf("smtp hello: %w", err)
	}
	if !s.cfg.ImplicitTLS {
		if ok, _ := c.Extension("STARTTLS"); ok {
			if err := c.StartTLS(&tls.Config{ServerName: s.cfg.Host, MinVersion: tls.VersionTLS12}); err != nil {
				return fmt.Errorf("smtp starttls: %w", err)
			}
		}
	}
	if s.cfg.Username != "" {
		if err := c.Auth(smtp.PlainAuth("", s.cfg.Username, s.cfg.Password, s.cfg.Host)); err != nil {
			return fmt.Errorf("smtp auth: %w", err)
		}
	}
	if err := c.Mail(from.Address); err != nil {
		return fmt.Errorf("smtp mail from: %w", err)
	}
	if err := c.Rcpt(to.Address); err != nil {
		var te *textproto.Error
		if errors.As(err, &te) && te.Code >= 500 {
			return fmt.Errorf("%w: recipient refused (smtp %d)", ErrPermanent, te.Code)
		}
		return fmt.Errorf("smtp rcpt to: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("smtp data: %w", err)
	}
	if _, err := w.Write(body); err != nil {
		return fmt.Errorf("smtp data: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("smtp data: %w", err)
	}
	if err := c.Quit(); err != nil {
		// The message was accepted at the end of DATA; a failed QUIT
		// does not undo that.
		return nil
	}
	return nil
}

// compose renders m as a MIME message: multipart/alternative with a
// quoted-printable text part and HTML part, lines ending in CRLF.
func compose(m Message) ([]byte, error) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	domain := "localhost"
	if a, err := mail.ParseAddress(m.From); err == nil {
		if i := strings.LastIndexByte(a.Address, '@'); i >= 0 {
			domain = a.Address[i+1:]
		}
	}
	date := m.Date
	if date.IsZero() {
		date = time.Now()
	}
	h := []struct{ k, v string }{
		{"From", m.From},
		{"To", m.To},
		{"Subject", mime.QEncoding.Encode("utf-8", m.Subject)},
		{"Date", date.UTC().Format(time.RFC1123Z)},
		{"Message-ID", "<" + m.ID.String() + "@" + domain + ">"},
		{"MIME-Version", "1.0"},
		{"Auto-Submitted", "auto-generated"},
		{"Content-Type", "multipart/alternative; boundary=" + strconv.Quote(mw.Boundary())},
	}
	var head bytes.Buffer
	for _, f := range h {
		if strings.ContainsAny(f.v, "\r\n") {
			return nil, fmt.Errorf("mail: header %s contains a line break", f.k)
		}
		head.WriteString(f.k + ": " + f.v + "\r\n")
	}
	head.WriteString("\r\n")
	for _, part := range []struct{ typ, body string }{
		{"text/plain; charset=utf-8", m.Text},
		{"text/html; charset=utf-8", m.HTML},
	} {
		pw, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":              {part.typ},
			"Content-Transfer-Encoding": {"quoted-printable"},
		})
		if err != nil {
			return nil, err
		}
		qp := quotedprintable.NewWriter(pw)
		if _, err := qp.Write([]byte(crlf(part.body))); err != nil {
			return nil, err
		}
		if err := qp.Close(); err != nil {
			return nil, err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	return append(head.Bytes(), b.Bytes()...), nil
}

// crlf turns every line ending into CRLF.
func crlf(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	return strings.ReplaceAll(s, "\n", "\r\n")
}
