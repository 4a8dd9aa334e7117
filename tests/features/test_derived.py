"""Derived measures against examples worked out by hand (see tests/support/fixtures.py)."""

import pandas as pd
import pytest

from features.assemble import build_feature_table, compute_all_features, features_from_records
from features.labels import build_labels
from features.morphometry import compression_rate_pct
from features.records import records_frame, nest_record, tables_to_records
from features.validate import validate_raw


@pytest.fixture
def feats(raw):
    return compute_all_features(validate_raw(raw))


def test_compression_rate_uses_mean_of_neighbours_and_upper_alone_at_l5():
    cr = compression_rate_pct(pd.Series([18.0, 20.0]), pd.Series([24.0, 25.0]), pd.Series([26.0, float("nan")]))
    assert cr.tolist() == pytest.approx([72.0, 80.0])  # 18/25 ; 20/25 (L5: L4 only)


def test_morphometry_by_hand(feats):
    a = feats.loc["A1-1"]
    assert a["compression_rate_preop_pct"] == pytest.approx(72.0)       # 18 / ((24+26)/2)
    assert a["compression_rate_postop_pct"] == pytest.approx(80.0)      # 20 / 25
    assert a["reduction_rate_pct"] == pytest.approx(8.0)                # 80 - 72 points
    assert a["compression_rate_increase_pct"] == pytest.approx(20.0)    # 80 - 15/25
    assert a["reduction_angle_deg"] == pytest.approx(4.0)               # 15 - 11
    assert a["thoracolumbar_junction"] == 1 and a["level_index"] == 13  # L1
    b = feats.loc["B2-1"]
    assert b["reduction_rate_pct"] == pytest.approx(100 * 25 / 28 - 75.0)


def test_hu_ratio_psoas_index_fill_ratio_npec_by_hand(feats):
    a = feats.loc["A1-1"]
    assert a["hu_adjacent_min"] == 55.0
    assert a["hu_ratio_augmented_adjacent"] == pytest.approx(1100 / 55)   # 20.0
    assert a["psoas_muscle_index_cm2_m2"] == pytest.approx(9.6 / 1.6**2)  # 3.75
    assert a["sarcopenia"] == 1.0                                          # woman, 3.75 < 3.92
    assert a["fill_ratio_total_pct"] == pytest.approx(10.0)                # 3.0 / 30
    assert a["fill_ratio_larger_side_pct"] == pytest.approx(8.0)           # 2.4 / 30 (Zhou: whole body)
    assert a["npec_count"] == 1 and a["npec_lower"] == 1 and a["npec_upper"] == 0
    assert a["leakage_intradiscal_spike"] == 1 and a["leakage_any"] == 1
    assert feats.loc["B2-1", "npec_count"] == 0
    assert feats.loc["C3-1", "npec_count"] == 2
    assert a["bmi_kg_m2"] == pytest.approx(25.0)
    assert a["pain_to_surgery_days"] == 14


def test_missing_ct_stays_missing_not_imputed(feats):
    b = feats.loc["B2-1"]
    for name in ("hu_index_preop", "hu_adjacent_min", "hu_ratio_augmented_adjacent", "psoas_muscle_index_cm2_m2",
                 "sarcopenia", "fill_ratio_total_pct"):
        assert pd.isna(b[name]), name


def test_therapy_flags(feats):
    assert feats.loc["A1-1", "on_anti_osteoporosis_therapy"] == 1
    assert feats.loc["C3-1", "on_anti_osteoporosis_therapy"] == 0
    assert feats.loc["C3-1", "denosumab_discontinued"] == 1


def test_labels_by_distance_and_censoring(raw):
    labels = build_labels(validate_raw(raw), horizon_months=24)
    assert labels.loc["A1-1", "cemented_refracture"] == 1
    assert labels.loc["A1-1", "cemented_refracture_time_days"] == 142
    # C3 treated L1+L2. A later L3 fracture is adjacent to L2; it is not a remote fracture
    # of L1, because it lies next to a treated level. The T11 fracture (two levels above L1)
    # is remote to both.
    assert labels.loc["C3-2", "adjacent_fracture"] == 1
    assert labels.loc["C3-2", "adjacent_fracture_time_days"] == 170
    assert labels.loc["C3-1", "adjacent_fracture"] == 0
    assert labels.loc["C3-1", "remote_fracture"] == 1
    assert labels.loc["C3-1", "remote_fracture_time_days"] == 306
    assert labels.loc["C3-2", "remote_fracture_time_days"] == 306
    # B2: adjacent fracture after 27 months is outside a 24-month horizon -> 0, inside 36 -> 1.
    assert labels.loc["B2-1", "adjacent_fracture"] == 0
    assert build_labels(validate_raw(raw), horizon_months=36).loc["B2-1", "adjacent_fracture"] == 1


def test_censored_before_horizon_gets_no_label(raw):
    raw["patients"].loc[raw["patients"]["patient_id"] == "A1", "last_followup_date"] = "2021-08-01"
    raw["events"] = raw["events"][raw["events"]["patient_id"] != "A1"]
    labels = build_labels(validate_raw(raw), horizon_months=24)
    assert pd.isna(labels.loc["A1-1", "cemented_refracture"])
    assert labels.loc["A1-1", "cemented_refracture_event"] == 0
    assert labels.loc["A1-1", "cemented_refracture_time_days"] == (pd.Timestamp("2021-08-01") - pd.Timestamp("2021-01-10")).days


def test_death_is_a_competing_event(raw):
    """Crude risk: a patient who died without the fracture is a known non-event, not censored."""
    raw["patients"].loc[raw["patients"]["patient_id"] == "C3", ["death_date", "last_followup_date"]] = ["2021-05-01", "2021-05-01"]
    raw["events"] = raw["events"][raw["events"]["patient_id"] != "C3"]
    labels = build_labels(validate_raw(raw))
    assert labels.loc["C3-1", "remote_fracture"] == 0
    assert labels.loc["C3-1", "remote_fracture_status"] == 2
    assert labels.loc["C3-1", "death_status"] == 1
    assert labels.loc["C3-1", "remote_fracture_event"] == 0


@pytest.mark.parametrize("feature_set", ["preop", "postop"])
def test_records_path_equals_tables_path(raw, feature_set):
    """The service's single-record path gives exactly the training features."""
    tables = validate_raw(raw)
    expected = build_feature_table(tables, feature_set)
    flat = tables_to_records(tables)
    pd.testing.assert_frame_equal(features_from_records(flat, feature_set), expected)
    # One record at a time, through JSON-like nested dicts with ISO dates.
    for pid in expected.index:
        row = flat[flat["procedure_id"] == pid].iloc[0].to_dict()
        row = {k: (None if pd.isna(v) else v.strftime("%Y-%m-%d") if hasattr(v, "strftime") else v) for k, v in row.items()}
        one = features_from_records(records_frame([nest_record(row)]), feature_set)
        pd.testing.assert_frame_equal(one, expected.loc[[pid]])
