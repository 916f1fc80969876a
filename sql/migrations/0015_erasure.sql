-- +goose Up

-- Erasure (DELETE /auth/account) frees the user's address for a new
-- registration: the erased user's write-side row stays (its id, role and
-- the erased flag, which sends late payments to system:unclaimed) but
-- loses its blind email index, so the UNIQUE index no longer holds the
-- address and no lookup by address can find the row. Every live account
-- still has one. signup_bonus_claims keeps the index, so the address never
-- gets a second signup bonus.
ALTER TABLE auth_users ALTER COLUMN email_hmac DROP NOT NULL;
ALTER TABLE auth_users ADD CONSTRAINT auth_users_email_hmac_live
    CHECK (erased OR email_hmac IS NOT NULL);
