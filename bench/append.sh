#!/usr/bin/env bash
# Append-path benchmark: how close does eventstore's Execute+Append come to
# what PostgreSQL itself sustains for a ~300-byte insert on this machine?
#
#  1. pgbench baselines in a throwaway database (bench_<random>, dropped on
#     exit), each at 8 and 32 clients:
#       plain  - one autocommit INSERT of an event-shaped row into a table
#                with only a primary key (the ENVIRONMENT.md baseline);
#       events - the same INSERT into a copy of the events table, with all
#                its constraints and indexes;
#       txn    - the statements Execute sends, driven by pgbench's C client:
#                BEGIN; SELECT set_config(role, scope, user);
#                INSERT ... RETURNING position, tx_id; COMMIT.
#  2. the Go benchmarks (go test -bench BenchmarkAppend, eventstore).
#  3. a summary: appends/s against pgbench TPS at the same concurrency.
#
# See bench/README.md. Knobs (environment):
#   BENCH_ADMIN_DSN   admin URL (CREATEDB), default the local server's "test"
#   BENCH_SECONDS     pgbench -T per run, default 10
#   BENCH_GO_TIME     go test -benchtime, default 10s
#   BENCH_CPUPROFILE  file: also profile BenchmarkAppendDistinctStreams/conc=32
#                     and print pprof's top 15 by cumulative time
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ADMIN_DSN=${BENCH_ADMIN_DSN:-postgres:///test?host=/var/run/postgresql}
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
GO_BENCHTIME=${BENCH_GO_TIME:-10s}
CLIENTS=(8 32)

for cmd in psql pgbench go awk; do
  command -v "$cmd" >/dev/null || { echo "append.sh: $cmd not found" >&2; exit 1; }
done

db="bench_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
work=$(mktemp -d)
created=0

cleanup() {
  if [ "$created" = 1 ]; then
    psql "$ADMIN_DSN" -qAtX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null ||
      echo "append.sh: could not drop database $db" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The throwaway database's URL: the admin URL with its path replaced.
case "$ADMIN_DSN" in
  postgres://* | postgresql://*) ;;
  *) echo "append.sh: BENCH_ADMIN_DSN must be a postgres:// URL" >&2; exit 1 ;;
esac
db_dsn=$(printf '%s' "$ADMIN_DSN" | sed -E "s#^(postgres(ql)?://[^/?]*)(/[^?]*)?#\\1/$db#")

psql "$ADMIN_DSN" -qAtX -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db\"" >/dev/null
created=1

# mana_app exists once any database on the server has been migrated; the txn
# script switches to it like pg.Begin does, or only sets the GUCs otherwise.
has_role=$(psql "$db_dsn" -qAtX -c "SELECT count(*) FROM pg_roles WHERE rolname = 'mana_app'")

psql "$db_dsn" -qAtX -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
-- Same columns as events, primary key only.
CREATE TABLE plain_events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id       uuid        NOT NULL,
    stream_type    text        NOT NULL,
    stream_id      text        NOT NULL,
    stream_version bigint      NOT NULL,
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT statement_timestamp(),
    metadata       jsonb       NOT NULL,
    payload        jsonb       NOT NULL,
    prev_hash      bytea       NOT NULL,
    hash           bytea       NOT NULL
);
-- A copy of events as sql/migrations/0002_events.sql creates it (the
-- UPDATE/DELETE triggers are left out: they never fire on INSERT).
CREATE TABLE events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id       uuid        NOT NULL UNIQUE,
    stream_type    text        NOT NULL CHECK (stream_type ~ '^[a-z][a-z_]*$'),
    stream_id      text        NOT NULL CHECK (length(stream_id) BETWEEN 1 AND 200),
    stream_version bigint      NOT NULL CHECK (stream_version > 0),
    event_type     text        NOT NULL CHECK (event_type ~ '^[a-z][a-z_]*\.[a-z][a-z_]*$'),
    schema_version integer     NOT NULL CHECK (schema_version > 0),
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT statement_timestamp(),
    metadata       jsonb       NOT NULL,
    payload        jsonb       NOT NULL,
    prev_hash      bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash           bytea       NOT NULL CHECK (length(hash) = 32),
    CONSTRAINT events_stream_version_key UNIQUE (stream_type, stream_id, stream_version)
);
CREATE INDEX events_feed_idx ON events (tx_id, position);
CREATE INDEX events_type_idx ON events (event_type, tx_id, position);
SQL
if [ "$has_role" = 1 ]; then
  psql "$db_dsn" -qAtX -v ON_ERROR_STOP=1 -c "GRANT SELECT, INSERT ON events TO mana_app" >/dev/null
fi

# One event row: 299 bytes of payload + metadata JSON (jsonb drops the space
# before true, which keeps pgbench from reading ":true" as a variable), as in the Go
# benchmark; a new stream (random uuid) each time, at version 1.
insert_sql() {
  cat <<SQL
INSERT INTO $1 (event_id, stream_type, stream_id, stream_version, event_type, schema_version,
                occurred_at, metadata, payload, prev_hash, hash)
VALUES (gen_random_uuid(), 'package', gen_random_uuid()::text, 1, 'package.created', 1, now(),
  '{"actor":"system","requestId":"req-bench-00000000","correlationId":"0b0e6f4e-7a43-4c55-9d1e-2f5a8c3b9e10"}',
  '{"packageId":"3f2b6c1e-8d4a-4e7b-9c0d-5a6b7c8d9e0f","name":"Benchmark package, padded to a three-hundred byte event","credits":100,"priceCents":100,"currency":"eur","sortOrder":1,"active": true}',
  '\\x0000000000000000000000000000000000000000000000000000000000000000',
  '\\x5f3c9a1b2d4e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8')$2;
SQL
}
insert_sql plain_events '' >"$work/plain.sql"
insert_sql events '' >"$work/events.sql"
{
  echo "BEGIN;"
  if [ "$has_role" = 1 ]; then
    echo "SELECT set_config('role', 'mana_app', true), set_config('mana.scope', 'system', true), set_config('mana.user_id', '', true);"
  else
    echo "SELECT set_config('mana.role', 'mana_app', true), set_config('mana.scope', 'system', true), set_config('mana.user_id', '', true);"
  fi
  insert_sql events ' RETURNING position, tx_id'
  echo "END;"
} >"$work/txn.sql"

declare -A tps
run_pgbench() { # variant clients
  local out
  out=$(pgbench -n -M prepared -j 2 -c "$2" -T "$SECONDS_PER_RUN" -f "$work/$1.sql" "$db_dsn" 2>&1) || {
    printf '%s\n' "$out" >&2
    return 1
  }
  tps[$1/$2]=$(printf '%s\n' "$out" | awk '/^tps = / {printf "%.0f", $3; exit}')
  local lat
  lat=$(printf '%s\n' "$out" | awk '/^latency average/ {print $4; exit}')
  printf 'pgbench %-6s clients=%-2s  %8s TPS  (latency avg %s ms)\n' "$1" "$2" "${tps[$1/$2]}" "$lat"
}

echo "== pgbench baselines (database $db, -T $SECONDS_PER_RUN -j 2 -M prepared)"
for variant in plain events txn; do
  for c in "${CLIENTS[@]}"; do
    run_pgbench "$variant" "$c"
  done
done
# Clear the box for the Go run.
psql "$ADMIN_DSN" -qAtX -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null && created=0

echo
echo "== go test ./eventstore/ -bench BenchmarkAppend -benchtime $GO_BENCHTIME"
go test ./eventstore/ -run '^$' -bench 'BenchmarkAppend' -benchtime "$GO_BENCHTIME" -count 1 -benchmem |
  tee "$work/go.txt"
grep -q '^ok' "$work/go.txt" || { echo "append.sh: go benchmarks failed" >&2; exit 1; }

# The value printed before unit $2 on benchmark line $1.
metric() {
  awk -v name="$1" -v unit="$2" '
    { n = $1; sub(/-[0-9]+$/, "", n) }
    n == name { for (i = 3; i <= NF; i++) if ($i == unit) { print $(i - 1); exit } }' "$work/go.txt"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }

echo
echo "== summary: one new stream + one event per command, distinct streams"
printf '%-7s %10s %10s %10s %11s %9s %9s %9s\n' \
  clients plain events txn appends/s '/plain' '/events' '/txn'
for c in "${CLIENTS[@]}"; do
  a=$(metric "BenchmarkAppendDistinctStreams/conc=$c" appends/s)
  a=$(awk -v a="$a" 'BEGIN { printf "%.0f", a }')
  printf '%-7s %10s %10s %10s %11s %9s %9s %9s\n' "$c" \
    "${tps[plain/$c]}" "${tps[events/$c]}" "${tps[txn/$c]}" "$a" \
    "$(ratio "$a" "${tps[plain/$c]}")" "$(ratio "$a" "${tps[events/$c]}")" "$(ratio "$a" "${tps[txn/$c]}")"
done
echo
fresh=$(metric BenchmarkAppendHistory/fresh ns/op)
hist=$(metric BenchmarkAppendHistory/history=10000 ns/op)
one=$(metric BenchmarkAppendOneStream ns/op)
printf 'sequential, one growing stream:      %s ns/op\n' "$one"
printf 'append to a fresh stream:            %s ns/op\n' "$fresh"
printf 'append after 10,000 events:          %s ns/op  (x%s of fresh)\n' "$hist" "$(ratio "$hist" "$fresh")"

if [ -n "${BENCH_CPUPROFILE:-}" ]; then
  echo
  echo "== CPU profile of BenchmarkAppendDistinctStreams/conc=32 (the Go process only)"
  go test ./eventstore/ -run '^$' -bench 'BenchmarkAppendDistinctStreams/conc=32$' -benchtime "$GO_BENCHTIME" \
    -count 1 -cpuprofile "$BENCH_CPUPROFILE" -o "$work/eventstore.test" | grep -E '^Benchmark'
  go tool pprof -top -cum -nodecount 15 "$work/eventstore.test" "$BENCH_CPUPROFILE" 2>/dev/null
fi
