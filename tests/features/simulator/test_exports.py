"""Exports as hospitals send them: missing examinations (not at random), site and
measurement metadata, and the messy-but-valid values behind the export-quirks switch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.assemble import features_from_records
from features.records import tables_to_records
from features.schema import OPTIONAL_COLUMNS, TABLES
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from modelstore.inputs import missing_inputs


@pytest.fixture(scope="module")
def pkp_export():
    tables, truth = simulate(load_profile("yassavoly2025-pkp"), 20_000, seed=4)
    return validate_raw(tables), truth


def _by_patient(typed, timepoint: str, column: str) -> pd.Series:
    imaging = typed["imaging"]
    values = imaging[imaging["timepoint"] == timepoint].set_index("procedure_id")[column]
    procedures = typed["procedures"].set_index("procedure_id")
    return values.isna().groupby(procedures["patient_id"]).first()


def test_frailer_patients_miss_more_examinations(pkp_export):
    """Missingness block: frailer patients (older, sarcopenic...) miss more post-op CT and
    DXA (missing not at random); overall shares near the profile's."""
    typed, _ = pkp_export
    profile = load_profile("yassavoly2025-pkp")
    patients = typed["patients"].set_index("patient_id")
    age = typed["procedures"].groupby("patient_id")["age_years"].first()
    no_ct = _by_patient(typed, "postop", "cement_larger_side_volume_ml")
    no_dxa = patients["dxa_bmd_g_cm2"].isna()
    old, young = age >= age.quantile(0.8), age <= age.quantile(0.2)
    assert no_ct[old].mean() > 1.3 * no_ct[young].mean()
    assert no_dxa[old].mean() > 1.3 * no_dxa[young].mean()
    assert no_ct.mean() == pytest.approx(profile.missingness.postop_ct.value, abs=0.05)
    assert no_dxa.mean() == pytest.approx(profile.missingness.dxa.value, abs=0.04)
    no_mri = _by_patient(typed, "preop", "ivc")
    assert no_mri.mean() == pytest.approx(profile.missingness.preop_mri.value, abs=0.02)
    # Without a post-op CT the post-op HU of the neighbours are missing too.
    assert (_by_patient(typed, "postop", "hu_upper_adjacent") >= no_ct).all()


def test_scoring_names_the_inputs_a_missing_examination_removed(pkp_export):
    """The features still compute for every record, and the missing-input report (what the
    service returns) names the fields a missing post-op CT took away."""
    typed, _ = pkp_export
    records = tables_to_records(typed).head(3000)
    features = features_from_records(records, "postop")
    assert len(features) == len(records)
    report = missing_inputs(records, features, "xgboost")
    no_ct = records["cement_larger_side_volume_ml_postop"].isna().to_numpy()
    assert no_ct.any() and (~no_ct).any()
    named = np.array([any(d["field"] == "imaging.postop.cement_larger_side_volume_ml" for d in r) for r in report])
    assert (named == no_ct).all()


def test_metadata_columns_follow_their_optional_specs(pkp_export):
    """DXA site with its own T-score, CT tube voltage and contrast, the leak side and the
    fracture criterion: present, typed and inside the ranges of features.schema.OPTIONAL_COLUMNS."""
    typed, _ = pkp_export
    for table, specs in OPTIONAL_COLUMNS.items():
        assert set(typed[table].columns) == set(TABLES[table].column_names + [c.name for c in specs])
        for spec in specs:
            values = typed[table][spec.name].dropna()
            if spec.allowed:
                assert set(values) <= set(spec.allowed), spec.name
            elif spec.kind == "binary":
                assert set(values.astype(int)) <= {0, 1}, spec.name
            else:
                assert values.astype(float).between(spec.min, spec.max).all(), spec.name
    patients = typed["patients"]
    sites = patients["dxa_site"].value_counts(normalize=True)
    assert set(sites.index) == {"lumbar_spine", "total_hip", "femoral_neck"}
    # Each site uses its own young-adult reference: for one BMD the hip T-score is higher
    # than the spine's (lower reference mean), so the T-score is not a function of BMD alone.
    women = patients[patients["sex"] == "F"]
    hip = women[(women["dxa_site"] == "total_hip") & women["dxa_bmd_g_cm2"].between(0.68, 0.72)]["dxa_t_score"].mean()
    spine = women[(women["dxa_site"] == "lumbar_spine") & women["dxa_bmd_g_cm2"].between(0.68, 0.72)]["dxa_t_score"].mean()
    assert hip > spine + 0.4
    assert (typed["events"]["fracture_criterion"] == "symptomatic_imaging_confirmed").all()


def test_contrast_and_tube_voltage_shift_the_recorded_hu():
    """site-c mixes protocols: contrast raises and a higher tube voltage lowers the recorded
    trabecular HU of the same bone (the true risk uses the true bone)."""
    tables, _ = simulate(load_profile("site-c-older-frail-pkp"), 20_000, seed=5)
    pre = tables["imaging"][tables["imaging"]["timepoint"] == "preop"]
    contrast = pre.groupby("ct_contrast")["hu_upper_adjacent"].mean()
    assert contrast[1] > contrast[0] + 5
    kvp = pre.groupby("ct_tube_voltage_kvp")["hu_upper_adjacent"].mean()
    assert kvp.index.min() < kvp.index.max() and kvp[kvp.index.min()] > kvp[kvp.index.max()]


def test_export_quirks_are_off_in_the_shipped_profiles_and_emit_real_values_when_on():
    """The switch emits the values real exports carry (vertebra plana neighbours < 8 mm,
    follow-up heights < 3 mm, ~1,000 HU for a neighbour cemented in the same session, S1
    events); off, none of them appear (the contract that accepts them lands separately)."""
    for name in ("xiong2021-pvp", "yassavoly2025-pkp"):
        assert not load_profile(name).export_quirks.enabled
    profile = load_profile("yassavoly2025-pkp")
    off, _ = simulate(profile, 8000, seed=6)
    on_profile = profile.model_copy(update={"export_quirks": profile.export_quirks.model_copy(
        update={"enabled": True, "vertebra_plana_neighbour_share": 0.02, "near_complete_collapse_share": 0.2,
                "sacral_event_share": 0.01})})
    on, _ = simulate(on_profile, 8000, seed=6)

    def quirks(t):
        im = t["imaging"]
        adjacent = im[["upper_adjacent_height_mm", "lower_adjacent_height_mm"]]
        post = im[im["timepoint"] == "postop"][["hu_upper_adjacent", "hu_lower_adjacent"]]
        return {
            "plana": int((adjacent < 8).sum().sum()),
            "collapse": int((im.loc[im["timepoint"] == "followup", "vertebral_height_mm"] < 3).sum()),
            "cemented_neighbour_hu": int((post > 600).sum().sum()),
            "sacral": int((t["events"]["fracture_level"] == "S1").sum()),
        }

    assert all(v == 0 for v in quirks(off).values()), quirks(off)
    assert all(v > 0 for v in quirks(on).values()), quirks(on)
    # Everything else is the same cohort: quirks change values, not patients or events.
    assert off["procedures"].equals(on["procedures"])
