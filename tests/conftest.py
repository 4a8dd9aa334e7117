import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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

#: Modules whose every test is slow (a trained store, a served model, a browser, a build).
SLOW_MODULES = frozenset({
    "test_evidence_incidence", "test_evidence_odds_ratios", "test_evidence_table1",  # 180k-procedure cohorts
    "test_serving_service",  # trains a champion per outcome, then serves them in-process
    "test_serving_e2e", "test_ui_browser", "test_packaging", "test_training_cli",
    "test_death_model",  # trains the death model on 3,000 procedures, scores a fresh 10,000
})
#: Names whose use (in the test, its parameters or its fixtures) makes a test slow.
SLOW_NEEDS = frozenset({"xiong_cohort", "pkp_cohort", "ensure_trained_store"})


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
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES or _needs(item) & SLOW_NEEDS:
            item.add_marker(pytest.mark.slow)
