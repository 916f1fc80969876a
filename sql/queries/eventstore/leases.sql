-- name: LeaseAcquire :one
-- Takes or renews a lease: it succeeds when the lease is free, expired, or
-- already ours, and returns the expiry. No row back means another holder
-- owns it. Times are the database's, so node clocks do not matter.
INSERT INTO leases AS l (name, holder, acquired_at, expires_at)
VALUES (@name, @holder, clock_timestamp(), clock_timestamp() + make_interval(secs => @ttl_seconds::float8))
ON CONFLICT (name) DO UPDATE
    SET holder = excluded.holder,
        acquired_at = CASE WHEN l.holder = excluded.holder THEN l.acquired_at ELSE excluded.acquired_at END,
        expires_at = excluded.expires_at
    WHERE l.holder = excluded.holder OR l.expires_at < clock_timestamp()
RETURNING expires_at;

-- name: LeaseRelease :exec
DELETE FROM leases WHERE name = @name AND holder = @holder;

-- name: LeaseHeld :one
-- Whether holder still holds name; for a writer to check inside the
-- transaction that applies its work.
SELECT EXISTS (
    SELECT 1 FROM leases WHERE name = @name AND holder = @holder AND expires_at > clock_timestamp()
) AS held;

-- name: LeaseList :many
SELECT name, holder, acquired_at, expires_at FROM leases ORDER BY name;
