package mail

import (
	"context"
	"log/slog"
)

// LogMailer is the mailer without SMTP_URL: it delivers nothing and logs
// that a mail would have been sent, with the mail's kind and id only — never
// its recipient, subject, body or token (logs carry no secrets or personal
// data, SPEC §7).
type LogMailer struct {
	Logger *slog.Logger
}

// Send implements Mailer.
func (l LogMailer) Send(ctx context.Context, m Message) error {
	if l.Logger != nil {
		l.Logger.LogAttrs(ctx, slog.LevelInfo, "mail not delivered: SMTP_URL is unset (log mailer)",
			slog.String("kind", m.Kind), slog.String("mail_id", m.ID.String()))
	}
	return nil
}
