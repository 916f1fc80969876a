-- +goose Up

-- TOTP two-factor authentication (SPEC §5). Credential material only,
-- never in events: the facts are user.two_factor_enabled,
-- user.two_factor_disabled and user.recovery_code_used, appended in the
-- same transactions that write these rows.

-- One TOTP secret per user, wrapped by DATA_KEK under the label
-- "totp:<user id>" (it cannot be moved to another row). enabled_at is NULL
-- while an enrolment waits for its confirming code. last_used_step is the
-- RFC 6238 time step (unix seconds / 30) of the last accepted code: a code
-- of that step or an earlier one is refused, so no code works twice. The
-- row is locked FOR UPDATE by every check, so two requests with the same
-- code cannot both pass.
CREATE TABLE two_factor (
    user_id        uuid        PRIMARY KEY,
    secret_wrapped bytea       NOT NULL,
    enabled_at     timestamptz,
    last_used_step bigint,
    created_at     timestamptz NOT NULL
);

-- Single-use recovery codes: HMAC-SHA256 under a key derived from
-- DATA_KEK (keyring.MAC, purpose "recovery-code:<user id>"), never the
-- code. used_at is set when a code is spent.
CREATE TABLE recovery_codes (
    user_id    uuid        NOT NULL,
    code_hash  bytea       NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, code_hash)
);

-- Open login challenges: a password login of a 2FA account returns a
-- sealed token naming one of these rows; completing the login deletes the
-- row, so a challenge starts at most one session. Expired rows of a user
-- are deleted when the user is challenged again.
CREATE TABLE two_factor_challenges (
    challenge_id uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX two_factor_challenges_user_idx ON two_factor_challenges (user_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON two_factor, recovery_codes, two_factor_challenges TO mana_app;

-- Like password_credentials: only system scope (the auth decisions) and
-- the user themself; admins, apps and the auditor see nothing.
ALTER TABLE two_factor ENABLE ROW LEVEL SECURITY;
ALTER TABLE two_factor FORCE ROW LEVEL SECURITY;
CREATE POLICY two_factor_own ON two_factor FOR ALL TO mana_app
    USING (mana_scope() = 'system' OR user_id = mana_user_id())
    WITH CHECK (mana_scope() = 'system' OR user_id = mana_user_id());

ALTER TABLE recovery_codes ENABLE ROW LEVEL SECURITY;
ALTER TABLE recovery_codes FORCE ROW LEVEL SECURITY;
CREATE POLICY recovery_codes_own ON recovery_codes FOR ALL TO mana_app
    USING (mana_scope() = 'system' OR user_id = mana_user_id())
    WITH CHECK (mana_scope() = 'system' OR user_id = mana_user_id());

ALTER TABLE two_factor_challenges ENABLE ROW LEVEL SECURITY;
ALTER TABLE two_factor_challenges FORCE ROW LEVEL SECURITY;
CREATE POLICY two_factor_challenges_own ON two_factor_challenges FOR ALL TO mana_app
    USING (mana_scope() = 'system' OR user_id = mana_user_id())
    WITH CHECK (mana_scope() = 'system' OR user_id = mana_user_id());
