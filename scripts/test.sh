#!/usr/bin/env bash
# Run the whole test suite (unit, data, model and end-to-end tiers, browser included) in
# the project's venv, on both cores. The screenshot of the clinician page lands in
# test-artifacts/. The tracking-server tests start their own PostgreSQL and MLflow server
# (scripts/tracking_stack.py); Debian's postgresql is installed first when missing, and
# Debian's prometheus for promtool, which checks the alert rules in docs/prometheus/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-chromium.sh
bash scripts/ensure-postgres.sh
bash scripts/ensure-promtool.sh
bash scripts/ensure-node.sh
mkdir -p test-artifacts
exec .venv/bin/python -m pytest -p no:cacheprovider -q -n 2 --dist loadfile "$@"
