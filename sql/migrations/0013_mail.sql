-- +goose Up

-- Account features (SPEC §5) and the mail they send (docs/mail.md).

-- Write-side state the decisions read: whether the address is verified
-- (REQUIRE_EMAIL_VERIFICATION refuses logins until it is), and the version
-- of the user's stream whose event holds the current display name
-- (user.registered at version 1, or the latest user.profile_updated), so
-- login and refresh read the name with one index probe.
ALTER TABLE auth_users ADD COLUMN email_verified boolean NOT NULL DEFAULT false;
ALTER TABLE auth_users ADD COLUMN name_version bigint NOT NULL DEFAULT 1;

-- One-time tokens of email verification and password reset: 32 random
-- bytes mailed to the user; only their keyed hash (HMAC-SHA256 under a key
-- derived from DATA_KEK, keyring.MAC with purpose "email-token:<purpose>")
-- is stored. Single use (used_at), valid until expires_at. Credential
-- material: never in events.
CREATE TABLE email_tokens (
    token_hash bytea       PRIMARY KEY,
    user_id    uuid        NOT NULL,
    purpose    text        NOT NULL CHECK (purpose IN ('verify', 'reset')),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX email_tokens_user_idx ON email_tokens (user_id, purpose) WHERE used_at IS NULL;

-- Mails waiting for the mail worker. The whole message data (recipient,
-- raw token, device details) is sealed with DATA_KEK under the label
-- "mail_outbox:<id>"; the row is deleted once the mail is sent, given up
-- after too many attempts, or when the user is erased.
CREATE TABLE mail_outbox (
    id              uuid        PRIMARY KEY,
    user_id         uuid        NOT NULL,
    kind            text        NOT NULL CHECK (kind ~ '^[a-z][a-z_]*$'),
    sealed          bytea       NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    last_error      text
);
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at);
CREATE INDEX mail_outbox_user_idx ON mail_outbox (user_id);

-- Devices a user has logged in from, as keyed hashes of the device id (or
-- the user agent when no device id was given), for the new-device notice.
CREATE TABLE mail_known_devices (
    user_id     uuid        NOT NULL,
    device_hash bytea       NOT NULL,
    first_seen  timestamptz NOT NULL,
    PRIMARY KEY (user_id, device_hash)
);

-- The mail worker's place in the event feed (it reacts to session.started,
-- session.revoked and user.erased). It starts at the head of the feed as
-- it is when this migration runs, so history is never mailed about.
CREATE TABLE mail_cursor (
    name     text   PRIMARY KEY,
    tx_id    xid8   NOT NULL,
    position bigint NOT NULL
);
INSERT INTO mail_cursor (name, tx_id, position)
SELECT 'mail', coalesce(h.tx_id, '0'::xid8), coalesce(h.position, 0)
FROM (SELECT NULL) AS one
LEFT JOIN LATERAL (SELECT tx_id, position FROM events ORDER BY tx_id DESC, position DESC LIMIT 1) AS h ON true;

GRANT SELECT, INSERT, UPDATE, DELETE ON email_tokens, mail_outbox, mail_known_devices, mail_cursor TO mana_app;

-- Like password_credentials: only system scope (the auth decisions and the
-- mail worker) and the user themself; admins, apps and the auditor see
-- nothing.
ALTER TABLE email_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE email_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY email_tokens_own ON email_tokens FOR ALL TO mana_app
    USING (mana_scope() = 'system' OR user_id = mana_user_id())
    WITH CHECK (mana_scope() = 'system' OR user_id = mana_user_id());

ALTER TABLE mail_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE mail_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY mail_outbox_own ON mail_outbox FOR ALL TO mana_app
    USING (mana_scope() = 'system' OR user_id = mana_user_id())
    WITH CHECK (mana_scope() = 'system' OR user_id = mana_user_id());

ALTER TABLE mail_known_devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE mail_known_devices FORCE ROW LEVEL SECURITY;
CREATE POLICY mail_known_devices_own ON mail_known_devices FOR ALL TO mana_app
    USING (mana_scope() = 'system' OR user_id = mana_user_id())
    WITH CHECK (mana_scope() = 'system' OR user_id = mana_user_id());
