-- +goose Up

-- Read model "packages": the credit package catalogue, built by the
-- projection of the same name from package.* events.
CREATE TABLE packages (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    credits     bigint      NOT NULL,
    price_cents bigint      NOT NULL,
    currency    text        NOT NULL,
    sort_order  integer     NOT NULL,
    active      boolean     NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX packages_sort_idx ON packages (sort_order, id) WHERE active;
GRANT SELECT ON packages TO mana_app, mana_auditor;
GRANT SELECT, INSERT, UPDATE, DELETE ON packages TO mana_projector;

-- Read model "users": one row per user for admin search and profiles,
-- built by the projection of the same name. It holds personal data in the
-- clear, so its rows are deleted on user.erased.
CREATE TABLE users (
    id             uuid        PRIMARY KEY,
    email          text        NOT NULL,
    name           text        NOT NULL DEFAULT '',
    role           text        NOT NULL,
    email_verified boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
GRANT SELECT ON users TO mana_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON users TO mana_projector;
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY users_read ON users FOR SELECT TO mana_app USING (mana_can_see(id));
CREATE POLICY users_project ON users FOR ALL TO mana_projector USING (true) WITH CHECK (true);
