"""What every test shares: the support modules on the import path, the hand-written raw
export as fixtures, and the test tiers.

The test folders mirror the packages (tests/serving/ holds the tests of serving/, ...),
so none of them may ever be importable as a top-level name: pytest runs in importlib mode
(pyproject.toml) and there is no ``__init__.py`` under tests/, so a test module is imported
under its path (``tests.serving.test_service``) and never puts its folder on sys.path.
The shared helpers live in tests/support/, the only test folder on sys.path; none of them
is named like a package (tests/system/test_layout.py checks all of this).
"""

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "support"))

from fixtures import raw_tables  # noqa: E402


@pytest.fixture
def raw():
    """The hand-written raw export as text tables (fresh copy per test)."""
    return raw_tables()


@pytest.fixture
def raw_dir(tmp_path, raw):
    """The hand-written raw export written as CSV files in a folder."""
    folder = tmp_path / "raw"
    folder.mkdir()
    for name, df in raw.items():
        df.to_csv(folder / f"{name}.csv", index=False)
    return folder


# ------------------------------------------------------------------------- test tiers
# `pytest -m "not slow"` is the fast tier a developer runs on every change (under a minute
# on two cores); `make test` runs everything. A test is slow when it trains models, starts
# a service or a browser, builds a package, or simulates the 100k-procedure evidence
# cohorts. Decided here, in one place, from what a test needs, so a new test in these
# modules or on these cohorts lands in the right tier without anyone remembering the marker.

#: Modules (path under tests/) whose every test is slow (a trained store, a served model,
#: a browser, a build).
SLOW_MODULES = frozenset({
    "features/simulator/test_evidence_incidence.py",  # 180k-procedure cohorts
    "features/simulator/test_evidence_odds_ratios.py",
    "features/simulator/test_evidence_table1.py",
    "serving/test_service.py",  # trains a champion per outcome, then serves them in-process
    "system/test_serving_e2e.py", "system/test_ui_browser.py", "system/test_packaging.py",
    "system/test_identity_provider.py",  # starts an OpenID Provider (Node)
    "system/test_identity_service.py",  # the service with the provider, a browser, HTTPS
    "refracture/test_training_cli.py",
    "refracture/test_prediction_cli.py",  # a local MLflow store (created on first use: ~20 s) for the performance run
    "predictionlog/test_postgres_outage.py",  # PostgreSQL stopped for 30 s under load
    "refracture/test_training_interrupts.py",  # real trainings stopped by SIGINT, SIGTERM and SIGKILL
    "modelstore/test_runs.py",  # a real SQLite MLflow store
    "training/test_death_model.py",  # trains the death model on 3,000 procedures, scores a fresh 10,000
    "training/test_registry_deaths.py",  # trains the four targets on 20,000 procedures, scores a fresh 20,000
    "features/fhir/test_round_trip_profiles.py",  # 3 x 1,000 procedures to FHIR and back (~90 s)
    "serving/test_fhir_service.py",  # serves the shared store; 3 x 1,000 procedures through FHIR and CDS Hooks
})
#: Names whose use (in the test, its parameters or its fixtures) makes a test slow.
SLOW_NEEDS = frozenset({"xiong_cohort", "pkp_cohort", "ensure_trained_store",
                        "fresh_copy"})  # the docs tier: a copy of the checkout, guides run as written


def _needs(item) -> set[str]:
    names: set[str] = set()
    function = getattr(item, "function", None)
    if function is not None:
        names |= set(function.__code__.co_names)
    for value in getattr(getattr(item, "callspec", None), "params", {}).values():
        names.add(getattr(value, "__name__", ""))
    for defs in getattr(item, "_fixtureinfo").name2fixturedefs.values():
        for fixturedef in defs:
            names |= set(getattr(fixturedef.func, "__code__", compile("", "", "exec")).co_names)
    return names


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.resolve().relative_to(TESTS).as_posix() in SLOW_MODULES or _needs(item) & SLOW_NEEDS:
            item.add_marker(pytest.mark.slow)
