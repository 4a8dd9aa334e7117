#!/usr/bin/env bash
# PostgreSQL + MLflow tracking server on 127.0.0.1 for a command, then stopped (on exit,
# error or signal). See scripts/tracking_stack.py and docs/deployment.md.
#   scripts/tracking-stack.sh -- .venv/bin/refracture train --raw data/demo --outcome all
#   scripts/tracking-stack.sh --data data/stack --port 5000     # keep it; until Ctrl-C
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/ensure-postgres.sh"
exec "$root/.venv/bin/python" "$root/scripts/tracking_stack.py" "$@"
