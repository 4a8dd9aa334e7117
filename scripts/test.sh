#!/usr/bin/env bash
# Run the whole test suite (unit, data, model and end-to-end tiers) in the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
exec .venv/bin/python -m pytest -p no:cacheprovider -q "$@"
