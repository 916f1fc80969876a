-- +goose Up

-- Write-side state of credit accounts: the buckets, totals and stream
-- version every credit decision reads FOR UPDATE and rewrites in the append
-- transaction. Only user balances live here; system:* and app:* balances
-- are derived by views and projections, never updated per command (they
-- would be hot rows).
CREATE TABLE credit_accounts (
    user_id          uuid        PRIMARY KEY,
    version          bigint      NOT NULL,
    free             bigint      NOT NULL CHECK (free >= 0),
    paid             bigint      NOT NULL CHECK (paid >= 0),
    held             bigint      NOT NULL CHECK (held >= 0),
    total_earned     bigint      NOT NULL,
    total_spent      bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    last_daily_grant text        NOT NULL DEFAULT '',
    CHECK (free + paid + held = total_earned - total_spent)
);

-- Holds' write-side state.
CREATE TABLE credit_holds (
    hold_id    uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL,
    app_id     text        NOT NULL,
    -- who placed it: "user:<id>" or "app:<appId>"; only that app (or, for
    -- a user's hold, that user) may capture or release it.
    placed_by  text        NOT NULL,
    amount     bigint      NOT NULL CHECK (amount > 0),
    free_part  bigint      NOT NULL,
    paid_part  bigint      NOT NULL,
    status     text        NOT NULL CHECK (status IN ('active', 'captured', 'released', 'expired')),
    captured   bigint      NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX credit_holds_expiry_idx ON credit_holds (expires_at) WHERE status = 'active';
CREATE INDEX credit_holds_user_idx ON credit_holds (user_id);

-- Spends and captures that may be refunded, with the buckets they came from.
CREATE TABLE credit_charges (
    transaction_id uuid        PRIMARY KEY,
    user_id        uuid        NOT NULL,
    app_id         text        NOT NULL,
    amount         bigint      NOT NULL,
    free_part      bigint      NOT NULL,
    paid_part      bigint      NOT NULL,
    refunded       bigint      NOT NULL DEFAULT 0 CHECK (refunded <= amount),
    created_at     timestamptz NOT NULL
);

-- Per-app service keys (hashed) and the optional per-user daily cap.
CREATE TABLE service_keys (
    key_id                      text        PRIMARY KEY,
    app_id                      text        NOT NULL,
    key_hash                    bytea       NOT NULL,
    max_spend_per_user_per_day  bigint,
    created_at                  timestamptz NOT NULL DEFAULT statement_timestamp(),
    revoked_at                  timestamptz
);
CREATE TABLE app_daily_spend (
    app_id  text   NOT NULL,
    user_id uuid   NOT NULL,
    day     date   NOT NULL,
    amount  bigint NOT NULL,
    PRIMARY KEY (app_id, user_id, day)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON credit_accounts, credit_holds, credit_charges, service_keys, app_daily_spend TO mana_app;
GRANT SELECT ON credit_accounts, credit_holds, credit_charges TO mana_auditor;

ALTER TABLE credit_accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE credit_accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY credit_accounts_access ON credit_accounts FOR ALL TO mana_app
    USING (mana_scope() IN ('system', 'admin', 'app') OR user_id = mana_user_id())
    WITH CHECK (mana_scope() IN ('system', 'admin', 'app') OR user_id = mana_user_id());
CREATE POLICY credit_accounts_audit ON credit_accounts FOR SELECT TO mana_auditor USING (true);

ALTER TABLE credit_holds ENABLE ROW LEVEL SECURITY;
ALTER TABLE credit_holds FORCE ROW LEVEL SECURITY;
CREATE POLICY credit_holds_access ON credit_holds FOR ALL TO mana_app
    USING (mana_scope() IN ('system', 'admin', 'app') OR user_id = mana_user_id())
    WITH CHECK (mana_scope() IN ('system', 'admin', 'app') OR user_id = mana_user_id());
CREATE POLICY credit_holds_audit ON credit_holds FOR SELECT TO mana_auditor USING (true);

ALTER TABLE credit_charges ENABLE ROW LEVEL SECURITY;
ALTER TABLE credit_charges FORCE ROW LEVEL SECURITY;
CREATE POLICY credit_charges_access ON credit_charges FOR ALL TO mana_app
    USING (mana_scope() IN ('system', 'admin', 'app') OR user_id = mana_user_id())
    WITH CHECK (mana_scope() IN ('system', 'admin', 'app') OR user_id = mana_user_id());
CREATE POLICY credit_charges_audit ON credit_charges FOR SELECT TO mana_auditor USING (true);

-- Read model "balances".
CREATE TABLE balances (
    user_id      uuid        PRIMARY KEY,
    free         bigint      NOT NULL,
    paid         bigint      NOT NULL,
    held         bigint      NOT NULL,
    total_earned bigint      NOT NULL,
    total_spent  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL
);
-- Read model "transactions": every credit movement of a user, newest first.
CREATE TABLE transactions (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL,
    type        text        NOT NULL,
    amount      bigint      NOT NULL,
    app_id      text,
    description text,
    metadata    jsonb,
    hold_id     uuid,
    created_at  timestamptz NOT NULL,
    seq_tx      xid8        NOT NULL,
    seq_pos     bigint      NOT NULL
);
CREATE INDEX transactions_user_idx ON transactions (user_id, seq_tx DESC, seq_pos DESC);
-- Read model "usage_stats": credits spent per user × app × UTC day.
CREATE TABLE usage_stats (
    user_id uuid   NOT NULL,
    app_id  text   NOT NULL,
    day     date   NOT NULL,
    credits bigint NOT NULL,
    count   bigint NOT NULL,
    PRIMARY KEY (user_id, app_id, day)
);

GRANT SELECT ON balances, transactions, usage_stats TO mana_app, mana_auditor;
GRANT SELECT, INSERT, UPDATE, DELETE ON balances, transactions, usage_stats TO mana_projector;
ALTER TABLE balances ENABLE ROW LEVEL SECURITY;
ALTER TABLE balances FORCE ROW LEVEL SECURITY;
CREATE POLICY balances_read ON balances FOR SELECT TO mana_app, mana_auditor USING (mana_can_see(user_id));
CREATE POLICY balances_project ON balances FOR ALL TO mana_projector USING (true) WITH CHECK (true);
ALTER TABLE transactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE transactions FORCE ROW LEVEL SECURITY;
CREATE POLICY transactions_read ON transactions FOR SELECT TO mana_app, mana_auditor USING (mana_can_see(user_id));
CREATE POLICY transactions_project ON transactions FOR ALL TO mana_projector USING (true) WITH CHECK (true);
ALTER TABLE usage_stats ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_stats FORCE ROW LEVEL SECURITY;
CREATE POLICY usage_stats_read ON usage_stats FOR SELECT TO mana_app, mana_auditor USING (mana_can_see(user_id));
CREATE POLICY usage_stats_project ON usage_stats FOR ALL TO mana_projector USING (true) WITH CHECK (true);
