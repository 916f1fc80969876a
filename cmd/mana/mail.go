package main

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/mail"
)

// newMailer is SMTP when SMTP_URL is set, the log mailer otherwise (which
// delivers nothing: start-up says so).
func newMailer(e *env) (mail.Mailer, error) {
	if e.cfg.SMTPURL == "" {
		e.log.Warn("SMTP_URL is unset: mails are not delivered, only logged without recipient or content (see docs/mail.md)")
		return mail.LogMailer{Logger: e.log}, nil
	}
	cfg, err := mail.ParseSMTPURL(e.cfg.SMTPURL)
	if err != nil {
		return nil, &configError{"SMTP_URL", err.Error()}
	}
	return mail.NewSMTP(cfg), nil
}

// newMailWorker builds the mail worker: it sends the queued mails and the
// notices the event feed calls for, under the lease mail.LeaseName. The
// returned function runs it until ctx ends.
func newMailWorker(e *env, store *eventstore.Store, holder string, reg prometheus.Registerer) (func(ctx context.Context), error) {
	mailer, err := newMailer(e)
	if err != nil {
		return nil, err
	}
	renderer, err := mail.NewRenderer(e.cfg.MailFrom, e.cfg.AppURL)
	if err != nil {
		return nil, err
	}
	lease := store.Lease(mail.LeaseName, holder, e.cfg.LeaseTTL)
	w, err := mail.NewWorker(mail.WorkerConfig{Store: store, Mailer: mailer, Renderer: renderer, Lease: lease,
		Logger: e.log, Registerer: reg})
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) {
		_ = lease.Run(ctx, w.Run, func(other string) {
			e.log.Info("mail worker idle: lease held by another process", "holder", other)
		})
	}, nil
}
