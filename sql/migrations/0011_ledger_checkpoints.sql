-- +goose Up

-- Signed checkpoints (docs/ledger.md, "Signed checkpoints"): a Merkle tree
-- head over the event hashes in feed order up to a cursor, signed with the
-- Ed25519 LEDGER_SIGNING_KEY.

-- Every public key that ever signed a checkpoint, kept forever so old
-- checkpoints keep verifying after the key changes. key_id is the first 16
-- characters of base64url(SHA-256(public_key)).
CREATE TABLE ledger_signing_keys (
    key_id     text        PRIMARY KEY CHECK (key_id ~ '^[A-Za-z0-9_-]{16}$'),
    public_key bytea       NOT NULL UNIQUE CHECK (length(public_key) = 32),
    created_at timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- The checkpoints. The signature covers the canonical JSON of
-- {cursor, tree_size, root (hex), signed_at}; tree_size is the number of
-- events from the start of the feed up to and including the cursor.
CREATE TABLE ledger_checkpoints (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cursor_tx       xid8        NOT NULL,
    cursor_position bigint      NOT NULL,
    tree_size       bigint      NOT NULL CHECK (tree_size > 0),
    root            bytea       NOT NULL CHECK (length(root) = 32),
    key_id          text        NOT NULL REFERENCES ledger_signing_keys (key_id),
    signature       bytea       NOT NULL CHECK (length(signature) = 64),
    signed_at       timestamptz NOT NULL
);
CREATE INDEX ledger_checkpoints_cursor_idx ON ledger_checkpoints (cursor_tx, cursor_position);

-- Both are append-only, like events: a checkpoint or a key is never
-- changed or removed.
-- +goose StatementBegin
CREATE FUNCTION ledger_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
-- +goose StatementEnd

CREATE TRIGGER ledger_signing_keys_no_update_delete
    BEFORE UPDATE OR DELETE ON ledger_signing_keys
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_signing_keys_no_truncate
    BEFORE TRUNCATE ON ledger_signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_checkpoints_no_update_delete
    BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_checkpoints_no_truncate
    BEFORE TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

REVOKE ALL ON ledger_signing_keys, ledger_checkpoints FROM PUBLIC;
GRANT SELECT, INSERT ON ledger_signing_keys, ledger_checkpoints TO mana_app;
GRANT SELECT ON ledger_signing_keys, ledger_checkpoints TO mana_auditor;
