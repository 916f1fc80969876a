package credits

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/stripe"
	"github.com/manacore/mana/projections"
)

// PaymentProvider creates the payments of purchases; *stripe.Client
// implements it.
type PaymentProvider interface {
	CreatePaymentIntent(ctx context.Context, o stripe.Order) (stripe.Intent, error)
	CreateCheckoutSession(ctx context.Context, o stripe.Order) (stripe.Session, error)
}

// PurchasesConfig configures Purchases.
type PurchasesConfig struct {
	// Credits is the ledger the grants go to; its per-account locks
	// serialize a grant with the account's other commands. Required.
	Credits *Service
	// Provider creates PaymentIntents and Checkout Sessions; nil
	// (STRIPE_SECRET_KEY unset) makes Start fail with
	// PAYMENTS_NOT_CONFIGURED.
	Provider PaymentProvider
	// WebhookSecret is STRIPE_WEBHOOK_SECRET; empty makes Webhook fail with
	// PAYMENTS_NOT_CONFIGURED. Never logged.
	WebhookSecret string
	// Logger receives one line per webhook and per failed Stripe call;
	// the credits service's logger when nil.
	Logger *slog.Logger
}

// Purchases implements domain.Purchases: credit packages bought through
// Stripe. Start records a pending purchase (purchase.created and a
// purchase_orders row) after Stripe created its payment; Webhook decides on
// the purchase_orders row, locked FOR UPDATE, and grants at most once per
// purchase, in one transaction with the purchase's completion and the
// webhook's deduplication row. Safe for concurrent use.
type Purchases struct {
	cs       *Service
	provider PaymentProvider
	secret   string
	log      *slog.Logger
}

var _ domain.Purchases = (*Purchases)(nil)

// NewPurchases returns a Purchases.
func NewPurchases(cfg PurchasesConfig) (*Purchases, error) {
	if cfg.Credits == nil {
		return nil, errors.New("credits: purchases need the credits service")
	}
	if cfg.Logger == nil {
		cfg.Logger = cfg.Credits.cfg.Logger
	}
	return &Purchases{cs: cfg.Credits, provider: cfg.Provider, secret: cfg.WebhookSecret, log: cfg.Logger}, nil
}

// Kinds of purchase (purchase_orders.kind, PurchaseCreated.Kind).
const (
	kindPaymentIntent = "payment_intent"
	kindCheckout      = "checkout"
)

// Reasons of purchase.payment_rejected.
const (
	rejectUnknownPurchase  = "unknown_purchase"
	rejectUserMismatch     = "user_mismatch"
	rejectProviderMismatch = "provider_mismatch"
	rejectCurrencyMismatch = "currency_mismatch"
	rejectAmountMismatch   = "amount_mismatch"
)

// maxPurchasesListed bounds GET /credits/purchases: the newest this many.
const maxPurchasesListed = 500

// Packages implements domain.Purchases: the active packages of the
// catalogue read model, in catalogue order.
func (p *Purchases) Packages(ctx context.Context) ([]domain.Package, error) {
	rows, err := projections.ActivePackages(ctx, p.cs.pool)
	if err != nil {
		return nil, err
	}
	out := make([]domain.Package, 0, len(rows))
	for _, r := range rows {
		out = append(out, domain.Package{ID: r.ID, Name: r.Name, Credits: domain.Credits(r.Credits),
			PriceCents: r.PriceCents, Currency: r.Currency, SortOrder: r.SortOrder})
	}
	return out, nil
}

// Start implements domain.Purchases: it prices the package from its event
// stream (never a read model), has Stripe create the PaymentIntent (or the
// Checkout Session, with checkout) with the purchase id as idempotency key
// and metadata, then records purchase.created and the pending
// purchase_orders row in one transaction. No transaction is open during
// the call to Stripe. PAYMENTS_NOT_CONFIGURED without a provider;
// VALIDATION_FAILED without a package id; NOT_FOUND for an unknown or
// inactive package, and for an erased (or unknown) user; UNAVAILABLE when
// Stripe fails.
func (p *Purchases) Start(ctx context.Context, user uuid.UUID, packageID uuid.UUID, checkout bool, meta domain.RequestMeta) (domain.PurchaseStarted, domain.Written, error) {
	if p.provider == nil {
		return domain.PurchaseStarted{}, domain.Written{}, domain.Errorf(domain.CodePaymentsNotConfigured, "Payments are not configured.")
	}
	if packageID == uuid.Nil {
		return domain.PurchaseStarted{}, domain.Written{}, invalid("packageId", "is required")
	}
	pkg, err := p.loadPackage(ctx, packageID)
	if err != nil {
		return domain.PurchaseStarted{}, domain.Written{}, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return domain.PurchaseStarted{}, domain.Written{}, err
	}
	order := stripe.Order{PurchaseID: id, UserID: user, AmountCents: pkg.PriceCents, Currency: pkg.Currency, Name: pkg.Name, Credits: pkg.Credits}
	started := domain.PurchaseStarted{PurchaseID: id, AmountCents: pkg.PriceCents, Credits: domain.Credits(pkg.Credits)}
	created := domain.PurchaseCreated{PurchaseID: id, UserID: user, PackageID: packageID, Credits: domain.Credits(pkg.Credits),
		AmountCents: pkg.PriceCents, Currency: pkg.Currency, Provider: domain.PaymentProviderStripe}
	if checkout {
		s, err := p.provider.CreateCheckoutSession(ctx, order)
		if err != nil {
			p.log.Warn("stripe: checkout session not created", "purchase_id", id, "error", err.Error())
			return domain.PurchaseStarted{}, domain.Written{}, err
		}
		created.Kind, created.ProviderID, started.URL = kindCheckout, s.ID, s.URL
	} else {
		in, err := p.provider.CreatePaymentIntent(ctx, order)
		if err != nil {
			p.log.Warn("stripe: payment intent not created", "purchase_id", id, "error", err.Error())
			return domain.PurchaseStarted{}, domain.Written{}, err
		}
		created.Kind, created.ProviderID, started.ClientSecret = kindPaymentIntent, in.ID, in.ClientSecret
	}
	caller := domain.Caller{Kind: "user", UserID: user}
	cmd := eventstore.Command{
		Name:     "purchases.start",
		Actor:    pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: user},
		Metadata: domain.Metadata{Actor: caller.Principal(), RequestID: meta.RequestID},
	}
	r, err := p.cs.cfg.Store.Execute(ctx, cmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		// An account deleted while Stripe was creating the payment gets no
		// pending purchase: the share lock makes a concurrent erasure (which
		// fails the pending ones) wait for this one, or this one see it.
		erased, err := accountErased(ctx, tx, user)
		if err != nil {
			return domain.Receipt{}, err
		}
		if erased {
			return domain.Receipt{}, domain.Errorf(domain.CodeNotFound, "User not found.")
		}
		_, err = tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamPurchase, StreamID: id.String(),
			ExpectedVersion: 0, Events: []domain.Event{created}, Users: []uuid.UUID{user}})
		if err != nil {
			return domain.Receipt{}, err
		}
		tx.Queue(`INSERT INTO purchase_orders (purchase_id, user_id, package_id, credits, amount_cents, currency, kind, provider_id, status, version, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 1, $9)`,
			id, user, packageID, created.Credits, created.AmountCents, created.Currency, created.Kind, created.ProviderID, tx.Now())
		return domain.Receipt{Status: http.StatusCreated}, nil
	})
	if err != nil {
		return domain.PurchaseStarted{}, domain.Written{}, fmt.Errorf("record purchase: %w", err)
	}
	return started, domain.Written{Position: r.Position}, nil
}

// loadPackage folds the package's stream: package.created, then the
// fields each package.updated sets. NOT_FOUND unless it exists, is active
// and has a positive price and credit amount.
func (p *Purchases) loadPackage(ctx context.Context, id uuid.UUID) (domain.PackageCreated, error) {
	var (
		pkg   domain.PackageCreated
		found bool
	)
	_, err := p.cs.cfg.Store.Execute(ctx, eventstore.Command{Name: "purchases.package", Actor: system},
		func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
			evs, _, err := tx.Load(ctx, domain.StreamPackage, id.String(), 0)
			if err != nil {
				return domain.Receipt{}, err
			}
			pkg, found = foldPackage(evs)
			return domain.Receipt{}, nil
		})
	if err != nil {
		return pkg, fmt.Errorf("load package: %w", err)
	}
	if !found || !pkg.Active || pkg.PriceCents <= 0 || pkg.Credits <= 0 || pkg.Currency == "" {
		return pkg, domain.Errorf(domain.CodeNotFound, "Package not found.")
	}
	return pkg, nil
}

func foldPackage(evs []eventstore.Decoded) (domain.PackageCreated, bool) {
	var (
		pkg   domain.PackageCreated
		found bool
	)
	for _, ev := range evs {
		switch e := ev.Event.(type) {
		case *domain.PackageCreated:
			pkg, found = *e, true
		case *domain.PackageUpdated:
			if e.Name != nil {
				pkg.Name = *e.Name
			}
			if e.Credits != nil {
				pkg.Credits = *e.Credits
			}
			if e.PriceCents != nil {
				pkg.PriceCents = *e.PriceCents
			}
			if e.SortOrder != nil {
				pkg.SortOrder = *e.SortOrder
			}
			if e.Active != nil {
				pkg.Active = *e.Active
			}
		}
	}
	return pkg, found
}

// Purchase implements domain.Purchases: the user's purchase from the
// purchases read model once it reflects the user's writes (and
// minPosition). NOT_FOUND for an unknown purchase or another user's.
func (p *Purchases) Purchase(ctx context.Context, user, purchase uuid.UUID, minPosition string) (domain.PurchaseView, error) {
	if err := p.cs.cfg.Freshness.Await(ctx, "purchases", user, minPosition); err != nil {
		return domain.PurchaseView{}, err
	}
	v, found, err := projections.UserPurchase(ctx, p.cs.pool, user, purchase)
	if err != nil {
		return v, err
	}
	if !found {
		return v, domain.Errorf(domain.CodeNotFound, "Purchase not found.")
	}
	return v, nil
}

// List implements domain.Purchases: the user's newest purchases (at most
// 500), newest first, once the read model reflects the user's writes.
func (p *Purchases) List(ctx context.Context, user uuid.UUID, minPosition string) ([]domain.PurchaseView, error) {
	if err := p.cs.cfg.Freshness.Await(ctx, "purchases", user, minPosition); err != nil {
		return nil, err
	}
	return projections.UserPurchases(ctx, p.cs.pool, user, maxPurchasesListed, 0)
}

// Webhook implements domain.Purchases. After the signature (Stripe's
// HMAC, five minutes' tolerance), a handled event runs one transaction:
//
//   - its id goes into stripe_events; an id already there changes nothing;
//   - the purchase it names (metadata purchase_id, a Checkout Session's
//     client_reference_id, else its PaymentIntent or session id) is locked
//     FOR UPDATE; none: purchase.payment_rejected "unknown_purchase" in
//     stream payments/<event id>, with no user;
//   - a completed purchase changes no further, whichever event comes;
//   - a user, PaymentIntent or session, currency or amount that does not
//     match the purchase: purchase.payment_rejected with the reason, a
//     security event of the user, no grant;
//   - a success: credit.purchased (the credits into the user's paid
//     bucket, or into system:unclaimed when the account is erased or
//     gone) and purchase.completed, the purchase completed;
//   - a failure of a pending purchase: purchase.failed, the purchase
//     failed (a later success on the same payment still grants);
//   - a checkout completed without the money yet changes nothing.
//
// Event types it does not handle are accepted and ignored. The answer is
// nil (HTTP 200) for all of these; an error only for a bad signature
// (INVALID_SIGNATURE), a signed body that is no Stripe event
// (VALIDATION_FAILED), no webhook secret (PAYMENTS_NOT_CONFIGURED) or a
// failure to record, which Stripe retries.
func (p *Purchases) Webhook(ctx context.Context, payload []byte, signature string) error {
	if p.secret == "" {
		return domain.Errorf(domain.CodePaymentsNotConfigured, "Stripe webhooks are not configured.")
	}
	ev, err := stripe.VerifyWebhook(payload, signature, p.secret)
	if err != nil {
		return err
	}
	if ev.Payment == nil {
		p.log.Debug("stripe webhook ignored", "event_id", ev.ID, "type", ev.Type)
		return nil
	}
	// The purchase's user never changes, so an unlocked look serves to
	// queue behind the account's other commands in this process.
	var o order
	found := false
	err = pg.InTx(ctx, p.cs.pool, system, func(tx pgx.Tx) error {
		var err error
		o, found, err = findOrder(ctx, tx, ev.Payment, false)
		return err
	})
	if err != nil {
		return fmt.Errorf("find purchase: %w", err)
	}
	if found {
		unlock := p.cs.lock(o.user)
		defer unlock()
	}
	var res result
	cmd := eventstore.Command{
		Name:     "purchases.webhook",
		Actor:    system,
		Metadata: domain.Metadata{Actor: domain.SystemActor, CausationID: "stripe:" + ev.ID},
	}
	_, err = p.cs.cfg.Store.Execute(ctx, cmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		var err error
		res, err = p.apply(ctx, tx, ev)
		return domain.Receipt{Status: http.StatusOK}, err
	})
	if err != nil {
		return fmt.Errorf("apply stripe event: %w", err)
	}
	attrs := []any{"event_id", ev.ID, "type", ev.Type, "outcome", res.outcome}
	if res.purchase != uuid.Nil {
		attrs = append(attrs, "purchase_id", res.purchase)
	}
	if res.rejected {
		p.log.Warn("stripe webhook rejected", attrs...)
	} else {
		p.log.Info("stripe webhook", attrs...)
	}
	return nil
}

// result is what one webhook did, for the log.
type result struct {
	outcome  string
	purchase uuid.UUID
	rejected bool
}

// order is a purchase_orders row: the write-side state of a purchase.
type order struct {
	id, user, pkg uuid.UUID
	credits       domain.Credits
	amountCents   int64
	currency      string
	kind          string
	providerID    string
	paymentIntent string
	status        string
	version       int64
}

const orderColumns = `purchase_id, user_id, package_id, credits, amount_cents, currency, kind, provider_id, coalesce(payment_intent_id, ''), status, version`

// findOrder reads the purchase a webhook names, FOR UPDATE with lock: by
// the purchase id this service put in the metadata when there is one, else
// by the PaymentIntent or session id.
func findOrder(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, pay *stripe.Payment, lock bool) (order, bool, error) {
	suffix := ""
	if lock {
		suffix = " FOR UPDATE"
	}
	var row pgx.Row
	if id, err := uuid.Parse(pay.PurchaseID); err == nil {
		row = q.QueryRow(ctx, `SELECT `+orderColumns+` FROM purchase_orders WHERE purchase_id = $1`+suffix, id)
	} else {
		ids := []string{pay.ID}
		if pay.PaymentIntent != "" {
			ids = append(ids, pay.PaymentIntent)
		}
		// provider_id and payment_intent_id are unique: at most one row
		// per id; the order makes the pick (and the lock) deterministic.
		row = q.QueryRow(ctx, `SELECT `+orderColumns+` FROM purchase_orders
WHERE provider_id = ANY($1) OR payment_intent_id = ANY($1) ORDER BY purchase_id LIMIT 1`+suffix, ids)
	}
	var o order
	err := row.Scan(&o.id, &o.user, &o.pkg, &o.credits, &o.amountCents, &o.currency, &o.kind, &o.providerID, &o.paymentIntent, &o.status, &o.version)
	if errors.Is(err, pgx.ErrNoRows) {
		return o, false, nil
	}
	if err != nil {
		return o, false, fmt.Errorf("read purchase order: %w", err)
	}
	return o, true, nil
}

// mismatch returns why pay cannot be the payment of o, or "".
func (o order) mismatch(pay *stripe.Payment) string {
	if pay.UserID != "" {
		if u, err := uuid.Parse(pay.UserID); err != nil || u != o.user {
			return rejectUserMismatch
		}
	}
	switch pay.Object {
	case stripe.ObjectPaymentIntent:
		if o.kind == kindPaymentIntent && pay.ID != o.providerID ||
			o.kind == kindCheckout && o.paymentIntent != "" && pay.ID != o.paymentIntent {
			return rejectProviderMismatch
		}
	case stripe.ObjectCheckoutSession:
		if o.kind != kindCheckout || pay.ID != o.providerID ||
			o.paymentIntent != "" && pay.PaymentIntent != "" && pay.PaymentIntent != o.paymentIntent {
			return rejectProviderMismatch
		}
	default:
		return rejectProviderMismatch
	}
	if pay.Currency != o.currency {
		return rejectCurrencyMismatch
	}
	if pay.AmountCents != o.amountCents {
		return rejectAmountMismatch
	}
	return ""
}

// apply decides on one verified, handled Stripe event inside the webhook's
// transaction; see Webhook.
func (p *Purchases) apply(ctx context.Context, tx *eventstore.Tx, ev stripe.Event) (result, error) {
	tag, err := tx.Exec(ctx, `INSERT INTO stripe_events (event_id, type) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING`, ev.ID, ev.Type)
	if err != nil {
		return result{}, fmt.Errorf("record stripe event: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return result{outcome: "duplicate event"}, nil
	}
	pay := ev.Payment
	o, found, err := findOrder(ctx, tx, pay, true)
	if err != nil {
		return result{}, err
	}
	if !found {
		rej := domain.PurchasePaymentRejected{StripeEventID: ev.ID, Reason: rejectUnknownPurchase, AmountCents: pay.AmountCents, Currency: pay.Currency}
		_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamPayments, StreamID: ev.ID,
			ExpectedVersion: 0, Events: []domain.Event{rej}})
		return result{outcome: rejectUnknownPurchase, rejected: true}, err
	}
	res := result{purchase: o.id}
	if o.status == domain.PurchaseStatusCompleted {
		res.outcome = "purchase already completed"
		return res, nil
	}
	if reason := o.mismatch(pay); reason != "" {
		rej := domain.PurchasePaymentRejected{PurchaseID: o.id, UserID: o.user, StripeEventID: ev.ID, Reason: reason,
			AmountCents: pay.AmountCents, Currency: pay.Currency}
		// An erased account has nobody left to show a security event to,
		// and its read-model rows must stay deleted: the rejection names
		// no user (the purchase's stream still does).
		erased, err := accountErased(ctx, tx, o.user)
		if err != nil {
			return res, err
		}
		if erased {
			rej.UserID = uuid.Nil
		}
		res.outcome, res.rejected = reason, true
		return res, appendPurchase(ctx, tx, o, rej, "")
	}
	switch pay.Outcome {
	case stripe.Succeeded:
		res.outcome = "granted"
		unclaimed, err := p.grant(ctx, tx, o, ev.ID, pay)
		if unclaimed {
			res.outcome = "granted to system:unclaimed"
		}
		return res, err
	case stripe.Failed:
		if o.status != domain.PurchaseStatusPending {
			res.outcome = "purchase already failed"
			return res, nil
		}
		res.outcome = "failed"
		failed := domain.PurchaseFailed{PurchaseID: o.id, UserID: o.user, StripeEventID: ev.ID, Reason: pay.Reason}
		return res, appendPurchase(ctx, tx, o, failed, domain.PurchaseStatusFailed)
	}
	res.outcome = "payment pending"
	return res, nil
}

// appendPurchase appends e to the purchase's stream at the version the
// locked row holds and moves the row's version (and status, when given).
func appendPurchase(ctx context.Context, tx *eventstore.Tx, o order, e domain.Event, status string) error {
	_, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamPurchase, StreamID: o.id.String(),
		ExpectedVersion: o.version, Events: []domain.Event{e}, Users: []uuid.UUID{o.user}})
	if err != nil {
		return err
	}
	tx.Queue(`UPDATE purchase_orders SET version = $2, status = coalesce(nullif($3, ''), status) WHERE purchase_id = $1`,
		o.id, o.version+1, status)
	return nil
}

// grant records the purchase's credits and its completion in one append:
// credit.purchased on the user's account stream (its row locked and
// rewritten like any credit command's) and purchase.completed on the
// purchase's. An erased or unknown account's credits go to
// system:unclaimed; its row, if it has one, still moves to the new stream
// head. It reports whether the credits went unclaimed.
func (p *Purchases) grant(ctx context.Context, tx *eventstore.Tx, o order, eventID string, pay *stripe.Payment) (bool, error) {
	erased, err := accountErased(ctx, tx, o.user)
	if err != nil {
		return false, err
	}
	var (
		acct   domain.Account
		head   []byte
		hasRow = true
	)
	if erased {
		acct, head, hasRow, err = lockExistingAccount(ctx, tx, o.user)
	} else {
		acct, head, err = lockAccount(ctx, tx, o.user)
	}
	if err != nil {
		return erased, err
	}
	txID, err := uuid.NewV7()
	if err != nil {
		return erased, err
	}
	credit := domain.NewCreditPurchased(txID, o.user, o.id, o.credits, erased)
	done := domain.PurchaseCompleted{PurchaseID: o.id, UserID: o.user, StripeEventID: eventID, Unclaimed: erased}
	var users []uuid.UUID
	if !erased {
		users = []uuid.UUID{o.user}
	}
	account := eventstore.StreamAppend{StreamType: domain.StreamCreditAccount, StreamID: o.user.String(),
		ExpectedVersion: acct.Version, PrevHash: head, Events: []domain.Event{credit}, Users: users}
	if !hasRow {
		account.ExpectedVersion, account.PrevHash = eventstore.AnyVersion, nil
	}
	recs, err := tx.Append(ctx, account, eventstore.StreamAppend{StreamType: domain.StreamPurchase, StreamID: o.id.String(),
		ExpectedVersion: o.version, Events: []domain.Event{done}, Users: users})
	if err != nil {
		return erased, err
	}
	if hasRow {
		acct.Apply(credit)
		acct.Version++
		saveAccount(tx, acct, recs[0].Hash)
	}
	// A checkout's PaymentIntent becomes known with its first success.
	pi := ""
	if o.kind == kindCheckout {
		pi = pay.PaymentIntent
		if pay.Object == stripe.ObjectPaymentIntent {
			pi = pay.ID
		}
	}
	tx.Queue(`UPDATE purchase_orders SET status = 'completed', completed_at = $2, version = $3,
    payment_intent_id = coalesce(payment_intent_id, nullif($4, '')) WHERE purchase_id = $1`, o.id, tx.Now(), o.version+1, pi)
	return erased, nil
}

// accountErased reports whether user's account is gone: erased, or no
// such user. The row is share-locked so an erasure cannot slip in between.
func accountErased(ctx context.Context, tx *eventstore.Tx, user uuid.UUID) (bool, error) {
	var erased bool
	err := tx.QueryRow(ctx, `SELECT erased FROM auth_users WHERE user_id = $1 FOR SHARE`, user).Scan(&erased)
	if errors.Is(err, pgx.ErrNoRows) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read user: %w", err)
	}
	return erased, nil
}

// lockExistingAccount is lockAccount for an account that must not be
// opened (an erased one): false when it has no row.
func lockExistingAccount(ctx context.Context, tx *eventstore.Tx, user uuid.UUID) (domain.Account, []byte, bool, error) {
	a := domain.Account{UserID: user}
	var head []byte
	err := tx.QueryRow(ctx, `SELECT version, free, paid, held, total_earned, total_spent, created_at, last_daily_grant, last_hash
FROM credit_accounts WHERE user_id = $1 FOR UPDATE`, user).Scan(&a.Version, &a.Free, &a.Paid, &a.Held, &a.TotalEarned, &a.TotalSpent, &a.CreatedAt, &a.LastDailyGrant, &head)
	if errors.Is(err, pgx.ErrNoRows) {
		return a, nil, false, nil
	}
	if err != nil {
		return a, nil, false, fmt.Errorf("lock account: %w", err)
	}
	return a, head, true, nil
}
