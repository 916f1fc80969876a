#!/usr/bin/env bash
# make fuzz: every fuzz target of the module (go test -list '^Fuzz' ./...),
# one after another, each for FUZZTIME; fails when any target fails and
# leaves the failing input in its package's testdata/fuzz.
#
# Go's fuzz coordinator can fail a target just past -fuzztime with a bare
# "context deadline exceeded" and no failing input (golang/go#75804, a race
# in go1.26 and older). Such a run is repeated, up to twice; a real failure
# always writes its input ("Failing input written to") and fails at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-15s}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-10m}

# "<package>:<target>" for every fuzz target.
targets=$("$GO" test -list '^Fuzz' ./... | awk '
  /^Fuzz/ { names = names " " $1; next }
  /^ok/   { n = split(names, a, " "); for (i = 1; i <= n; i++) print $2 ":" a[i]; names = "" }')
if [ -z "$targets" ]; then
  echo "fuzz: no fuzz targets found" >&2
  exit 1
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
failed=""
for t in $targets; do
  pkg=${t%%:*}
  name=${t##*:}
  for try in 1 2 3; do
    echo "$GO test -run '^\$' -fuzz '^$name\$' -fuzztime $FUZZTIME -timeout $FUZZ_TIMEOUT $pkg"
    if "$GO" test -run '^$' -fuzz "^$name\$" -fuzztime "$FUZZTIME" -timeout "$FUZZ_TIMEOUT" "$pkg" 2>&1 | tee "$out"; then
      break
    fi
    if [ "$try" = 3 ] || grep -q 'Failing input written to' "$out" || ! grep -qx '    context deadline exceeded' "$out"; then
      failed="$failed $name($pkg)"
      break
    fi
    echo "fuzz: $name stopped on the coordinator's deadline race, no failing input; again"
  done
done
if [ -n "$failed" ]; then
  echo "fuzz: failed:$failed" >&2
  exit 1
fi
echo "fuzz: $(echo "$targets" | wc -w) targets passed, $FUZZTIME each"
