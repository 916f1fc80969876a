-- +goose Up

-- An event's cursor (tx_id, position) is the database's to assign. Both
-- columns are only defaults, and INSERT … OVERRIDING SYSTEM VALUE lets any
-- role that may insert choose them: an event with an old tx_id sorts before
-- cursors readers have passed, so the relay and the projections would never
-- see it, and a position ahead of the sequence would make a later append
-- fail on the primary key. This trigger refuses any event whose tx_id is
-- not the inserting transaction's or whose position is not the one the
-- identity just drew (currval is per session, and the identity draws it
-- for each row right before the row's BEFORE trigger, for INSERT and COPY
-- alike). A position chosen in a session that never drew one fails on
-- currval itself. currval needs SELECT on the sequence, which reveals
-- nothing the events table does not.
-- +goose StatementBegin
CREATE FUNCTION events_guard_cursor() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.tx_id IS DISTINCT FROM pg_current_xact_id() THEN
        RAISE EXCEPTION 'events: tx_id is assigned by the database'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.position IS DISTINCT FROM currval('events_position_seq'::regclass) THEN
        RAISE EXCEPTION 'events: position is assigned by the database'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd

GRANT SELECT ON SEQUENCE events_position_seq TO mana_app;

CREATE TRIGGER events_guard_cursor
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_guard_cursor();
