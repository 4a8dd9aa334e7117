"""The calibration charts (training.calibration_cusum): their thresholds hold the stated
false-alarm rate, the interval trials follow the follow-up, and the charts of a linked
store signal a miscalibrated model and not a calibrated one, as the service exports them."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from features.labels import DEATH, EVENT, OUTCOMES, horizon_days
from features.validate import validate_raw
from predictionlog.linkage import link_outcomes
from predictionlog.rows import ShadowScores
from serving.monitoring.prediction_log import PredictionLogMetrics
from training.calibration_cusum import (
    ALPHA_PER_CHART,
    DIRECTIONS,
    LIFE_EXPECTED_EVENTS,
    THRESHOLDS,
    calibration_charts,
    chart_alerts,
    chart_rows,
    cusum_path,
    false_alarm_probability,
    increments,
    interval_trials,
)
from prediction_log_support import SECRET, log_at_surgery, migrated_store, site_exports, truth_scores

FIRST_CUT, LATER_CUT = dt.date(2015, 6, 30), dt.date(2018, 12, 31)
ENDS = [horizon_days(h) for h in (3, 6, 12, 24)]


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_each_threshold_is_the_smallest_that_holds_its_share_of_the_false_alarm_rate(direction):
    """``THRESHOLDS`` is ``cusum_threshold`` rounded up to 0.05: at it the chart signals
    within the life with at most its Bonferroni share of 5 %; 0.05 lower, with more."""
    h, ratio = THRESHOLDS[direction], DIRECTIONS[direction]
    assert false_alarm_probability(h, ratio, LIFE_EXPECTED_EVENTS) <= ALPHA_PER_CHART
    assert false_alarm_probability(h - 0.05, ratio, LIFE_EXPECTED_EVENTS) > ALPHA_PER_CHART


@pytest.mark.parametrize("ratio", [1.5, 1 / 1.5])
def test_the_computed_false_alarm_probability_is_what_a_calibrated_model_gives(ratio):
    """Monte Carlo: 2,000 runs of 2,000 Bernoulli trials at risk 1.5 % (30 expected
    events), the model right; the share whose chart reaches h = 2.5 against the
    Markov-chain figure."""
    rng = np.random.default_rng(7)
    q = 0.015
    y = rng.random((2000, 2000)) < q
    w = np.where(y, math.log(ratio), 0.0) - math.log1p((ratio - 1) * q)
    total = np.cumsum(w, axis=1)
    chart = total - np.minimum.accumulate(np.minimum(total, 0.0), axis=1)
    simulated = float((chart.max(axis=1) >= 2.5).mean())
    computed = false_alarm_probability(2.5, ratio, 30.0)
    se = math.sqrt(computed * (1 - computed) / 2000)
    assert 0.05 < computed < 0.6
    assert abs(simulated - computed) < 4 * se + 0.01, (simulated, computed)


def test_the_chart_is_a_cusum_of_the_log_likelihood_ratios():
    w = np.array([1.0, -3.0, 0.5, 0.5, -0.2, 2.0])
    expected, c = [], 0.0
    for x in w:
        c = max(0.0, c + x)
        expected.append(c)
    assert cusum_path(w) == pytest.approx(expected)
    # an event against a 10 % prediction, the alternative odds 1.5x: log 1.5 - log(1.05)
    assert increments(np.array([0.1]), np.array([1]), 1.5)[0] == pytest.approx(math.log(1.5) - math.log(1.05))


def test_interval_trials_follow_each_patients_follow_up():
    """Cumulative risks 2, 4, 8, 16 % at 3, 6, 12, 24 months; everyone followed 25 months,
    except the last patient (100 days)."""
    F = np.tile([0.02, 0.04, 0.08, 0.16], (6, 1))
    time = np.array([120.0, 150.0, 100.0, 800.0, 50.0, 400.0])
    status = np.array([EVENT, 0, DEATH, 0, EVENT, DEATH])
    followed = np.array([760.0, 760.0, 760.0, 760.0, 100.0, 500.0])
    tr = interval_trials(F, time, status, followed)
    got = {(int(r), int(k)): (float(q), int(y)) for r, k, q, y in zip(tr.row, tr.interval, tr.q, tr.y)}
    q2 = (0.04 - 0.02) / 0.98
    # 0: event in (3, 6] months: a non-event trial, then the event; nothing after
    assert got[(0, 0)] == (pytest.approx(0.02), 0) and got[(0, 1)] == (pytest.approx(q2), 1)
    assert not any(r == 0 and k > 1 for r, k in got)
    # 1: lost at day 150, inside (3, 6]: a partial trial, "no event by day 150"
    assert got[(1, 1)] == (pytest.approx(q2 * (150 - ENDS[0]) / (ENDS[1] - ENDS[0])), 0)
    assert not any(r == 1 and k > 1 for r, k in got)
    # 2: died first in (3, 6]: full non-event trials in it and every later interval (q_k's
    # denominator counts the dead among those without the event)
    assert got[(2, 1)] == (pytest.approx(q2), 0)
    assert [got[(2, k)][1] for k in range(4)] == [0, 0, 0, 0] and got[(2, 2)][0] == pytest.approx(0.04 / 0.96)
    # 5: died first at day 400, followed 500 days: the three matured intervals, no event
    assert sorted(k for r, k in got if r == 5) == [0, 1, 2]
    # 3: followed past 24 months without an event: four non-event trials
    assert [got[(3, k)][1] for k in range(4)] == [0, 0, 0, 0]
    assert got[(3, 3)][0] == pytest.approx((0.16 - 0.08) / 0.92)
    # 4: followed 100 days (an event at day 50): only the first interval has matured
    assert [k for r, k in got if r == 4] == [0] and got[(4, 0)][1] == 1


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Champion v1 = the true risks; challenger v2 = the true risks x 1.5 (over-predicts),
    in shadow on the same requests; the later export linked."""
    (first, truth), (later, _) = site_exports(2000, 11, FIRST_CUT, LATER_CUT)
    store = migrated_store(tmp_path_factory.mktemp("charts"))
    procs = first["procedures"]
    call = log_at_surgery(store, procs, truth_scores(procs, truth))
    store.insert(ShadowScores(call.prediction_ids, truth_scores(procs, truth, "2", "challenger", 1.5)).rows(SECRET))
    link_outcomes(store, validate_raw(later), SECRET, LATER_CUT, "fp")
    return store


@pytest.fixture(scope="module")
def charts(store):
    return calibration_charts(store.scores_frame(), store.outcomes_frame())


def test_the_over_predicting_challenger_signals_and_the_calibrated_champion_does_not(charts):
    table, paths = charts
    assert len(table) == len(OUTCOMES) * 2 * len(DIRECTIONS)
    champion = table[table["role"] == "champion"]
    assert not champion["signal"].any() and champion["first_signal"].isna().all()
    assert (champion["observed_events"] > 0.7 * champion["expected_events"]).all()
    over = table[(table["role"] == "challenger") & (table["direction"] == "over_prediction")]
    adjacent = over[over["outcome"] == "adjacent_fracture"].iloc[0]
    assert adjacent["peak"] >= adjacent["threshold"] and adjacent["first_signal"] is not None
    assert adjacent["observed_events"] < 0.8 * adjacent["expected_events"]
    # a shadow model's signal is in the report, never an alert
    assert chart_alerts(table).empty
    # the path is in the order follow-up matured, and ends at the statistic
    p = paths[(paths["outcome"] == "adjacent_fracture") & (paths["role"] == "challenger")]
    assert p["date"].is_monotonic_increasing
    assert p["over_prediction"].iloc[-1] == pytest.approx(adjacent["statistic"])
    assert p["over_prediction"].max() == pytest.approx(adjacent["peak"])


def test_a_restarted_chart_counts_only_what_matured_since(store, charts):
    table, _ = charts
    since = dt.date(2016, 1, 1)
    later, paths = calibration_charts(store.scores_frame(), store.outcomes_frame(), since=since)
    assert (paths["date"] >= pd.Timestamp(since)).all()
    merged = table.merge(later, on=["outcome", "role", "direction"], suffixes=("", "_since"))
    assert (merged["trials_since"] < merged["trials"]).all()
    assert (merged["since_since"] == since).all()


def test_the_service_exports_the_stored_charts_as_gauges(store, charts):
    table, _ = charts
    computed = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    rows = chart_rows(table, store.scores_frame(), computed)
    assert len(rows) == len(OUTCOMES) * 2 * len(DIRECTIONS)  # champion v1 and challenger v2 are each role's newest
    store.replace_performance([], rows)
    assert len(store.charts()) == len(rows)
    metrics = PredictionLogMetrics()
    metrics.refresh(store)
    row = next(r for r in rows if r["role"] == "challenger" and r["outcome"] == "adjacent_fracture"
               and r["direction"] == "over_prediction")
    labels = {"outcome": "adjacent_fracture", "role": "challenger", "direction": "over_prediction"}
    assert metrics.gauges["chart_peak"].labels(**labels)._value.get() == pytest.approx(row["peak"])
    assert metrics.gauges["chart_threshold"].labels(**labels)._value.get() == THRESHOLDS["over_prediction"]
    assert metrics.computed._value.get() == computed.timestamp()
    # a later run without charts leaves none behind; figures alone keep the old charts
    store.replace_performance([], [])
    assert store.charts() == []
