-- +goose Up
-- Cluster-wide NOLOGIN roles the service switches to with SET LOCAL ROLE.
-- Several databases of one cluster may migrate at the same moment, so a
-- concurrent CREATE ROLE losing the race (duplicate_object or the catalog's
-- unique_violation) counts as success.
-- +goose StatementBegin
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['mana_app', 'mana_projector', 'mana_auditor'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- A non-superuser connection user must be a member of the roles to SET ROLE
-- to them. Superusers need no membership.
-- +goose StatementBegin
DO $$
DECLARE
    r text;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
        FOREACH r IN ARRAY ARRAY['mana_app', 'mana_projector', 'mana_auditor'] LOOP
            EXECUTE format('GRANT %I TO %I', r, session_user);
        END LOOP;
    END IF;
END
$$;
-- +goose StatementEnd

-- Every database of the cluster grants the roles on its own objects.
-- +goose StatementBegin
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO mana_app, mana_projector, mana_auditor', current_database());
END
$$;
-- +goose StatementEnd
GRANT USAGE ON SCHEMA public TO mana_app, mana_projector, mana_auditor;

-- RLS helpers. A transaction states who it acts for with
-- set_config('mana.user_id', …, true) and set_config('mana.scope', …, true);
-- scope is one of user (the default), app, admin, auditor, system.
-- +goose StatementBegin
CREATE FUNCTION mana_scope() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(nullif(current_setting('mana.scope', true), ''), 'user') $$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION mana_user_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('mana.user_id', true), '')::uuid $$;
-- +goose StatementEnd

-- mana_can_see reports whether the current transaction may read a row that
-- belongs to user u: its owner, or an admin, auditor or system scope.
-- +goose StatementBegin
CREATE FUNCTION mana_can_see(u uuid) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT mana_scope() IN ('admin', 'auditor', 'system') OR u = mana_user_id() $$;
-- +goose StatementEnd
