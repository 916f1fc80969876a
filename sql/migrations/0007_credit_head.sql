-- +goose Up

-- The hash of the account stream's newest event, kept with the locked
-- account row so an append needs no lookup of the stream head.
ALTER TABLE credit_accounts ADD COLUMN last_hash bytea;
