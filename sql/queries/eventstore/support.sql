-- name: IdempotencyReserve :one
-- Claims the key for this transaction. A concurrent holder makes this block
-- on the primary key until it ends; no row back means the key was committed
-- by someone else and must be replayed (or refused if the hash differs).
INSERT INTO idempotency_keys (subject, principal, operation, key, user_id, request_hash, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING true AS reserved;

-- name: IdempotencyGet :one
SELECT request_hash, status, response, position FROM idempotency_keys
WHERE subject = $1 AND principal = $2 AND operation = $3 AND key = $4;

-- name: IdempotencyComplete :exec
UPDATE idempotency_keys SET status = $5, response = $6, position = $7
WHERE subject = $1 AND principal = $2 AND operation = $3 AND key = $4;

-- name: IdempotencyDeleteUser :exec
DELETE FROM idempotency_keys WHERE user_id = $1;

-- name: EmailClaimInsert :one
INSERT INTO email_claims (email_hmac, user_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING user_id;

-- name: EmailClaimLookup :one
SELECT user_id FROM email_claims WHERE email_hmac = $1;

-- name: EmailClaimDelete :exec
DELETE FROM email_claims WHERE user_id = $1;

-- name: DataKeyInsert :exec
INSERT INTO data_keys (subject_id, wrapped_key) VALUES ($1, $2)
ON CONFLICT DO NOTHING;

-- name: DataKeyGet :one
SELECT wrapped_key FROM data_keys WHERE subject_id = $1;

-- name: DataKeysGet :many
SELECT subject_id, wrapped_key FROM data_keys WHERE subject_id = ANY(@subject_ids::uuid[]);

-- name: DataKeyDelete :exec
DELETE FROM data_keys WHERE subject_id = $1;

-- name: UserPositionGet :one
SELECT tx_id, position FROM user_positions WHERE user_id = $1;

-- name: IdempotencyRelease :exec
-- Drops this transaction's reservation: the command committed other work
-- but answered an error, and errors are never replayed.
DELETE FROM idempotency_keys
WHERE subject = $1 AND principal = $2 AND operation = $3 AND key = $4 AND status = 0;
