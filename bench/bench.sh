#!/usr/bin/env bash
# make bench: the service over HTTP on loopback against what the machine
# itself does, in one run (SPEC §9; method in bench/README.md, reading in
# docs/performance.md).
#
#  1. builds the release binary (as `make build`) and the driver bench/run;
#  2. starts a throwaway PostgreSQL 15 cluster of its own (fsync on, the
#     shared server's settings), because the event feed's horizon is
#     cluster-wide: other work on a shared server would hold back the
#     projector and show up as lag that is not ours. BENCH_ADMIN_DSN=URL
#     uses a fresh database on that server instead;
#  3. starts the service on a fresh database with RATE_LIMITS=off,
#     LOG_LEVEL=warn and a signup bonus spends never exhaust;
#  4. runs bench/run: the box's argon2id and RS256 rates, the pgbench
#     baselines, then every scenario; it prints the table and writes
#     bench/results/<date>.json and <date>.svg.
#
# Knobs (environment): BENCH_CLIENTS (32), BENCH_SECONDS (closed loop per
# scenario, 10), BENCH_OPEN_SECONDS (open loop per scenario, 6),
# BENCH_PGBENCH_SECONDS (10), BENCH_ACCOUNTS (1000), BENCH_HISTORY
# (100000), BENCH_OUT (bench/results), BENCH_ADMIN_DSN.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLIENTS=${BENCH_CLIENTS:-32}
SECS=${BENCH_SECONDS:-10}
OPEN_SECS=${BENCH_OPEN_SECONDS:-6}
PGBENCH_SECS=${BENCH_PGBENCH_SECONDS:-10}
ACCOUNTS=${BENCH_ACCOUNTS:-1000}
HISTORY=${BENCH_HISTORY:-100000}
OUT=${BENCH_OUT:-bench/results}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

for cmd in go pgbench psql curl od; do
  command -v "$cmd" >/dev/null || { echo "bench.sh: $cmd not found (make deps)" >&2; exit 1; }
done

began=$(date +%s)
work=$(mktemp -d /tmp/mana-bench.XXXXXX)
chmod 755 "$work"
svc_pid=""
pg_dir=""
admin_db=""
as_pg() { # run a PostgreSQL server binary; they refuse to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
  if [ -n "$svc_pid" ]; then
    kill "$svc_pid" 2>/dev/null || true
    wait "$svc_pid" 2>/dev/null || true
  fi
  if [ -n "$pg_dir" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [ -n "$admin_db" ]; then
    psql "$BENCH_ADMIN_DSN" -qAtX -c "DROP DATABASE IF EXISTS \"$admin_db\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== build (release binary as make build, and bench/run)"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(git describe --always --dirty 2>/dev/null || echo dev)" \
  -o "$work/mana" ./cmd/mana
go build -o "$work/run" ./bench/run

if [ -z "${BENCH_ADMIN_DSN:-}" ]; then
  pg_dir="$work/pg"
  mkdir -p "$pg_dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$pg_dir"
  as_pg "$PGBIN/initdb" --pgdata "$pg_dir/data" --username postgres --auth trust --encoding UTF8 \
    --locale C.UTF-8 --no-instructions >/dev/null
  started=""
  for _ in 1 2 3 4 5; do
    pg_port=$((20000 + RANDOM % 20000))
    # The shared server's settings (ENVIRONMENT.md's baselines come from
    # it): fsync on, 128 MB shared buffers, 100 connections, no autovacuum.
    if as_pg "$PGBIN/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 30 start \
      -o "-p $pg_port -c listen_addresses='' -c unix_socket_directories=$pg_dir -c max_connections=100 \
          -c shared_buffers=128MB -c autovacuum=off -c fsync=on -c synchronous_commit=on" >/dev/null; then
      started=1
      break
    fi
  done
  [ -n "$started" ] || { cat "$pg_dir/postgres.log" >&2; exit 1; }
  psql "postgresql://postgres@/postgres?host=$pg_dir&port=$pg_port" -qAtX -c "CREATE DATABASE bench" >/dev/null
  db_dsn="postgresql://postgres@/bench?host=$pg_dir&port=$pg_port"
  echo "== PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'): own cluster in $pg_dir, port $pg_port"
else
  admin_db="bench_svc_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  psql "$BENCH_ADMIN_DSN" -qAtX -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$admin_db\"" >/dev/null
  db_dsn=$(printf '%s' "$BENCH_ADMIN_DSN" | sed -E "s#^(postgres(ql)?://[^/?]*)(/[^?]*)?#\\1/$admin_db#")
  echo "== PostgreSQL: database $admin_db on BENCH_ADMIN_DSN"
fi

# The service's keys, given to bench/run too: building the 100,000-event
# history goes through the event store, which seals spend metadata.
DATA_KEK=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
EMAIL_INDEX_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
export DATA_KEK EMAIL_INDEX_KEY
export RATE_LIMITS=off

started=""
for _ in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 20000))
  LOG_LEVEL=warn CREDITS_SIGNUP_BONUS=1000000000 RYW_TIMEOUT=2s DATABASE_URL="$db_dsn" \
    DATA_DIR="$work/data" PORT=$port "$work/mana" serve >"$work/serve.log" 2>&1 &
  svc_pid=$!
  for _ in $(seq 1 150); do
    curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && { started=1; break; }
    kill -0 "$svc_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$started" ] && break
  kill "$svc_pid" 2>/dev/null || true
  wait "$svc_pid" 2>/dev/null || true
  svc_pid=""
done
[ -n "$started" ] || { cat "$work/serve.log" >&2; exit 1; }
echo "== service (git $(git describe --always --dirty 2>/dev/null || echo dev)) on 127.0.0.1:$port, RATE_LIMITS=$RATE_LIMITS, LOG_LEVEL=warn"

# CPU per request is read from /proc for the service and, with our own
# cluster, the postmaster and its children.
pm_pid=0
[ -n "$pg_dir" ] && pm_pid=$(head -n1 "$pg_dir/data/postmaster.pid")
"$work/run" -url "http://127.0.0.1:$port" -dsn "$db_dsn" -out "$OUT" -rate-limits "$RATE_LIMITS" -ryw-timeout 2s \
  -service-pid "$svc_pid" -postmaster-pid "$pm_pid" \
  -c "$CLIENTS" -d "${SECS}s" -open "${OPEN_SECS}s" -pgbench-time "${PGBENCH_SECS}s" \
  -accounts "$ACCOUNTS" -history "$HISTORY"

if grep -qE '"level":"(ERROR|WARN)"|level=(ERROR|WARN)' "$work/serve.log"; then
  echo "== the service logged $(grep -cE '"level":"(ERROR|WARN)"|level=(ERROR|WARN)' "$work/serve.log") warnings or errors; the last five:"
  grep -E '"level":"(ERROR|WARN)"|level=(ERROR|WARN)' "$work/serve.log" | tail -n 5
fi
echo "== make bench took $(($(date +%s) - began)) s"
