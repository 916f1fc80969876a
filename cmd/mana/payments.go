package main

import (
	"fmt"

	"github.com/manacore/mana/internal/credits"
	"github.com/manacore/mana/internal/stripe"
)

// newPurchases builds the purchases service over the credits service:
// with a Stripe client when STRIPE_SECRET_KEY is set (at STRIPE_API_BASE
// when given, e.g. stripe-mock), without one otherwise (purchases answer
// PAYMENTS_NOT_CONFIGURED); the webhook works whenever
// STRIPE_WEBHOOK_SECRET is set.
func newPurchases(e *env, cs *credits.Service) (*credits.Purchases, error) {
	cfg := credits.PurchasesConfig{Credits: cs, WebhookSecret: e.cfg.StripeWebhookSecret, Logger: e.log}
	if e.cfg.StripeSecretKey != "" {
		client, err := stripe.New(stripe.Config{SecretKey: e.cfg.StripeSecretKey, APIBase: e.cfg.StripeAPIBase})
		if err != nil {
			return nil, fmt.Errorf("STRIPE_API_BASE: %w", err)
		}
		cfg.Provider = client
	}
	return credits.NewPurchases(cfg)
}
