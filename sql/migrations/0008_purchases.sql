-- +goose Up

-- Write-side state of purchases: what the webhook decides on, locked FOR
-- UPDATE by the command that grants (or fails) a purchase, so whichever
-- Stripe event arrives first grants exactly once.
CREATE TABLE purchase_orders (
    purchase_id  uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL,
    package_id   uuid        NOT NULL,
    credits      bigint      NOT NULL CHECK (credits > 0),
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    currency     text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('payment_intent', 'checkout')),
    provider_id  text        NOT NULL UNIQUE,
    -- the PaymentIntent a checkout session produced, once known
    payment_intent_id text   UNIQUE,
    status       text        NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
    version      bigint      NOT NULL,
    created_at   timestamptz NOT NULL,
    completed_at timestamptz
);
CREATE INDEX purchase_orders_user_idx ON purchase_orders (user_id);

-- Stripe event ids already handled: deduplication on top of the
-- one-grant-per-purchase rule.
CREATE TABLE stripe_events (
    event_id    text        PRIMARY KEY,
    type        text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT statement_timestamp()
);

GRANT SELECT, INSERT, UPDATE ON purchase_orders, stripe_events TO mana_app;
ALTER TABLE purchase_orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE purchase_orders FORCE ROW LEVEL SECURITY;
CREATE POLICY purchase_orders_access ON purchase_orders FOR ALL TO mana_app
    USING (mana_scope() IN ('system', 'admin') OR user_id = mana_user_id())
    WITH CHECK (mana_scope() IN ('system', 'admin') OR user_id = mana_user_id());

-- Read model "purchases".
CREATE TABLE purchases (
    id           uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL,
    package_id   uuid        NOT NULL,
    credits      bigint      NOT NULL,
    amount_cents bigint      NOT NULL,
    currency     text        NOT NULL,
    status       text        NOT NULL,
    created_at   timestamptz NOT NULL,
    completed_at timestamptz
);
CREATE INDEX purchases_user_idx ON purchases (user_id, created_at DESC);
GRANT SELECT ON purchases TO mana_app, mana_auditor;
GRANT SELECT, INSERT, UPDATE, DELETE ON purchases TO mana_projector;
ALTER TABLE purchases ENABLE ROW LEVEL SECURITY;
ALTER TABLE purchases FORCE ROW LEVEL SECURITY;
CREATE POLICY purchases_read ON purchases FOR SELECT TO mana_app, mana_auditor USING (mana_can_see(user_id));
CREATE POLICY purchases_project ON purchases FOR ALL TO mana_projector USING (true) WITH CHECK (true);
