"""A later export of the same simulated site: the same patients, their follow-up grown."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from features.simulator import load_profile, simulate
from features.simulator.pipeline import MIN_DAYS_BEFORE_CUT
from features.validate import validate_raw

PROFILE = "yassavoly2025-pkp"


@pytest.fixture(scope="module")
def cuts():
    return {cut: simulate(PROFILE, 1200, seed=5, data_cut=cut)
            for cut in (dt.date(2019, 3, 31), dt.date(2020, 3, 31))}


def test_the_profiles_own_cut_gives_the_usual_export():
    cut = load_profile(PROFILE).followup.data_cut
    plain, truth = simulate(PROFILE, 300, seed=2)
    at_cut, truth_at_cut = simulate(PROFILE, 300, seed=2, data_cut=cut)
    for name in plain:
        pd.testing.assert_frame_equal(plain[name], at_cut[name])
    pd.testing.assert_frame_equal(truth, truth_at_cut)


def test_a_later_cut_shows_more_of_the_same_follow_up(cuts):
    (early_cut, (early, early_truth)), (late_cut, (late, _)) = sorted(cuts.items())
    validate_raw(early)
    validate_raw(late)
    ep, lp = early["procedures"].set_index("procedure_id"), late["procedures"].set_index("procedure_id")
    assert len(ep) < len(lp) and set(ep.index) <= set(lp.index)
    pd.testing.assert_frame_equal(ep, lp.loc[ep.index])  # the same procedures, the same values
    assert ep["surgery_date"].max() <= pd.Timestamp(early_cut) - pd.Timedelta(days=MIN_DAYS_BEFORE_CUT)
    ei = early["imaging"][early["imaging"]["timepoint"] != "followup"].reset_index(drop=True)
    li = late["imaging"][late["imaging"]["procedure_id"].isin(ep.index) & (late["imaging"]["timepoint"] != "followup")]
    pd.testing.assert_frame_equal(ei, li.reset_index(drop=True))  # pre- and post-operative images alike
    epat = early["patients"].set_index("patient_id")
    lpat = late["patients"].set_index("patient_id").loc[epat.index]
    assert (epat["last_followup_date"] <= lpat["last_followup_date"]).all()
    assert epat["last_followup_date"].max() <= pd.Timestamp(early_cut)
    assert (lpat["last_followup_date"] > epat["last_followup_date"]).any()
    # A death or fracture seen in the early export is the same one later (none taken back).
    died = epat["death_date"].notna()
    pd.testing.assert_series_equal(epat.loc[died, "death_date"], lpat.loc[died, "death_date"])
    ee = early["events"][early["events"]["fracture_level"] != "S1"]
    le = late["events"].merge(ee[["patient_id", "fracture_level", "event_date"]], how="inner")
    assert len(le) == len(ee)
    assert len(late["events"]) > len(early["events"])
    # The truth of a procedure does not depend on when the export was drawn.
    late_truth = cuts[late_cut][1].set_index("procedure_id").loc[early_truth["procedure_id"]]
    pd.testing.assert_frame_equal(early_truth.set_index("procedure_id"), late_truth)


def test_an_earlier_cut_of_a_registry_site_records_deaths_and_fractures_until_that_cut():
    """The registry-death profile drawn on an earlier date: its export.yaml states that
    date, no date of the export is after it (``ascertainment_problems``), deaths after the
    last visit are still recorded up to it, and they are the same deaths the profile's own
    export records (a later cut only shows more of the same follow-up)."""
    from features.ascertainment import ascertainment_problems
    from features.simulator.export import ascertainment_of

    profile = load_profile("site-d-frail-registry-pkp")
    cut = dt.date(profile.followup.data_cut.year - 2, 6, 30)
    early, _ = simulate(profile, 1500, seed=8, data_cut=cut)
    late, _ = simulate(profile, 1500, seed=8)
    typed = validate_raw(early)
    asc = ascertainment_of(profile, cut)
    assert (asc.data_cut, asc.deaths_until, asc.fractures_until) == (cut, "data_cut", "death_or_data_cut")
    assert ascertainment_problems(asc, typed) == []
    pt = typed["patients"].set_index("patient_id")
    died = pt["death_date"].notna()
    assert died.any() and (pt.loc[died, "death_date"] > pt.loc[died, "last_followup_date"]).mean() > 0.9
    later = validate_raw(late)["patients"].set_index("patient_id").loc[pt.index]
    pd.testing.assert_series_equal(pt.loc[died, "death_date"], later.loc[died, "death_date"])
    assert (later["death_date"].notna() & ~died).any()  # deaths after the early cut appear later
