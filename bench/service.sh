#!/usr/bin/env bash
# Superseded by bench/bench.sh (`make bench`), which measures the same
# scenarios and more, with the pgbench baselines and the box's argon2id and
# RS256 rates in the same run. Kept so older notes that call it still work:
# BENCH_CLIENTS and BENCH_SECONDS mean what they meant here.
exec bash "$(dirname "${BASH_SOURCE[0]}")/bench.sh" "$@"
