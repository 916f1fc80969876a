-- name: RelayCheckpointGet :one
SELECT tx_id, position, updated_at FROM relay_checkpoints WHERE name = @name;

-- name: RelayCheckpointSave :exec
-- Sets the relay's checkpoint. It may move backwards: when JetStream reports
-- that it lost the stream's tail, the relay rewinds to what the stream holds
-- and republishes the rest. Only the lease holder calls it, in the
-- transaction that checks the lease (Lease.HeldIn).
INSERT INTO relay_checkpoints (name, tx_id, position, updated_at)
VALUES (@name, @tx_id, @position, clock_timestamp())
ON CONFLICT (name) DO UPDATE
    SET tx_id = excluded.tx_id, position = excluded.position, updated_at = excluded.updated_at;

-- name: RelayEventIDAt :one
-- The id of the event at a feed cursor; position is the primary key, so
-- this is one probe.
SELECT event_id FROM events WHERE position = @position AND tx_id = @tx_id;

-- name: RelayEventCursor :one
-- The feed cursor of an event, by id (unique index on event_id).
SELECT tx_id, position FROM events WHERE event_id = @event_id;

-- name: RelayLag :one
-- How many events the feed holds after the cursor, counting at most
-- @max_events so the estimate stays cheap on a long backlog. Like the feed,
-- it only counts transactions below the snapshot horizon.
SELECT count(*) FROM (
    SELECT 1 FROM events
    WHERE (tx_id, position) > (@after_tx::xid8, @after_position::bigint)
      AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
    LIMIT @max_events
) AS pending;
