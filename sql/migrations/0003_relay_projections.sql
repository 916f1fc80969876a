-- +goose Up

-- Leases make the relay, each projection and each background worker a
-- single writer across nodes. A lease is renewed in short transactions;
-- an expired lease may be taken by anyone. No session advisory locks, so
-- this works through PgBouncer in transaction mode.
CREATE TABLE leases (
    name        text        PRIMARY KEY,
    holder      text        NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz NOT NULL
);

-- The relay's checkpoint: the feed cursor of the last event JetStream
-- acknowledged.
CREATE TABLE relay_checkpoints (
    name       text        PRIMARY KEY,
    tx_id      xid8        NOT NULL,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Each projection's checkpoint: the cursor of the last event applied. It is
-- advanced in the same transaction as the projection's writes, with a
-- compare-and-set on the previous value, so no event is applied twice.
CREATE TABLE projection_checkpoints (
    name       text        PRIMARY KEY,
    tx_id      xid8        NOT NULL DEFAULT '0',
    position   bigint      NOT NULL DEFAULT 0,
    -- occurred_at of the last applied event, for lag in seconds.
    applied_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Poison events: an event a projection failed to apply. The projection
-- halts on it (retrying with backoff) until it applies or an operator runs
-- `mana projections skip NAME CURSOR`, which is recorded here.
CREATE TABLE projection_failures (
    name        text        NOT NULL,
    tx_id       xid8        NOT NULL,
    position    bigint      NOT NULL,
    event_id    uuid        NOT NULL,
    error       text        NOT NULL,
    attempts    integer     NOT NULL DEFAULT 1,
    first_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    resolved_at timestamptz,
    -- 'applied' when a retry succeeded, 'skipped' by an operator.
    resolution  text CHECK (resolution IN ('applied', 'skipped')),
    skipped_by  text,
    PRIMARY KEY (name, tx_id, position)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON leases, relay_checkpoints TO mana_app, mana_projector;
GRANT SELECT, INSERT, UPDATE ON projection_checkpoints, projection_failures TO mana_projector;
GRANT SELECT ON projection_checkpoints, projection_failures TO mana_app, mana_auditor;
-- Projectors decode personal fields for per-user read models.
GRANT SELECT ON data_keys TO mana_projector;
