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

# Each step announced with what it runs, and timed.
STEPS=6; [ "${DEMO_SERVE:-1}" = "0" ] || STEPS=7
step=0
run_step() {  # run_step "what" command args...
  local what=$1 started=$SECONDS
  shift
  step=$((step + 1))
  echo "demo [$step/$STEPS] $what: ${*/#.venv\/bin\//}"
  "$@"
  echo "demo [$step/$STEPS] done in $((SECONDS - started)) s"
  echo
}

run_step "simulate a cohort" $R synth --profile xiong2021-pvp --n "$N" --seed 7 --out "$DATA"
run_step "check it against the data contract" $R validate --raw "$DATA"
run_step "pre-operative feature set" $R features --raw "$DATA" --feature-set preop --out "$DATA/features-preop.parquet"
run_step "post-operative feature set" $R features --raw "$DATA" --feature-set postop --out "$DATA/features-postop.parquet"
run_step "train, evaluate and register every outcome and death" $R train --raw "$DATA" --outcome all --feature-set postop
run_step "the registry" $R models

[ "${DEMO_SERVE:-1}" = "0" ] && exit 0

# One named client for the demo, "demo" with every scope, in a registry the service re-reads
# (refracture clients add|list|revoke; docs/security.md). Its key is kept out of git (data/
# is ignored) and out of the page.
if [ -z "${REFRACTURE_API_KEY:-}" ] && [ -z "${REFRACTURE_CLIENTS_FILE:-}" ]; then
  keyfile="$DATA/api-key"
  export REFRACTURE_CLIENTS_FILE="$PWD/$DATA/clients.json"
  if [ ! -s "$keyfile" ] || [ ! -s "$REFRACTURE_CLIENTS_FILE" ]; then
    rm -f "$REFRACTURE_CLIENTS_FILE"
    (umask 077; $R clients add demo --scopes predict,explain,model:read,metrics:read > "$keyfile")
  fi
  echo "demo: client 'demo', key in $keyfile (use it as: Authorization: Bearer \$(cat $keyfile))"
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
echo "demo [$STEPS/$STEPS] serve the champions: refracture serve --port $PORT (Ctrl-C stops it)"
echo "demo: serving on http://127.0.0.1:$PORT  (clinician page: http://127.0.0.1:$PORT/ui/, API docs: http://127.0.0.1:$PORT/, OpenAPI: /docs.json)"
echo "demo: MLflow UI in another shell: .venv/bin/refracture ui"
exec $R serve --port "$PORT"
