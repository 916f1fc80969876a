#!/usr/bin/env bash
# Export and rebuild benchmark: how close do `mana events export` and
# `mana projections rebuild` come to PostgreSQL reading the same events
# table with COPY, over 1,000,000 events, in one run on one database?
#
#  1. builds mana and the generator bench/gen;
#  2. starts a throwaway PostgreSQL 15 cluster of its own (fsync on, the
#     shared server's settings; bench/bench.sh explains why its own: the
#     feed's horizon is cluster-wide), or uses a fresh database on
#     BENCH_ADMIN_DSN;
#  3. writes BENCH_EVENTS credit events (signup bonus, then spends, ten per
#     account, hashes chained per stream) as NDJSON with bench/gen and loads
#     them with `mana events import` (which verifies every hash and chain):
#     the import is timed too;
#  4. VACUUM ANALYZE events, one untimed COPY to warm the cache, then, each
#     timed: COPY events TO '/dev/null' (server side: the bound), COPY
#     (SELECT …) TO STDOUT through psql into /dev/null (the same bytes over
#     the wire to a client), `mana events export > /dev/null` (ndjson),
#     `mana projections rebuild BENCH_PROJECTION`;
#  5. prints events/s of each and its ratio to the server-side COPY.
#
# Knobs (environment): BENCH_EVENTS (1000000), BENCH_PROJECTION (balances),
# BENCH_ADMIN_DSN (a postgres:// URL: use a fresh database on that server
# instead of an own cluster). See bench/README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EVENTS=${BENCH_EVENTS:-1000000}
PROJECTION=${BENCH_PROJECTION:-balances}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

for cmd in go psql od awk; do
  command -v "$cmd" >/dev/null || { echo "export.sh: $cmd not found (make deps)" >&2; exit 1; }
done

began=$(date +%s)
work=$(mktemp -d /tmp/mana-export-bench.XXXXXX)
chmod 755 "$work"
pg_dir=""
admin_db=""
as_pg() { # PostgreSQL's server binaries refuse to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
  if [ -n "$pg_dir" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [ -n "$admin_db" ]; then
    psql "$BENCH_ADMIN_DSN" -qAtX -c "DROP DATABASE IF EXISTS \"$admin_db\" WITH (FORCE)" >/dev/null 2>&1 ||
      echo "export.sh: could not drop database $admin_db" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
# rate EVENTS SECONDS: events per second, rounded.
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s <= 0) print "-"; else printf "%.0f", n / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

echo "== build (mana, bench/gen)"
CGO_ENABLED=0 go build -trimpath -o "$work/mana" ./cmd/mana
go build -o "$work/gen" ./bench/gen

if [ -z "${BENCH_ADMIN_DSN:-}" ]; then
  pg_dir="$work/pg"
  mkdir -p "$pg_dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$pg_dir"
  as_pg "$PGBIN/initdb" --pgdata "$pg_dir/data" --username postgres --auth trust --encoding UTF8 \
    --locale C.UTF-8 --no-instructions >/dev/null
  started=""
  for _ in 1 2 3 4 5; do
    pg_port=$((20000 + RANDOM % 20000))
    if as_pg "$PGBIN/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 30 start \
      -o "-p $pg_port -c listen_addresses='' -c unix_socket_directories=$pg_dir -c max_connections=100 \
          -c shared_buffers=128MB -c autovacuum=off -c fsync=on -c synchronous_commit=on" >/dev/null; then
      started=1
      break
    fi
  done
  [ -n "$started" ] || { cat "$pg_dir/postgres.log" >&2; exit 1; }
  db_dsn="postgresql://postgres@/bench?host=$pg_dir&port=$pg_port"
  where="own cluster in $pg_dir, port $pg_port"
else
  case "$BENCH_ADMIN_DSN" in
    postgres://* | postgresql://*) ;;
    *) echo "export.sh: BENCH_ADMIN_DSN must be a postgres:// URL" >&2; exit 1 ;;
  esac
  admin_db="bench_export_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  db_dsn=$(printf '%s' "$BENCH_ADMIN_DSN" | sed -E "s#^(postgres(ql)?://[^/?]*)(/[^?]*)?#\\1/$admin_db#")
  where="database $admin_db on BENCH_ADMIN_DSN"
fi
export DATABASE_URL="$db_dsn" DATA_DIR="$work/data" LOG_LEVEL=warn
echo "== PostgreSQL $(psql "$db_dsn" -qAtX -c 'SHOW server_version' 2>/dev/null || "$PGBIN/postgres" --version | awk '{print $3}'): $where"
echo "== box: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "== generate $EVENTS events (bench/gen)"
t0=$(now)
"$work/gen" -events "$EVENTS" >"$work/events.ndjson"
t1=$(now)
gen_s=$(secs "$t0" "$t1")
printf 'gen:     %8ss  %8s events/s  %s MB of NDJSON\n' "$gen_s" "$(rate "$EVENTS" "$gen_s")" \
  "$(awk -v b="$(stat -c %s "$work/events.ndjson")" 'BEGIN { printf "%.0f", b / 1048576 }')"

# An empty import creates the database and applies the migrations (and
# seeds nothing), so the timed import below is only the events.
"$work/mana" events import --file /dev/null >/dev/null
echo "== mana events import (every hash recomputed, every chain link checked, COPY in transactions of 1000)"
t0=$(now)
"$work/mana" events import --file "$work/events.ndjson"
t1=$(now)
import_s=$(secs "$t0" "$t1")
rm -f "$work/events.ndjson"
n=$(psql "$db_dsn" -qAtX -c "SELECT count(*) FROM events")
[ "$n" = "$EVENTS" ] || { echo "export.sh: the database holds $n events, want $EVENTS" >&2; exit 1; }
size=$(psql "$db_dsn" -qAtX -c "SELECT pg_size_pretty(pg_table_size('events')) || ' table + ' || pg_size_pretty(pg_indexes_size('events')) || ' indexes'")
echo "events: $n ($size)"

# Hint bits and the visibility map set once, statistics fresh, the table
# read once: every timed reader finds the same state.
psql "$db_dsn" -qAtX -v ON_ERROR_STOP=1 -c "VACUUM (ANALYZE) events" >/dev/null
psql "$db_dsn" -qAtX -v ON_ERROR_STOP=1 -c "COPY events TO STDOUT" >/dev/null

# COPY to a server-side file needs a superuser or pg_write_server_files.
server_copy=1
psql "$db_dsn" -qAtX -c "SELECT rolsuper OR pg_has_role(current_user, 'pg_write_server_files', 'MEMBER') FROM pg_roles WHERE rolname = current_user" |
  grep -q t || server_copy=0

echo
echo "== timed reads of the same $n events"
copy_s=""
if [ "$server_copy" = 1 ]; then
  t0=$(now)
  psql "$db_dsn" -qAtX -v ON_ERROR_STOP=1 -c "COPY events TO '/dev/null'" >/dev/null
  t1=$(now)
  copy_s=$(secs "$t0" "$t1")
fi
t0=$(now)
psql "$db_dsn" -qAtX -v ON_ERROR_STOP=1 -c "COPY (SELECT * FROM events ORDER BY tx_id, position) TO STDOUT" >/dev/null
t1=$(now)
client_s=$(secs "$t0" "$t1")
[ -n "$copy_s" ] || copy_s=$client_s # no superuser: the client COPY is the bound

t0=$(now)
"$work/mana" events export >/dev/null
t1=$(now)
export_s=$(secs "$t0" "$t1")

t0=$(now)
"$work/mana" projections rebuild "$PROJECTION"
t1=$(now)
rebuild_s=$(secs "$t0" "$t1")

copy_r=$(rate "$n" "$copy_s")
echo
echo "== summary ($n events; ratio = events/s ÷ server-side COPY's)"
printf '%-44s %9s %12s %7s\n' what seconds events/s ratio
row() { printf '%-44s %9s %12s %7s\n' "$1" "$2" "$(rate "$n" "$2")" "$(ratio "$(rate "$n" "$2")" "$copy_r")"; }
if [ "$server_copy" = 1 ]; then
  row "COPY events TO '/dev/null' (server side)" "$copy_s"
else
  echo "(no superuser: COPY to a server file skipped; the client COPY is the bound)"
fi
row "COPY (SELECT … ORDER BY feed) TO STDOUT, psql" "$client_s"
row "mana events export > /dev/null (ndjson)" "$export_s"
row "mana projections rebuild $PROJECTION" "$rebuild_s"
row "mana events import (verify + COPY)" "$import_s"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== export.sh took $(($(date +%s) - began)) s"
