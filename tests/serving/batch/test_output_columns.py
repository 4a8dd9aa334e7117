"""docs/serving.md, "Output columns", is what the batch scorer writes: every column the
scorer returns (with and without --explain, the death model served) matches exactly one
row of the table, every row matches a column, and the columns come in the documented
order. Both engines take their columns from this scorer (the Spark schema is its output on
the example record), so one check covers both."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from serving_support import OUTCOMES, ensure_trained_store

ROOT = Path(__file__).resolve().parents[3]


def documented_rows() -> list[str]:
    """The first cells of the table under "### Output columns" in docs/serving.md."""
    text = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    section = text.split("### Output columns", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def pattern(row: str, outcomes: list[str], horizons: list[str]) -> re.Pattern:
    regex = re.escape(row)
    regex = regex.replace(re.escape("<outcome>"), "(?:" + "|".join(outcomes) + ")")
    regex = regex.replace(re.escape("<m>"), "(?:" + "|".join(horizons) + ")")
    regex = regex.replace(re.escape("<feature>"), r"\w+")
    return re.compile(regex)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    store = ensure_trained_store(tmp_path_factory.getbasetemp())
    saved = {k: os.environ.get(k) for k in ("REFRACTURE_MLFLOW_DIR", "MLFLOW_TRACKING_URI", "REFRACTURE_MODEL_VERSIONS")}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("REFRACTURE_MODEL_VERSIONS", None)
    os.environ["REFRACTURE_MLFLOW_DIR"] = str(store / "mlflow")
    try:
        from serving.scoring.loading import load_from_registry

        yield load_from_registry()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize("explain", [False, True])
def test_the_documented_columns_are_the_scorers(models, explain):
    from features.labels import DEATH_TARGET
    from modelstore.estimand import DEFAULT_HORIZONS_MONTHS
    from serving.batch.pandas_engine import output_template

    outcomes = [m.outcome for m in models if m.outcome != DEATH_TARGET]
    assert outcomes == list(OUTCOMES), "the table's order is the served order"
    assert any(m.outcome == DEATH_TARGET for m in models), "the store serves a death model: its rows are checked too"
    horizons = [f"{h:g}" for h in DEFAULT_HORIZONS_MONTHS]
    rows = documented_rows()
    assert rows[:2] == ["procedure_id", "horizon_months"] and rows[-2:] == ["death_p_24m", "death_model_version"]
    patterns = {row: pattern(row, outcomes, horizons) for row in rows}
    explain_only = {"<outcome>_base_value", "<outcome>__<feature>"}

    columns = list(output_template(models, explain=explain).columns)
    matched: dict[str, str] = {}
    for column in columns:
        hits = [row for row, p in patterns.items() if p.fullmatch(column)]
        assert len(hits) == 1, f"column {column!r} matches {hits or 'no row'} of docs/serving.md, Output columns"
        matched[column] = hits[0]
    used = set(matched.values())
    expected = set(rows) - (set() if explain else explain_only)
    assert used == expected, f"documented but not written: {sorted(expected - used)}"

    # The documented order: the two leading columns, each outcome's columns together, death last.
    owner = [next((o for o in outcomes if c.startswith(o + "_")), None) for c in columns]
    assert columns[:2] == ["procedure_id", "horizon_months"]
    assert columns[-2:] == ["death_p_24m", "death_model_version"]
    served = [o for i, o in enumerate(owner) if o is not None and (i == 0 or owner[i - 1] != o)]
    assert served == outcomes, "each outcome's columns come together, in the served order"
    for o in outcomes:
        assert [c for c in columns if c.startswith(f"{o}_p_")] == [f"{o}_p_{h}m" for h in horizons]
