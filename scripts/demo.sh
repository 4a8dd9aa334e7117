#!/usr/bin/env bash
# The main job, end to end on the embedded default: simulate a cohort, validate it, build
# both feature sets, train and register every outcome's candidates and the death model (the
# probability of death by 24 months, shown as context) in the local MLflow store (mlflow/),
# then serve the champions on http://127.0.0.1:3000 (Ctrl-C stops it).
#
# Knobs: DEMO_N (cohort size, default 5000), DEMO_DATA (default data/demo),
# DEMO_PORT (default 3000), DEMO_SERVE=0 to stop after training.
set -euo pipefail
cd "$(dirname "$0")/.."
R=.venv/bin/refracture
DATA=${DEMO_DATA:-data/demo}
N=${DEMO_N:-5000}
PORT=${DEMO_PORT:-3000}

$R synth --profile xiong2021-pvp --n "$N" --seed 7 --out "$DATA"
$R validate --raw "$DATA"
$R features --raw "$DATA" --feature-set preop --out "$DATA/features-preop.parquet"
$R features --raw "$DATA" --feature-set postop --out "$DATA/features-postop.parquet"
$R train --raw "$DATA" --outcome all --feature-set postop
$R models

[ "${DEMO_SERVE:-1}" = "0" ] && exit 0

# A local API key for the demo, kept out of git (data/ is ignored) and out of the page.
if [ -z "${REFRACTURE_API_KEY:-}" ]; then
  keyfile="$DATA/api-key"
  [ -s "$keyfile" ] || (umask 077; .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' > "$keyfile")
  export REFRACTURE_API_KEY_FILE="$PWD/$keyfile"
  echo "demo: API key in $keyfile (use it as: Authorization: Bearer \$(cat $keyfile))"
fi
if [ -z "${REFRACTURE_AUDIT_SALT:-}" ]; then
  saltfile="$DATA/audit-salt"
  [ -s "$saltfile" ] || (umask 077; .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' > "$saltfile")
  REFRACTURE_AUDIT_SALT=$(cat "$saltfile"); export REFRACTURE_AUDIT_SALT
fi
# The prediction log's site secret (docs/prediction-log.md): drawn once, kept out of git;
# the demo's predictions go to the embedded store, data/predictions.db.
if [ -z "${REFRACTURE_PREDICTION_SECRET:-}${REFRACTURE_PREDICTION_SECRET_FILE:-}" ]; then
  secretfile="$DATA/prediction-secret"
  [ -s "$secretfile" ] || (umask 077; .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(48))' > "$secretfile")
  export REFRACTURE_PREDICTION_SECRET_FILE="$PWD/$secretfile"
  echo "demo: predictions logged to data/predictions.db (site secret in $secretfile; later: refracture outcomes, refracture performance)"
fi
echo "demo: serving on http://127.0.0.1:$PORT  (clinician page: http://127.0.0.1:$PORT/ui/, API docs: http://127.0.0.1:$PORT/, OpenAPI: /docs.json)"
echo "demo: MLflow UI in another shell: .venv/bin/refracture ui"
exec $R serve --port "$PORT"
