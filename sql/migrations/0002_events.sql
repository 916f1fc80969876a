-- +goose Up

-- The event log: the single source of truth. position grows at insert time
-- but is not the delivery order; the feed is ordered by (tx_id, position) and
-- read only below the cluster's snapshot horizon (see docs/architecture.md).
CREATE TABLE events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id       uuid        NOT NULL UNIQUE,
    stream_type    text        NOT NULL CHECK (stream_type ~ '^[a-z][a-z_]*$'),
    stream_id      text        NOT NULL CHECK (length(stream_id) BETWEEN 1 AND 200),
    stream_version bigint      NOT NULL CHECK (stream_version > 0),
    event_type     text        NOT NULL CHECK (event_type ~ '^[a-z][a-z_]*\.[a-z][a-z_]*$'),
    schema_version integer     NOT NULL CHECK (schema_version > 0),
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT statement_timestamp(),
    metadata       jsonb       NOT NULL,
    payload        jsonb       NOT NULL,
    prev_hash      bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash           bytea       NOT NULL CHECK (length(hash) = 32),
    -- The optimistic-concurrency guard: two writers deciding on the same
    -- stream version cannot both commit.
    CONSTRAINT events_stream_version_key UNIQUE (stream_type, stream_id, stream_version)
);

-- The feed index: readers page with a row comparison on (tx_id, position).
CREATE INDEX events_feed_idx ON events (tx_id, position);
CREATE INDEX events_type_idx ON events (event_type, tx_id, position);

-- Append-only for every role, superuser and owner included.
-- +goose StatementBegin
CREATE FUNCTION events_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
-- +goose StatementEnd

CREATE TRIGGER events_no_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

REVOKE ALL ON events FROM PUBLIC;
GRANT SELECT, INSERT ON events TO mana_app;
GRANT SELECT ON events TO mana_projector, mana_auditor;

-- Idempotency records. A row is inserted in the append transaction before the
-- decision runs: a concurrent duplicate blocks on the primary key until the
-- first transaction ends, then either replays its committed result or, if it
-- rolled back, becomes the new attempt. Only successes are ever committed.
CREATE TABLE idempotency_keys (
    subject       text        NOT NULL,
    principal     text        NOT NULL,
    operation     text        NOT NULL,
    key           text        NOT NULL CHECK (key ~ '^[A-Za-z0-9_.:-]{1,255}$'),
    user_id       uuid,
    request_hash  bytea       NOT NULL CHECK (length(request_hash) = 32),
    status        integer     NOT NULL DEFAULT 0,
    response      bytea,
    position      text,
    created_at    timestamptz NOT NULL DEFAULT statement_timestamp(),
    expires_at    timestamptz,
    PRIMARY KEY (subject, principal, operation, key)
);
CREATE INDEX idempotency_keys_user_idx ON idempotency_keys (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX idempotency_keys_expiry_idx ON idempotency_keys (expires_at) WHERE expires_at IS NOT NULL;

-- Unique claims, written in the append transaction. Emails are claimed by a
-- blind index: HMAC-SHA256(EMAIL_INDEX_KEY, lower(trim(email))).
CREATE TABLE email_claims (
    email_hmac bytea       PRIMARY KEY CHECK (length(email_hmac) = 32),
    user_id    uuid        NOT NULL UNIQUE,
    claimed_at timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- Per-subject data keys for crypto-shredding: AES-256-GCM keys wrapped by
-- DATA_KEK. Deleting a row makes that subject's PII in events unreadable.
CREATE TABLE data_keys (
    subject_id  uuid        PRIMARY KEY,
    wrapped_key bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- Credential material lives here, never in events: mutable, written in the
-- same transaction as the event that records the fact.
CREATE TABLE password_credentials (
    user_id       uuid        PRIMARY KEY,
    password_hash text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- The feed cursor of the latest append that touched each user, recorded in
-- the append transaction, for read-your-writes.
CREATE TABLE user_positions (
    user_id  uuid   PRIMARY KEY,
    tx_id    xid8   NOT NULL,
    position bigint NOT NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys, email_claims, data_keys,
    password_credentials, user_positions TO mana_app;
GRANT SELECT ON user_positions TO mana_projector;

-- Row-level security on the tables read per user. FORCE makes it apply to
-- the owner too; the service's roles are never owners nor superusers.
ALTER TABLE user_positions ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_positions FORCE ROW LEVEL SECURITY;
CREATE POLICY user_positions_read ON user_positions FOR SELECT USING (mana_can_see(user_id));
CREATE POLICY user_positions_write ON user_positions FOR ALL TO mana_app
    USING (mana_scope() IN ('system', 'admin', 'app') OR user_id = mana_user_id())
    WITH CHECK (mana_scope() IN ('system', 'admin', 'app') OR user_id = mana_user_id());

ALTER TABLE password_credentials ENABLE ROW LEVEL SECURITY;
ALTER TABLE password_credentials FORCE ROW LEVEL SECURITY;
CREATE POLICY password_credentials_own ON password_credentials FOR ALL TO mana_app
    USING (mana_scope() = 'system' OR user_id = mana_user_id())
    WITH CHECK (mana_scope() = 'system' OR user_id = mana_user_id());

ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY idempotency_keys_access ON idempotency_keys FOR ALL TO mana_app
    USING (mana_scope() IN ('system', 'admin', 'app') OR user_id = mana_user_id())
    WITH CHECK (mana_scope() IN ('system', 'admin', 'app') OR user_id = mana_user_id());
