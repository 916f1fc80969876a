-- +goose Up

-- Write-side state of users: what login, lockout and role checks decide
-- on, kept in the same transaction as the user's events so decisions never
-- replay a stream or read a projection.
CREATE TABLE auth_users (
    user_id    uuid        PRIMARY KEY,
    email_hmac bytea       NOT NULL UNIQUE,
    role       text        NOT NULL CHECK (role IN ('user', 'admin')),
    version    bigint      NOT NULL,
    created_at timestamptz NOT NULL,
    erased     boolean     NOT NULL DEFAULT false
);

-- Failed-login accounting per blind email index, known or unknown: a
-- window of 15 minutes, at most 5 password verifications in it, and the
-- lock that 5 failures set.
CREATE TABLE login_attempts (
    email_hmac      bytea       PRIMARY KEY,
    window_start    timestamptz NOT NULL,
    verifications   integer     NOT NULL DEFAULT 0,
    failures        integer     NOT NULL DEFAULT 0,
    locked_until    timestamptz
);

-- Sessions' write-side state and credential material: the per-session
-- refresh key, the rotation counter, and the access token of the current
-- rotation (returned again to a concurrent refresh within the grace
-- window). Never in events.
CREATE TABLE auth_sessions (
    session_id          uuid        PRIMARY KEY,
    user_id             uuid        NOT NULL,
    version             bigint      NOT NULL,
    refresh_key         bytea       NOT NULL,
    counter             bigint      NOT NULL,
    rotated_at          timestamptz NOT NULL,
    current_access      text        NOT NULL,
    device_id           text,
    status              text        NOT NULL CHECK (status IN ('active', 'revoked')),
    revoked_reason      text,
    expires_at          timestamptz NOT NULL,
    created_at          timestamptz NOT NULL
);
CREATE INDEX auth_sessions_user_idx ON auth_sessions (user_id) WHERE status = 'active';

-- The signup bonus is granted once per email address ever: the claim
-- survives erasure, so deleting and re-registering does not farm it.
CREATE TABLE signup_bonus_claims (
    email_hmac bytea       PRIMARY KEY,
    claimed_at timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- Token signing keys, private halves wrapped by DATA_KEK. A key is
-- published (JWKS) from creation and signs from not_before; it stays
-- published until retire_after.
CREATE TABLE signing_keys (
    kid             text        PRIMARY KEY,
    alg             text        NOT NULL,
    public_pem      text        NOT NULL,
    private_wrapped bytea       NOT NULL,
    not_before      timestamptz NOT NULL,
    retire_after    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT statement_timestamp()
);

GRANT SELECT, INSERT, UPDATE, DELETE ON auth_users, login_attempts, auth_sessions, signup_bonus_claims, signing_keys TO mana_app;

ALTER TABLE auth_users ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth_users FORCE ROW LEVEL SECURITY;
CREATE POLICY auth_users_access ON auth_users FOR ALL TO mana_app
    USING (mana_scope() IN ('system', 'admin') OR user_id = mana_user_id())
    WITH CHECK (mana_scope() IN ('system', 'admin') OR user_id = mana_user_id());

ALTER TABLE auth_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth_sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY auth_sessions_access ON auth_sessions FOR ALL TO mana_app
    USING (mana_scope() IN ('system', 'admin') OR user_id = mana_user_id())
    WITH CHECK (mana_scope() IN ('system', 'admin') OR user_id = mana_user_id());

-- Read model "sessions": a user's sessions for GET /auth/sessions.
CREATE TABLE sessions (
    id               uuid        PRIMARY KEY,
    user_id          uuid        NOT NULL,
    device_id        text,
    device_name      text,
    ip_address       text,
    user_agent       text,
    status           text        NOT NULL,
    revoked_reason   text,
    created_at       timestamptz NOT NULL,
    last_activity_at timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL
);
CREATE INDEX sessions_user_idx ON sessions (user_id, created_at DESC);
GRANT SELECT ON sessions TO mana_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON sessions TO mana_projector;
ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY sessions_read ON sessions FOR SELECT TO mana_app USING (mana_can_see(user_id));
CREATE POLICY sessions_project ON sessions FOR ALL TO mana_projector USING (true) WITH CHECK (true);

-- Read model "security_events": a user's security log.
CREATE TABLE security_events (
    id         uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL,
    type       text        NOT NULL,
    detail     text,
    ip_address text,
    created_at timestamptz NOT NULL
);
CREATE INDEX security_events_user_idx ON security_events (user_id, created_at DESC, id);
GRANT SELECT ON security_events TO mana_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON security_events TO mana_projector;
ALTER TABLE security_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE security_events FORCE ROW LEVEL SECURITY;
CREATE POLICY security_events_read ON security_events FOR SELECT TO mana_app USING (mana_can_see(user_id));
CREATE POLICY security_events_project ON security_events FOR ALL TO mana_projector USING (true) WITH CHECK (true);
