// Package mail sends the service's mails: email verification, password
// reset, and the security notices about a login from a new device and a
// reused refresh token (docs/mail.md).
//
// Nothing is ever sent inside a request's transaction. Commands queue a
// mail in the table mail_outbox in their own transaction (Enqueue), sealed
// with DATA_KEK because it may carry a one-time token; the Worker, running
// under the lease "worker:mail", follows the event feed to queue the
// notices, and sends what is due through a Mailer with retries and
// exponential backoff. The Mailer is SMTP (SMTP_URL) or, when SMTP_URL is
// unset, a log mailer that records that a mail would have been sent —
// never its recipient, body or token.
package mail

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
)

// Kinds of mail. Each has a text and an HTML template under templates/.
const (
	// KindVerifyEmail carries an email-verification token.
	KindVerifyEmail = "verify_email"
	// KindResetPassword carries a password-reset token.
	KindResetPassword = "reset_password"
	// KindNewDevice tells the user about a login from a device not seen
	// before.
	KindNewDevice = "new_device"
	// KindRefreshReuse tells the user that a used refresh token came back,
	// and that the session was revoked for it.
	KindRefreshReuse = "refresh_token_reuse"
)

// Kinds lists every kind of mail.
var Kinds = []string{KindVerifyEmail, KindResetPassword, KindNewDevice, KindRefreshReuse}

// Message is one rendered mail.
type Message struct {
	// ID identifies the mail (the outbox row); the Message-ID header is
	// derived from it, so a retried mail keeps its Message-ID.
	ID      uuid.UUID
	Kind    string
	From    string
	To      string
	Subject string
	Text    string
	HTML    string
	Date    time.Time
}

// Mailer delivers messages. Send must be safe for concurrent use; an error
// wrapping ErrPermanent means a retry cannot succeed (the recipient was
// refused), any other error is retried.
type Mailer interface {
	Send(ctx context.Context, m Message) error
}

// ErrPermanent marks a delivery failure that no retry can fix.
var ErrPermanent = errors.New("mail: permanent delivery failure")
