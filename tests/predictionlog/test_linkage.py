"""Outcomes of a later export linked to the predictions logged before: the training's own
label definitions, maturity by the data cut, later exports superseding earlier ones."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from features.labels import CENSORED, DEATH, EVENT, OUTCOMES, build_labels
from features.validate import validate_raw
from predictionlog.keys import link_key
from predictionlog.linkage import check_data_cut, data_cut_of, horizon_status, link_outcomes
from prediction_log_support import SECRET, log_at_surgery, migrated_store, site_exports, truth_scores

FIRST_CUT, LATER_CUT = dt.date(2016, 6, 30), dt.date(2017, 9, 30)


@pytest.fixture(scope="module")
def exports():
    return site_exports(1500, 3, FIRST_CUT, LATER_CUT)


def test_horizon_status_by_hand():
    # 6 months = 182.6 days. Rows: event at 100 d; event at 300 d; death at 50 d; followed
    # 400 d; lost at 90 d; event at 30 d but the cut only 120 d after surgery.
    time = np.array([100, 300, 50, 400, 90, 30])
    status = np.array([EVENT, EVENT, DEATH, CENSORED, CENSORED, EVENT])
    followed = np.array([800, 800, 800, 800, 800, 120])
    assert list(horizon_status(time, status, followed, 6)) == [
        "event", "event_free", "death_first", "event_free", "censored", "not_mature"]


def test_statuses_follow_the_training_labels(tmp_path, exports):
    (first, _), (later, _) = exports
    store = migrated_store(tmp_path)
    log_at_surgery(store, first["procedures"], truth_scores(first["procedures"], exports[0][1]))
    typed = validate_raw(later)
    summary = link_outcomes(store, typed, SECRET, LATER_CUT, "fingerprint")
    assert summary.predictions == summary.procedures_predicted == len(first["procedures"])
    assert summary.procedures == len(later["procedures"]) > summary.predictions
    h = store.horizon_frame().merge(store.scores_frame()[["prediction_id", "key_hash"]].drop_duplicates(),
                                    on="prediction_id")
    procs = typed["procedures"]
    by_hash = {link_key(SECRET, p): p for p in procs["procedure_id"]}
    h["procedure_id"] = h["key_hash"].map(by_hash)
    surgery = procs.set_index("procedure_id")["surgery_date"]
    for months in (6, 24):
        labels = build_labels(typed, horizon_months=months)
        part = h[(h["horizon_months"] == months) & h["outcome"].isin(OUTCOMES)]
        mature = (pd.Timestamp(LATER_CUT) - surgery.loc[part["procedure_id"]]).dt.days.to_numpy() >= months * 365.25 / 12
        assert (part["status"].to_numpy()[~mature] == "not_mature").all()
        got = part[mature]
        label = np.array([labels.at[p, o] for p, o in zip(got["procedure_id"], got["outcome"])], dtype=object)
        missing = pd.isna(label)
        expected = np.where(missing, "censored", np.where(np.where(missing, 0, label) == 1, "event", "no event"))
        observed = np.where(np.isin(got["status"], ["death_first", "event_free"]), "no event", got["status"])
        assert (observed == expected).all()
        assert {"event", "censored"} <= set(got["status"]) and mature.sum() > 100


def test_a_later_export_supersedes_and_an_earlier_one_does_not(tmp_path, exports):
    (first, truth), (later, _) = exports
    store = migrated_store(tmp_path)
    log_at_surgery(store, first["procedures"], truth_scores(first["procedures"], truth))
    first_typed, later_typed = validate_raw(first), validate_raw(later)
    link_outcomes(store, first_typed, SECRET, FIRST_CUT, "early")
    early = store.horizon_frame()
    link_outcomes(store, later_typed, SECRET, LATER_CUT, "late")
    late = store.horizon_frame()
    matured = lambda frame: int(((frame["horizon_months"] == 24) & (frame["status"] != "not_mature")).sum())  # noqa: E731
    assert matured(late) > matured(early) > 0
    again = link_outcomes(store, first_typed, SECRET, FIRST_CUT, "early")
    assert again.kept_newer == len(first["procedures"]) and again.predictions == 0
    assert set(store.outcomes_frame()["data_cut"]) == {LATER_CUT}
    # The patient is stored as a keyed hash only, for patient-level intervals.
    hashes = set(store.outcomes_frame()["patient_hash"])
    assert len(hashes) == first["patients"]["patient_id"].nunique()
    assert not hashes & set(first["patients"]["patient_id"])


def test_predictions_of_other_procedures_stay_unlinked(tmp_path, exports):
    (first, truth), (later, _) = exports
    store = migrated_store(tmp_path)
    procs = first["procedures"].head(20).assign(procedure_id=lambda d: "elsewhere-" + d["procedure_id"])
    log_at_surgery(store, procs, truth_scores(first["procedures"].head(20), truth))
    summary = link_outcomes(store, validate_raw(later), SECRET, LATER_CUT, "late")
    assert summary.predictions == 0 and store.count("linked_outcomes") == 0


def test_the_data_cut(exports):
    (first, _), _ = exports
    typed = validate_raw(first)
    assert data_cut_of(typed) <= FIRST_CUT
    with pytest.raises(ValueError, match=r"patients, row patient_id=.*column last_followup_date: .* is after the data cut"):
        check_data_cut(typed, FIRST_CUT - dt.timedelta(days=200))


def test_follow_up_follows_the_exports_ascertainment():
    """A registry-linked export (deaths until the data cut, fractures until death or the
    data cut, as its export.yaml says) read as stated: its deaths after the last visit
    count for the death target and compete with the fractures; read as a clinic export
    (until the last contact) they do neither."""
    from features.ascertainment import Ascertainment
    from features.simulator import load_profile, simulate
    from features.simulator.export import ascertainment_of
    from predictionlog.linkage import follow_up

    profile = load_profile("site-d-frail-registry-pkp")
    typed = validate_raw(simulate(profile, 600, seed=4)[0])
    cut = profile.followup.data_cut
    stated = follow_up(typed, cut, ascertainment=ascertainment_of(profile))
    clinic = follow_up(typed, cut, ascertainment=Ascertainment())
    assert (stated["death_status"] == EVENT).sum() > 2 * max((clinic["death_status"] == EVENT).sum(), 1)
    for outcome in OUTCOMES:
        assert (stated[f"{outcome}_status"] == DEATH).sum() > (clinic[f"{outcome}_status"] == DEATH).sum()
