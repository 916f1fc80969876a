-- name: EventsAppend :many
-- Inserts a batch of events in one statement; the array order is the
-- position order. tx_id defaults to the inserting transaction's id.
INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type,
                    schema_version, occurred_at, metadata, payload, prev_hash, hash)
SELECT unnest(@event_ids::uuid[]), unnest(@stream_types::text[]), unnest(@stream_ids::text[]),
       unnest(@stream_versions::bigint[]), unnest(@event_types::text[]),
       unnest(@schema_versions::integer[]), unnest(@occurred_ats::timestamptz[]),
       unnest(@metadatas::jsonb[]), unnest(@payloads::jsonb[]),
       unnest(@prev_hashes::bytea[]), unnest(@hashes::bytea[])
RETURNING position, tx_id;

-- name: EventsStreamHead :one
-- The hash of the event at an expected version; the unique index on
-- (stream_type, stream_id, stream_version) makes it one probe whatever the
-- stream's length.
SELECT hash FROM events
WHERE stream_type = $1 AND stream_id = $2 AND stream_version = $3;

-- name: EventsStreamLast :one
-- The newest event of a stream, for appends that do not depend on its state.
SELECT stream_version, hash FROM events
WHERE stream_type = $1 AND stream_id = $2
ORDER BY stream_version DESC
LIMIT 1;

-- name: EventsLoadStream :many
SELECT position, tx_id, event_id, stream_type, stream_id, stream_version, event_type,
       schema_version, occurred_at, recorded_at, metadata, payload, prev_hash, hash
FROM events
WHERE stream_type = $1 AND stream_id = $2 AND stream_version > @after_version
ORDER BY stream_version;

-- name: EventsFeed :many
-- The feed in commit-safe order: only transactions below the cluster's
-- snapshot horizon are visible, so no event can later appear before the
-- cursor. Never compare bare positions.
SELECT position, tx_id, event_id, stream_type, stream_id, stream_version, event_type,
       schema_version, occurred_at, recorded_at, metadata, payload, prev_hash, hash
FROM events
WHERE (tx_id, position) > (@after_tx::xid8, @after_position::bigint)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx_id, position
LIMIT @max_events;

-- name: EventsFeedHorizon :one
-- The oldest transaction id still in flight anywhere in the cluster.
SELECT pg_snapshot_xmin(pg_current_snapshot())::xid8 AS horizon;

-- name: EventsByStreamOrder :many
-- Keyset pages over every stream in chain order, for ledger verification.
SELECT position, tx_id, event_id, stream_type, stream_id, stream_version, event_type,
       schema_version, occurred_at, recorded_at, metadata, payload, prev_hash, hash
FROM events
WHERE (stream_type, stream_id, stream_version) > (@after_type::text, @after_id::text, @after_version::bigint)
ORDER BY stream_type, stream_id, stream_version
LIMIT @max_events;

-- name: EventsFeedHead :one
-- The newest cursor below the horizon: where a tail starts and what lag is
-- measured against.
SELECT tx_id, position FROM events
WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx_id DESC, position DESC
LIMIT 1;

-- name: EventsLoadOne :one
SELECT position, tx_id, event_id, stream_type, stream_id, stream_version, event_type,
       schema_version, occurred_at, recorded_at, metadata, payload, prev_hash, hash
FROM events
WHERE stream_type = $1 AND stream_id = $2 AND stream_version = $3;
