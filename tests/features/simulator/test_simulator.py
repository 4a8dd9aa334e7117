"""The cohort simulator: valid exports, determinism, and the clinical structure it must carry.

Structure (clinical-evidence.md §1-§3) is checked on exports run through the real
pipeline (``simulated_cohorts``), or directly on ``simulate`` output for small checks.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import yaml

from features.levels import LEVEL_INDEX
from features.simulator import available_profiles, load_profile, simulate
from features.simulator.profile import Profile
from features.validate import validate_raw
from refracture.commands.synth import run_synth
from simulated_cohorts import pkp_cohort, xiong_cohort

PROFILES = ("xiong2021-pvp", "yassavoly2025-pkp", "site-c-older-frail-pkp", "site-d-frail-registry-pkp")


# ----------------------------------------------------------------------------- profiles


def test_shipped_profiles_load():
    assert set(PROFILES) <= set(available_profiles())
    for name in PROFILES:
        profile = load_profile(name)
        assert isinstance(profile, Profile) and profile.name == name and profile.horizon_months == 24


def test_unknown_profile_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="xiong2021-pvp"):
        load_profile("no-such-profile")


def _profile_dict(name: str) -> dict:
    from importlib import resources

    return yaml.safe_load((resources.files("features") / "profiles" / f"{name}.yaml").read_text(encoding="utf-8"))


def test_a_number_without_a_source_is_rejected(tmp_path):
    spec = _profile_dict("xiong2021-pvp")
    del spec["imaging"]["ivc"]["source"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="source"):
        load_profile(path)


def test_an_unknown_covariate_is_rejected(tmp_path):
    spec = _profile_dict("xiong2021-pvp")
    spec["outcomes"]["remote_fracture"]["terms"]["ivc"] = {"odds_ratio": 2.0, "source": "x-test"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="non-patient-level"):
        load_profile(path)


# ------------------------------------------------------------------ validity, determinism


@pytest.mark.parametrize("name", PROFILES)
def test_export_passes_validation_and_has_one_row_per_level(name):
    tables, truth = simulate(load_profile(name), n_procedures=3000, seed=11)
    typed = validate_raw(tables)
    assert len(typed["procedures"]) == 3000
    assert len(typed["imaging"]) == 3 * 3000
    outcomes = ("cemented_refracture", "adjacent_fracture", "remote_fracture")
    assert list(truth.columns) == (["procedure_id"] + [f"p_{o}_{m}m" for o in outcomes for m in (3, 6, 12, 24)]
                                   + [f"p_death_{m}m" for m in (3, 6, 12, 24)] + [f"p_{o}" for o in outcomes])
    for o in outcomes:  # the deprecated alias is the 24-month crude risk
        assert (truth[f"p_{o}"] == truth[f"p_{o}_24m"]).all()
    assert truth["procedure_id"].tolist() == typed["procedures"]["procedure_id"].tolist()


def test_same_seed_same_tables_other_seed_other_tables():
    profile = load_profile("yassavoly2025-pkp")
    a, ta = simulate(profile, 1500, seed=3)
    b, tb = simulate(profile, 1500, seed=3)
    c, _ = simulate(profile, 1500, seed=4)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    pd.testing.assert_frame_equal(ta, tb)
    assert not a["procedures"].equals(c["procedures"])


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_synth_writes_the_same_bytes_for_the_same_seed(tmp_path, fmt):
    run_synth(n=1500, seed=9, profile="yassavoly2025-pkp", out=tmp_path / "a", fmt=fmt)
    run_synth(n=1500, seed=9, profile="yassavoly2025-pkp", out=tmp_path / "b", fmt=fmt)
    first = _digests(tmp_path / "a")
    assert set(first) == {f"{t}.{fmt}" for t in ("patients", "procedures", "imaging", "events")} | {"truth.parquet", "simulation.json", "export.yaml"}
    assert first == _digests(tmp_path / "b")


@pytest.mark.parametrize("draw", [False, True])
def test_synth_writes_the_provenance_training_reads(tmp_path, draw):
    import json

    from training.provenance import read_profile

    run_synth(n=500, seed=5, profile="yassavoly2025-pkp", out=tmp_path, fmt="csv", draw_effects=draw)
    meta = json.loads((tmp_path / "simulation.json").read_text(encoding="utf-8"))
    assert read_profile(tmp_path) == "yassavoly2025-pkp"
    assert meta["seed"] == 5 and meta["n"] == 500 and meta["draw_effects"] is draw
    assert meta["effects_seed"] == (5 if draw else None)
    assert meta["truth_horizons_months"] == [3, 6, 12, 24]


def test_synth_writes_nothing_when_the_simulated_export_is_invalid(tmp_path, monkeypatch):
    import refracture.commands.synth as synth_command
    from features.validate import RawDataError

    real = synth_command.simulate

    def broken(profile, n_procedures, seed, **kwargs):
        tables, truth = real(profile, n_procedures, seed, **kwargs)
        tables["procedures"].loc[0, "cement_volume_ml"] = 40.0  # outside 0.3-15 mL
        return tables, truth

    monkeypatch.setattr(synth_command, "simulate", broken)
    with pytest.raises(RawDataError, match="cement_volume_ml"):
        run_synth(n=300, seed=1, profile="xiong2021-pvp", out=tmp_path / "out", fmt="csv")
    assert not (tmp_path / "out").exists()


def test_synth_export_reads_back_and_validates(tmp_path):
    from features.io import read_raw

    run_synth(n=800, seed=1, profile="xiong2021-pvp", out=tmp_path, fmt="csv")
    typed = validate_raw(read_raw(tmp_path))
    assert len(typed["procedures"]) == 800
    assert len(pd.read_parquet(tmp_path / "truth.parquet")) == 800


# ------------------------------------------------------------------------- cohort shape


def test_pkp_levels_and_levels_per_session_follow_yassavoly_2025():
    data = pkp_cohort().data
    per_patient = data.groupby("patient_id").size().value_counts(normalize=True)
    published = {1: 0.669, 2: 0.251, 3: 0.060, 4: 0.012, 5: 0.008}
    for k, share in published.items():
        assert abs(per_patient.get(k, 0.0) - share) < 0.01, (k, per_patient.get(k))
    levels = data["level"].value_counts(normalize=True)
    assert set(levels.index) <= {"T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"}
    assert abs(levels["L1"] - 0.244) < 0.02 and abs(levels["T12"] - 0.192) < 0.02
    assert (data["technique"] == "PKP").all()


def test_pkp_demographics_and_cement_follow_yassavoly_2025():
    data = pkp_cohort().data
    patients = data.groupby("patient_id").first()
    assert abs(patients["age_years"].mean() - 73.3) < 0.5
    assert abs(patients["sex_female"].mean() - 0.729) < 0.015
    assert abs(data["cement_volume_ml"].mean() - 3.7) < 0.1
    assert 0.8 < data["cement_volume_ml"].std() < 1.0
    assert abs(patients["brace_prescribed"].mean() - 31 / 251) < 0.015


def test_xiong_cohort_is_single_level_pvp_t4_to_l5():
    data = xiong_cohort().data
    assert (data["technique"] == "PVP").all()
    assert data.groupby("patient_id").size().max() == 1
    idx = data["level"].map(LEVEL_INDEX)
    assert idx.min() >= LEVEL_INDEX["T4"] and idx.max() <= LEVEL_INDEX["L5"]


# ---------------------------------------------------------------------- clinical structure


def test_hu_correlates_with_bmd_age_and_sex():
    data = xiong_cohort().data
    hu = data["hu_adjacent_min"]
    assert hu.corr(data["dxa_bmd_g_cm2"]) > 0.3
    assert hu.corr(data["age_years"]) < -0.05
    assert hu[data["sex_female"] == 0].mean() > hu[data["sex_female"] == 1].mean()


def test_sarcopenia_rises_with_age():
    data = xiong_cohort().data
    old, young = data[data["age_years"] >= 82], data[data["age_years"] < 74]
    assert old["sarcopenia"].mean() > young["sarcopenia"].mean() + 0.05
    assert old["psoas_muscle_index_cm2_m2"].mean() < young["psoas_muscle_index_cm2_m2"].mean()
    assert old["paraspinal_fat_fraction_pct"].mean() > young["paraspinal_fat_fraction_pct"].mean()
    assert 0.55 < data["sarcopenia"].mean() < 0.85  # present in 72.5 % of OVCF patients (Lin 2025)


def test_ivc_raises_height_restoration_and_npec():
    data = xiong_cohort().data
    ivc, other = data[data["ivc"] == 1], data[data["ivc"] == 0]
    extra = ivc["reduction_rate_pct"].mean() - other["reduction_rate_pct"].mean()
    assert 7.2 <= extra <= 12.6, extra  # Xiong 2021: +7.2-12.6 points
    assert (ivc["npec_count"] >= 1).mean() > 0.90  # 94.7 % with IVC
    assert 0.65 < (other["npec_count"] >= 1).mean() < 0.85  # 78.4 % without


def test_pkp_restores_more_height_than_pvp():
    pvp = xiong_cohort().data
    pkp = pkp_cohort().data
    assert pkp.loc[pkp["ivc"] == 0, "reduction_rate_pct"].mean() > pvp.loc[pvp["ivc"] == 0, "reduction_rate_pct"].mean() + 5


@pytest.mark.parametrize("cohort", [xiong_cohort, pkp_cohort], ids=["xiong", "pkp"])
def test_spike_leakage_drives_adjacent_fracture(cohort):
    data = cohort().data
    spike = data.loc[data["leakage_intradiscal_spike"] == 1, "p_adjacent_fracture"].mean()
    none = data.loc[data["leakage_intradiscal"] == 0, "p_adjacent_fracture"].mean()
    assert spike > 3 * none
    labelled = data[data["adjacent_fracture"].notna()]
    assert labelled.loc[labelled["leakage_intradiscal_spike"] == 1, "adjacent_fracture"].mean() > \
        2 * labelled.loc[labelled["leakage_intradiscal"] == 0, "adjacent_fracture"].mean()


def test_systemic_factors_drive_remote_fracture():
    data = pkp_cohort().data
    p = data["p_remote_fracture"]
    assert p[data["glucocorticoids_long_term"] == 1].mean() > 1.5 * p[data["glucocorticoids_long_term"] == 0].mean()
    assert p[data["prior_vertebral_fractures_n"] >= 2].mean() > p[data["prior_vertebral_fractures_n"] == 0].mean()
    assert p[data["sarcopenia"] == 1].mean() > p[data["sarcopenia"] == 0].mean()
    assert p[data["on_anti_osteoporosis_therapy"] == 0].mean() > p[data["on_anti_osteoporosis_therapy"] == 1].mean()
    assert p[data["denosumab_discontinued"] == 1].mean() > 1.5 * p[data["denosumab_discontinued"] == 0].mean()
    assert p[data["brace_prescribed"] == 0].mean() > p[data["brace_prescribed"] == 1].mean()
    assert data["p_remote_fracture"].corr(data["dxa_bmd_g_cm2"]) < 0


@pytest.mark.parametrize("cohort", [xiong_cohort, pkp_cohort], ids=["xiong", "pkp"])
def test_truth_probabilities_are_probabilities(cohort):
    data = cohort().data
    for col in ("p_cemented_refracture", "p_remote_fracture"):
        assert ((data[col] > 0) & (data[col] < 1)).all(), col
    assert ((data["p_adjacent_fracture"] >= 0) & (data["p_adjacent_fracture"] < 1)).all()


def test_a_treated_neighbour_gets_no_adjacent_fracture():
    """In multi-level sessions a level whose neighbours were both treated has no adjacent
    risk, and every fracture at a treated level is that level's cemented refracture."""
    cohort = pkp_cohort()
    procedures = cohort.tables["procedures"]
    treated = procedures.assign(idx=procedures["level"].map(LEVEL_INDEX))
    levels = treated.groupby("patient_id")["idx"].apply(set)
    boxed = [all(n in levels[p] or n < 1 or n > 17 for n in (i - 1, i + 1))
             for p, i in zip(treated["patient_id"], treated["idx"])]
    boxed_ids = treated.loc[boxed, "procedure_id"]
    assert len(boxed_ids) > 50
    data = cohort.data.loc[boxed_ids]
    assert (data["p_adjacent_fracture"] == 0).all()
    assert (data["adjacent_fracture_event"] == 0).all()


def test_cemented_refractures_meet_xiongs_criterion():
    """Follow-up imaging at a cemented refracture: CRI >= 15 points and bone marrow edema;
    without one, CRI stays below 15 (gradual height loss is not a refracture)."""
    from features.assemble import compute_all_features

    cohort = xiong_cohort()
    imaging = cohort.tables["imaging"]
    edema = imaging[imaging["timepoint"] == "followup"].set_index("procedure_id")["bone_marrow_edema"]
    cri = compute_all_features(cohort.tables)["compression_rate_increase_pct"]  # a follow-up feature
    data = cohort.data[["cemented_refracture_event"]].join(cri).join(edema.rename("edema_followup"))
    refractured = data[data["cemented_refracture_event"] == 1]
    assert len(refractured) > 1000
    # A body already below ~28 % of its neighbours' height after surgery cannot lose 15
    # more points above the contract's 3 mm floor: its follow-up height is recorded at
    # the floor (the export quirk "near-complete collapse" writes the true < 3 mm value).
    heights = imaging[imaging["timepoint"] == "followup"].set_index("procedure_id")["vertebral_height_mm"]
    floored = heights.reindex(refractured.index) <= 3.0
    assert (refractured["compression_rate_increase_pct"] >= 15)[~floored].all()
    assert floored.mean() < 0.02  # ~1 %: the most collapsed bodies (pre-op CR down to 25 %)
    assert (refractured["edema_followup"] == 1).all()
    assert (data.loc[data["cemented_refracture_event"] == 0, "compression_rate_increase_pct"] < 15).all()


@pytest.mark.parametrize("cohort", [xiong_cohort, pkp_cohort], ids=["xiong", "pkp"])
def test_censoring_is_modest_and_includes_loss_and_death(cohort):
    c = cohort()
    patients = c.tables["patients"]
    first_surgery = c.tables["procedures"].groupby("patient_id")["surgery_date"].min()
    followed = (patients.set_index("patient_id")["last_followup_date"] - first_surgery).dt.days / (365.25 / 12)
    died = patients.set_index("patient_id")["death_date"].notna()
    assert 0.75 < (followed >= 24).mean() < 0.95
    assert died[followed < 24].mean() > 0.3  # early censoring is partly death...
    assert (~died[followed < 24]).mean() > 0.1  # ...and partly loss to follow-up


# --------------------------------------------------------------------------- drawn effects


def test_draw_effects_draws_each_published_effect_from_its_ci_seeded():
    """--draw-effects: every odds ratio with a published CI is drawn (log-normal, SE from the
    CI), the same seed gives the same world, other seeds other worlds; terms without a CI
    stay; the spread across worlds matches the published CI width."""
    from features.simulator.pipeline import draw_effects

    profile = load_profile("xiong2021-pvp")
    a = draw_effects(profile, np.random.default_rng(1))
    b = draw_effects(profile, np.random.default_rng(1))
    assert a == b
    ivc = [draw_effects(profile, np.random.default_rng(s)).outcomes["cemented_refracture"].terms["ivc"].odds_ratio
           for s in range(400)]
    lo, hi = profile.outcomes["cemented_refracture"].terms["ivc"].ci
    se = (np.log(hi) - np.log(lo)) / 3.92
    assert abs(np.std(np.log(ivc)) / se - 1) < 0.1
    assert abs(np.mean(np.log(ivc)) - np.log(32.0)) < 3 * se / np.sqrt(400)
    kept = a.outcomes["cemented_refracture"].terms["female"]  # assumed size, no CI
    assert kept == profile.outcomes["cemented_refracture"].terms["female"]


def test_a_drawn_world_keeps_the_profiles_incidence_and_a_valid_export():
    profile = load_profile("yassavoly2025-pkp")
    tables, truth = simulate(profile, 6000, seed=2)
    drawn_tables, drawn = simulate(profile, 6000, seed=2, effects_seed=11)
    validate_raw(drawn_tables)
    assert not truth["p_cemented_refracture_24m"].equals(drawn["p_cemented_refracture_24m"])
    for o in ("cemented_refracture", "adjacent_fracture", "remote_fracture"):
        # Intercepts are re-solved on the same patients so the mean net risk is unchanged;
        # the crude mean moves only through who dies first (< 3 % relative).
        assert drawn[f"p_{o}_24m"].mean() == pytest.approx(truth[f"p_{o}_24m"].mean(), rel=0.03)


def test_docs_list_every_effect_with_its_value():
    """docs/simulator.md's effect table is generated from the profiles: every term of every
    shipped profile appears there with its odds ratio (catches a profile edit without the docs)."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "simulator.md").read_text(encoding="utf-8")
    for name in PROFILES:
        for outcome, model in load_profile(name).outcomes.items():
            for key, term in model.terms.items():
                row = next((line for line in doc.splitlines()
                            if line.startswith(f"| {outcome.replace('_', ' ')} | `{key}`")), None)
                assert row is not None, (name, outcome, key)
                assert f"{term.odds_ratio:g}" in row, (name, outcome, key, term.odds_ratio)
