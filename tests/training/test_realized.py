"""Realized performance: the site report's estimators on the predictions whose outcome has
matured, once per procedure and version, by month, and champion against challenger."""

from __future__ import annotations

import datetime as dt
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from features.labels import OUTCOMES
from features.validate import validate_raw
from modelstore.estimand import horizon_column
from predictionlog.linkage import link_outcomes
from predictionlog.rows import ShadowScores
from training.realized import (
    Realized,
    gauge_rows,
    matured,
    patients,
    promotion_evidence,
    realized_performance,
    summary_records,
)
from training.realized_report import render_realized_report
from training.site_eval import evaluate_outcome
from prediction_log_support import SECRET, log_at_surgery, migrated_store, site_exports, truth_scores

FIRST_CUT, LATER_CUT = dt.date(2015, 6, 30), dt.date(2018, 12, 31)
N_BOOT = 60


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Champion v1 = the true risks; challenger v2 = the true risks x 1.5, in shadow on the
    same requests; a repeated request for 50 procedures; a later export linked."""
    (first, truth), (later, _) = site_exports(2000, 11, FIRST_CUT, LATER_CUT)
    store = migrated_store(tmp_path_factory.mktemp("realized"))
    procs = first["procedures"]
    call = log_at_surgery(store, procs, truth_scores(procs, truth))
    store.insert(ShadowScores(call.prediction_ids, truth_scores(procs, truth, "2", "challenger", 1.5)).rows(SECRET))
    repeat = procs.head(50).assign(surgery_date=procs["surgery_date"].head(50) + pd.Timedelta(days=1))
    log_at_surgery(store, repeat, truth_scores(procs.head(50), truth, scale=3.0))  # later: must not count
    link_outcomes(store, validate_raw(later), SECRET, LATER_CUT, "fp")
    return store


@pytest.fixture(scope="module")
def realized(store) -> Realized:
    return realized_performance(store.scores_frame(), store.outcomes_frame(), (24,), 24, n_boot=N_BOOT)


def test_the_figures_are_the_site_reports_on_the_matured_rows(store, realized):
    scores, outcomes = store.scores_frame(), store.outcomes_frame()
    rows = matured(scores, outcomes, 24)
    part = rows[(rows["outcome"] == "adjacent_fracture") & (rows["role"] == "champion")]
    assert part["key_hash"].is_unique  # once per procedure: the repeated request left out
    assert set(part["prediction_id"]) <= set(scores[scores["source"] == "batch"]["prediction_id"])
    expected = evaluate_outcome(part[["p_24m"]], part["time_days"].to_numpy(), part["status"].to_numpy(), [24], 24,
                                pd.DataFrame(index=part.index), patients=patients(part), cohort="x",
                                outcome="adjacent_fracture", n_boot=N_BOOT)["metrics"].iloc[0]
    m = realized.metrics
    got = m[(m["outcome"] == "adjacent_fracture") & (m["role"] == "champion") & (m["horizon_months"] == 24)].iloc[0]
    for k in ("n", "events", "observed_expected", "observed_expected_ci_low", "calibration_slope",
              "calibration_slope_ci_high", "td_auroc", "td_auroc_ci_low"):
        assert got[k] == pytest.approx(expected[k]), k
    assert got["matured"] == len(part)
    # the intervals resample patients (the keyed patient hash of the export)
    assert part["patient_hash"].notna().all()
    assert (patients(part) == part["patient_hash"].to_numpy()).all()
    assert (patients(part.assign(patient_hash=None)) == ("procedure:" + part["key_hash"]).to_numpy()).all()  # none named: each procedure alone


def test_a_challenger_predicting_half_as_much_again_has_two_thirds_the_o_e(realized):
    """The true risks x 1.5 (capped below 1) against the true risks on the same patients.
    (Whether the intervals cover the truth at the stated rate is the coverage benchmark's
    question, over 200 simulated deployments: bench/bench_realized_coverage.py.)"""
    m = realized.metrics[realized.metrics["horizon_months"] == 24]
    for o in OUTCOMES:
        champ = m[(m["outcome"] == o) & (m["role"] == "champion")].iloc[0]
        chall = m[(m["outcome"] == o) & (m["role"] == "challenger")].iloc[0]
        assert chall["observed_expected"] == pytest.approx(champ["observed_expected"] / 1.5, rel=0.02), o
        assert chall["observed_expected_ci_high"] < champ["observed_expected_ci_high"], o
        assert (chall["matured"], chall["events"]) == (champ["matured"], champ["events"])


def test_champion_and_challenger_are_paired(realized):
    p = realized.paired
    assert set(p["outcome"]) == set(OUTCOMES) and set(p["horizon_months"]) == {24.0}
    # Scaling keeps the order of the risks, so the AUROCs agree (up to a few pairs of risks
    # a float's last digit apart that the product rounds into ties) and the paired
    # interval of the difference holds 0.
    assert np.allclose(p["td_auroc_diff"], 0, atol=1e-3)
    assert ((p["td_auroc_diff_ci_low"] <= 0) & (p["td_auroc_diff_ci_high"] >= 0)).all()
    assert (p["challenger_mean_predicted"] > 1.4 * p["champion_mean_predicted"]).all()


def test_promotion_evidence_compares_the_two_versions_named(store, realized):
    scores, outcomes = store.scores_frame(), store.outcomes_frame()
    evidence = promotion_evidence(scores, outcomes, "adjacent_fracture", "1", "2", (24,), n_boot=N_BOOT)
    paired = realized.paired[realized.paired["outcome"] == "adjacent_fracture"]
    assert len(evidence) == 1
    for k in ("matured", "events", "champion_observed_expected", "challenger_observed_expected_ci_high",
              "td_auroc_diff_ci_low"):
        assert evidence[k].iat[0] == pytest.approx(paired[k].iat[0]), k
    assert promotion_evidence(scores, outcomes, "adjacent_fracture", "1", "7", (24,)).empty  # never in shadow


def test_by_month_and_the_json_figures(realized):
    months = realized.by_month
    assert months["month"].str.match(r"^\d{4}-\d{2}$").all()
    per = months[(months["outcome"] == "remote_fracture") & (months["role"] == "champion") & (months["horizon_months"] == 24)]
    m = realized.metrics
    total = m[(m["outcome"] == "remote_fracture") & (m["role"] == "champion") & (m["horizon_months"] == 24)].iloc[0]
    assert per["n"].sum() == total["matured"] and per["events"].sum() == total["events"]
    records = summary_records(realized)
    assert len(records) == len(OUTCOMES) * 2
    r = records[0]
    assert set(r) == {"outcome", "model_name", "model_version", "role", "horizon_months", "matured", "events",
                      "observed_expected", "calibration_slope", "td_auroc"}
    assert set(r["observed_expected"]) == {"value", "ci_low", "ci_high"}


def test_the_gauges_hold_each_roles_newest_version(store, realized):
    rows = gauge_rows(realized, store.scores_frame(), dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert {(r["role"], r["model_version"]) for r in rows} == {("champion", "1"), ("challenger", "2")}
    assert len(rows) == len(OUTCOMES) * 2 * 3
    store.replace_performance(rows)
    assert len(store.performance()) == len(rows)


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_the_report_is_self_contained_and_says_what_it_found(realized):
    report = render_realized_report(realized, site="Test hospital", generated_on="2026-12-07")
    parsed = _Text()
    parsed.feed(report.html)
    text = " ".join(parsed.text)
    assert "Champion and challenger on the same patients" in text and "Test hospital" in text
    assert not [t for t, a in parsed.tags if t == "script" or (t == "img" and not a["src"].startswith("data:image/png"))]
    assert {f"calibration_{o}.png" for o in OUTCOMES} <= set(report.figures)
    empty = render_realized_report(Realized(), site="Nowhere")
    assert "No logged prediction has a linked, matured outcome yet" in empty.html
    assert horizon_column(24) == "p_24m"
