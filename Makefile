# The two set-up commands (see README): `make demo` and `make test`.
# Both create .venv from requirements.lock first (scripts/bootstrap.sh), so a fresh machine
# needs only Python >= 3.12 (found on PATH or under pyenv) and network access to PyPI.
.PHONY: setup setup-serve demo test test-fast bench

setup:
	@bash scripts/bootstrap.sh

# A serving host: the service, `refracture serve` and `refracture predict` only, from
# requirements-serve.lock (docs/serving.md, "A serving host").
setup-serve:
	@bash scripts/bootstrap.sh --serve

demo: setup
	@bash scripts/demo.sh

test: setup
	@bash scripts/test.sh

# The fast tier, for every change: no model training, services, browser or 100k cohorts
# (which tests are slow is decided in tests/conftest.py). `make test` runs everything.
test-fast: setup
	@.venv/bin/python -m pytest -p no:cacheprovider -q -n 2 --dist loadfile -m "not slow"

bench: setup
	@bash bench/run_all.sh
