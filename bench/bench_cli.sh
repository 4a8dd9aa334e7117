#!/usr/bin/env bash
# The everyday commands' whole-process time (issue 23): `refracture --help`, a command's
# --help, and `refracture validate` on a 5,000-procedure export, each timed from outside by
# farm-bench (median of 5 after a warm-up; wall, CPU and peak memory), optionally paired
# with the same command of another checkout (A B A B ..., ratio per pair).
#
#   bash bench/bench_cli.sh                      # this checkout
#   bash bench/bench_cli.sh /work/main           # paired with /work/main/.venv/bin/refracture
#
# Output: bench/out/cli-<UTC time>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD/.venv/bin/refracture
base=${1:+$1/.venv/bin/refracture}
raw=bench/out/cli-raw5k
out=bench/out/cli-$(date -u +%Y%m%d-%H%M).txt
mkdir -p bench/out
[ -f "$raw/procedures.csv" ] || "$here" synth --n 5000 --seed 7 --out "$raw" >/dev/null 2>&1
{
  echo "# $(date -u +%FT%TZ) $(uptime)"
  for args in "--help" "validate --help" "train --help" "validate --raw $raw"; do
    echo "== refracture $args${base:+   (A: $here, B: $base)}"
    # shellcheck disable=SC2086
    farm-bench -n 5 --timeout 600 ${base:+--vs "$base $args"} -- "$here" $args 2>&1
  done
} | tee "$out"
