#!/usr/bin/env bash
# Service benchmark: the running service over HTTP on loopback against
# PostgreSQL's own limits measured in the same run.
#
#  1. builds a release binary and starts it on a fresh database with
#     RATE_LIMITS=off and a large signup bonus (so spends never run dry);
#  2. pgbench baselines on the same server: single-row UPDATE on random rows
#     of 1,000 and on one hot row, at the load's concurrency;
#  3. bench/load: login, refresh, validate, spend on distinct accounts, spend
#     on one hot account, balance right after a spend;
#  4. prints everything, with the seed service's figures for comparison.
#
# Knobs: BENCH_CLIENTS (default 8), BENCH_SECONDS (default 10),
# BENCH_ADMIN_DSN (default the local server's "test" database).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ADMIN_DSN=${BENCH_ADMIN_DSN:-postgres:///test?host=/var/run/postgresql}
CLIENTS=${BENCH_CLIENTS:-8}
SECS=${BENCH_SECONDS:-10}
db="bench_svc_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  psql "$ADMIN_DSN" -qAtX -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
db_dsn=$(printf '%s' "$ADMIN_DSN" | sed -E "s#^(postgres(ql)?://[^/?]*)(/[^?]*)?#\\1/$db#")

CGO_ENABLED=0 go build -trimpath -o "$work/mana" ./cmd/mana
port=$(( 20000 + RANDOM % 20000 ))
RATE_LIMITS=off CREDITS_SIGNUP_BONUS=1000000000 DATABASE_URL="$db_dsn" DATA_DIR="$work/data" PORT=$port LOG_LEVEL=warn \
  "$work/mana" serve ${BENCH_SERVE_ARGS:-} > "$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null || { cat "$work/serve.log"; exit 1; }

echo "== pgbench baselines ($CLIENTS clients, ${SECS}s, same server)"
psql "$db_dsn" -qAtX -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE bench_rows (id int PRIMARY KEY, balance bigint NOT NULL);
INSERT INTO bench_rows SELECT g, 1000000000 FROM generate_series(1, 1000) g;
SQL
echo '\set id random(1, 1000)
UPDATE bench_rows SET balance = balance - 1 WHERE id = :id;' > "$work/distinct.sql"
echo 'UPDATE bench_rows SET balance = balance - 1 WHERE id = 1;' > "$work/hot.sql"
for s in distinct hot; do
  tps=$(pgbench -n -M prepared -j 2 -c "$CLIENTS" -T "$SECS" -f "$work/$s.sql" "$db_dsn" 2>/dev/null | awk '/^tps/ {print int($3)}')
  echo "pgbench update_$s c=$CLIENTS $tps TPS"
done

echo "== service over HTTP (closed loop, $CLIENTS clients, ${SECS}s each, RATE_LIMITS=off)"
go run ./bench/load -url "http://127.0.0.1:$port" -c "$CLIENTS" -d "${SECS}s"

cat <<'TXT'
== the seed service on this machine (ENVIRONMENT.md, c=8): login 9.4/s, refresh 356/s,
   validate 1,881/s, use distinct 479/s, use hot 321/s, balance 1,027/s
TXT
