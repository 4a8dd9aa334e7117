# The two set-up commands (see README): `make demo` and `make test`.
# Both create .venv from requirements.lock first (scripts/bootstrap.sh), so a fresh machine
# needs only Python >= 3.12 (found on PATH or under pyenv) and network access to PyPI.
.PHONY: setup demo test bench

setup:
	@bash scripts/bootstrap.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@bash scripts/test.sh

bench: setup
	@bash bench/run_all.sh
