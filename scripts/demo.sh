#!/usr/bin/env bash
# The main job, end to end on the embedded default: simulate a cohort, validate it, build
# both feature sets. (Training and serving steps are added as they land.)
set -euo pipefail
cd "$(dirname "$0")/.."
R=.venv/bin/refracture
DATA=${DEMO_DATA:-data/demo}
N=${DEMO_N:-5000}
$R synth --profile xiong2021-pvp --n "$N" --seed 7 --out "$DATA"
$R validate --raw "$DATA"
$R features --raw "$DATA" --feature-set preop --out "$DATA/features-preop.parquet"
$R features --raw "$DATA" --feature-set postop --out "$DATA/features-postop.parquet"
