#!/usr/bin/env bash
# Create .venv with the exact versions in requirements.lock and install this project into it.
# Idempotent: re-running only installs what changed (the lock's hash is remembered).
#   --serve: a serving host's environment instead, from requirements-serve.lock (the service,
#            `refracture serve` and `refracture predict`; no training, Spark or test tools).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
lock=requirements.lock
isolation=--no-build-isolation  # setuptools is in requirements.lock
if [ "${1:-}" = "--serve" ]; then
  lock=requirements-serve.lock
  isolation=  # the serving lock has no setuptools: pip fetches it to build the project
fi
stamp="$venv/.lock-installed"
want=$(cat "$lock" pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/refracture" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  py=$(bash scripts/find-python.sh)
  echo "bootstrap: creating $venv with $py" >&2
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
echo "bootstrap: installing $lock (a few minutes on a fresh machine)" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$lock"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps $isolation -e .
echo "$want" > "$stamp"
