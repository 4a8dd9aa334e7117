"""Data tests: the pre-operative set holds nothing measured during or after surgery."""

import numpy as np
import pandas as pd
import pytest

from features.assemble import build_feature_table
from features.catalog import FEATURES, FEATURES_BY_NAME, feature_names
from features.contract import COLLAPSED_NEIGHBOUR_MM, NATIVE_BONE_MAX_HU
from features.schema import IMAGING_BY_TIMEPOINT, TABLES
from features.validate import validate_raw


def test_preop_features_are_all_preop_timed():
    names = feature_names("preop")
    assert names, "empty pre-op set"
    assert {FEATURES_BY_NAME[n].timing for n in names} == {"preop"}


def test_postop_adds_procedure_and_cement_but_never_followup():
    pre, post = set(feature_names("preop")), set(feature_names("postop"))
    assert pre < post
    assert {"cement_volume_ml", "npec_count", "reduction_rate_pct", "leakage_intradiscal_spike"} <= post - pre
    assert not any(FEATURES_BY_NAME[n].timing == "followup" for n in post)
    assert "compression_rate_increase_pct" not in post  # CRI defines the outcome


def test_unknown_feature_set_is_refused():
    with pytest.raises(ValueError, match="preop, postop"):
        feature_names("everything")


def _scramble_after_surgery(raw: dict[str, pd.DataFrame], rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Change every value that becomes known at or after surgery, leaving pre-op values alone."""
    out = {k: v.copy() for k, v in raw.items()}
    proc = out["procedures"]
    for col in TABLES["procedures"].columns:
        if col.timing in ("intraop", "postop") and col.kind == "float":
            proc[col.name] = [f"{rng.uniform(col.min, col.max):.2f}" for _ in range(len(proc))]
        elif col.timing in ("intraop", "postop") and col.kind == "binary":
            proc[col.name] = [str(rng.integers(0, 2)) for _ in range(len(proc))]
        elif col.timing in ("intraop", "postop") and col.allowed:
            proc[col.name] = list(rng.choice(col.allowed, len(proc)))
    img = out["imaging"]
    post_rows = img["timepoint"] != "preop"
    for col in TABLES["imaging"].columns:
        if col.timing == "key":
            continue
        if col.name == "cement_larger_side_volume_ml":  # at most what was injected (a contract rule)
            injected = img.loc[post_rows, "procedure_id"].map(proc.set_index("procedure_id")["cement_volume_ml"].astype(float))
            img.loc[post_rows, col.name] = [f"{rng.uniform(0, v):.2f}" for v in injected]
        elif col.kind == "float":
            # Neighbours' HU as native bone: above it they would need a cemented neighbour.
            hi = min(col.max, NATIVE_BONE_MAX_HU) if col.name.startswith("hu_") and "adjacent" in col.name else col.max
            # Heights of normal vertebrae: a lower one could read as the pre-operative height in cm (a contract rule).
            lo = max(col.min, COLLAPSED_NEIGHBOUR_MM) if col.name.endswith("height_mm") else col.min
            img.loc[post_rows, col.name] = [f"{rng.uniform(lo, hi):.2f}" for _ in range(post_rows.sum())]
        elif col.kind == "binary":
            img.loc[post_rows, col.name] = [str(rng.integers(0, 2)) for _ in range(post_rows.sum())]
        elif col.allowed:
            img.loc[post_rows, col.name] = list(rng.choice(col.allowed, post_rows.sum()))
    out["events"] = out["events"].iloc[:1]
    out["patients"]["last_followup_date"] = "2024-12-31"
    return out


def test_preop_features_do_not_move_when_postop_information_changes(raw):
    """Perturbation test: scramble intra-/post-op/follow-up values; pre-op features are identical."""
    before = build_feature_table(validate_raw(raw), "preop")
    for seed in range(5):
        scrambled = _scramble_after_surgery(raw, np.random.default_rng(seed))
        after = build_feature_table(validate_raw(scrambled), "preop")
        pd.testing.assert_frame_equal(before, after)
        # ...while the post-op set does move, so the scramble reached the data.
        assert not build_feature_table(validate_raw(scrambled), "postop").equals(build_feature_table(validate_raw(raw), "postop"))


def test_preop_features_survive_absent_postop_imaging(raw):
    tables = validate_raw(raw)
    without = dict(tables, imaging=tables["imaging"][tables["imaging"]["timepoint"] == "preop"])
    pd.testing.assert_frame_equal(build_feature_table(without, "preop"), build_feature_table(tables, "preop"))


def test_every_catalogued_feature_is_computed():
    assert len({f.name for f in FEATURES}) == len(FEATURES)
    assert set(IMAGING_BY_TIMEPOINT) == {"preop", "postop", "followup"}
