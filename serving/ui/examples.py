"""Simulated example patients for the review page (never real patients).

Drawn from the cohort simulator with a fixed seed, so the same three examples appear on
every start: the procedures with the lowest, middle and highest true risk of the
profile's main outcome, among those with complete imaging.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from features.records import nest_record, tables_to_records
from features.simulator import load_profile, simulate
from features.validate import validate_raw

EXAMPLE_SEED = 20261121


def _json_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NaT:
        return None
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d")
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def flat_to_json_record(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat record (pandas values) as a JSON-ready nested record."""
    return nest_record({k: _json_value(v) for k, v in flat.items()})


def example_records(profile: str = "xiong2021-pvp", outcome: str = "cemented_refracture", n_cohort: int = 400) -> list[dict[str, Any]]:
    """Three nested example records with a label each: lower, typical and higher true risk."""
    tables, truth = simulate(load_profile(profile), n_procedures=n_cohort, seed=EXAMPLE_SEED)
    flat = tables_to_records(validate_raw(tables))
    flat = flat.merge(truth[["procedure_id", f"p_{outcome}"]], on="procedure_id")
    complete = flat.dropna(subset=["hu_index_preop", "psoas_area_cm2_preop", "ivc_preop", "cement_touches_upper_endplate_postop"])
    if len(complete) >= 3:
        flat = complete
    ranked = flat.sort_values(f"p_{outcome}", kind="stable").reset_index(drop=True)
    picks = [("Example A: lower simulated risk", 0), ("Example B: typical simulated risk", len(ranked) // 2),
             ("Example C: higher simulated risk", len(ranked) - 1)]
    out = []
    for label, i in picks:
        row = ranked.drop(columns=[f"p_{outcome}"]).iloc[i].to_dict()
        out.append({"label": label, "record": flat_to_json_record(row)})
    return out
