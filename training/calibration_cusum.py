"""Sequential monitoring of realized calibration: one risk-adjusted CUSUM chart per outcome
and direction, with a stated family-wise false-alarm rate over a model version's life.

Why not the O/E intervals. ``refracture performance`` reports O/E with a 95 % interval per
outcome and horizon. Alerting whenever one of those 12 intervals excludes 1 at one of ~8
quarterly looks alerted in 30 % of simulated deployments whose model was right
(bench/README.md, issue 21): every look and series is another chance. A sequential test
looks at the evidence as it accumulates and spends its false-alarm budget once.

**The chart** (Steiner, Cook, Farewell & Treasure 2000, "Monitoring surgical performance
using risk-adjusted cumulative sum charts", Biostatistics 1(4):441-452): each observation
with predicted probability q and outcome y (1 event, 0 none) adds the log-likelihood ratio
of "the odds of the event are ``R`` times the predicted odds" against "the prediction is
right",

    W = y log R - log(1 - q + R q),

and the chart is the CUSUM ``C_n = max(0, C_{n-1} + W_n)``; it signals when ``C_n >= h``.
Two charts per outcome: ``R = 1.5`` (the model under-predicts: more events than expected)
and ``R = 1/1.5`` (it over-predicts). Steiner et al. state the alternative as an odds
ratio; on the small risks here it is a risk ratio of about R, i.e. O/E of about 1.5 or 0.67.

**Observations from follow-up that matures, with censoring** (our adaptation). A
prediction is a crude cumulative incidence F at 3, 6, 12 and 24 months (death competing).
The crude event indicator by 24 months factorises into four *interval trials*: for
interval k, (t_{k-1}, t_k], the probability of the event in it given none before,
``q_k = (F_k - F_{k-1}) / (1 - F_{k-1})`` (a patient who died first has no event in any
later interval, which q_k already counts). A trial enters the chart

- only once the interval has **matured** (the linked export was cut at least t_k after the
  surgery, as ``training.realized.matured``), dated surgery + t_k; the chart takes the
  trials in that order, so it is a sequential procedure in calendar time however often
  it is looked at;
- only if the patient had no event by t_{k-1} and was still followed then, or had died
  first (at any time before t_k): a patient dead first is a trial with no event in every
  later matured interval, because q_k's denominator, 1 - F_{k-1}, counts the dead among
  those without the event (leaving them out would under-count the expected events by about
  the share dead, and make a right model look under-predicting: it did, O/E ~1.3 for remote
  fracture in the first simulated deployments);
- with y = 1 if the event falls in the interval, 0 if not (death first counts 0);
- when the patient was **lost to follow-up** inside the interval at time c, as a partial
  trial: "no event by c", with q(c) = q_k (c - t_{k-1}) / (t_k - t_{k-1}) (F linear within
  the interval), which is the likelihood of what was seen under independent censoring
  (no weights needed, no bias from leaving the lost out).

Under a right model each W has conditional mean below 0 and ``exp(sum W)`` is a
martingale, so the chart only drifts up by chance.

**Threshold: the stated false-alarm rate.** For small q the chart in "expected events"
(sum of q over the trials) behaves as the Poisson-limit chart: jumps of log R at events
(rate 1 per expected event), drift -(R - 1) between them. ``false_alarm_probability``
computes, for that limit, the probability that the chart reaches h within a given number
of expected events (a Markov chain on a grid, as Brook & Evans 1972, Biometrika 59:539-549,
did for the run length; here the probability of signalling before a given time, the
criterion Gandy, Kvaløy, Bottle & Zhou 2010, Biometrika 97:375-388, recommend over the
average run length). The thresholds are the smallest h with that probability at most
``FAMILY_FALSE_ALARM`` / (2 x 3 charts) over ``LIFE_EXPECTED_EVENTS`` expected events of
each outcome (Bonferroni over the six charts of the champions). Risks far from 0 give the
chart smaller steps than the limit; the simulated deployments of bench/bench_realized.py
measure the rate on the simulator's risks.

Pure: frames in, frames out; ``refracture performance`` stores the charts, the service
exports them and the Prometheus rules compare statistic and threshold
(docs/prometheus/refracture-realized.rules.yml).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.labels import CENSORED, DEATH, EVENT, OUTCOMES, horizon_days
from modelstore.estimand import DEFAULT_HORIZONS_MONTHS, horizon_column

#: The design shift: odds of the event 1.5 times (or 1/1.5 times) the predicted odds.
DESIGN_ODDS_RATIO = 1.5
#: The two charts of an outcome and their alternative odds ratios.
DIRECTIONS = {"under_prediction": DESIGN_ODDS_RATIO, "over_prediction": 1 / DESIGN_ODDS_RATIO}
#: The outcomes whose champions are monitored (the death model is context, not alerted).
MONITORED_OUTCOMES = OUTCOMES
#: Probability that any of the champions' charts (3 outcomes x 2 directions) signals at
#: least once, with every model right, within the life below.
FAMILY_FALSE_ALARM = 0.05
#: The life the rate is stated over: each outcome's first 200 expected events (sum of the
#: predicted interval probabilities). About 2 years of adjacent fractures (the most frequent
#: outcome, ~9 % by 24 months) at a site doing 1,000 procedures a year; 4 years of
#: cemented refractures there; longer at smaller sites. Beyond it the chance of a false
#: alarm keeps growing (about in proportion to the expected events).
LIFE_EXPECTED_EVENTS = 200.0
#: Charts in the family and the rate each may spend (Bonferroni).
CHARTS = len(MONITORED_OUTCOMES) * len(DIRECTIONS)
ALPHA_PER_CHART = FAMILY_FALSE_ALARM / CHARTS
#: ``cusum_threshold(R, ALPHA_PER_CHART, LIFE_EXPECTED_EVENTS)`` for each direction,
#: rounded up to 0.05 (tests/training/test_calibration_cusum.py recomputes them).
THRESHOLDS = {"under_prediction": 7.4, "over_prediction": 6.95}
#: The chart's interval ends, months (the estimand's horizons).
CHART_HORIZONS_MONTHS = DEFAULT_HORIZONS_MONTHS


# ---------------------------------------------------------------- the threshold

def _shift_add(q: np.ndarray, v: np.ndarray, s: int, n: int) -> None:
    """q[i + s] += v[i]; positions below 0 onto 0 (the CUSUM's floor), at or above n onto
    n (signalled, absorbing)."""
    if s >= 0:
        k = max(n - s, 0)
        q[s:s + k] += v[:k]
        q[n] += v[k:].sum()
    else:
        k = min(-s, n)
        q[0] += v[:k].sum()
        q[:n - k] += v[k:]


def _signal_probability(h: float, odds_ratio: float, expected_events: float, step: float) -> float:
    """The Poisson-limit chart on a grid: time in steps of ``step`` expected events (an
    event with probability ``step``), the grid cell the drift of one step, an event's jump
    split between the two nearest cells."""
    cell = abs(odds_ratio - 1) * step
    n = max(int(math.ceil(h / cell)), 1)
    drift = -1 if odds_ratio > 1 else 1
    jump = math.log(odds_ratio) / cell + drift
    low = int(math.floor(jump))
    frac = jump - low
    p = np.zeros(n)
    p[0] = 1.0
    signalled = 0.0
    for _ in range(int(round(expected_events / step))):
        q = np.zeros(n + 1)
        _shift_add(q, p * (1 - step), drift, n)
        event = p * step
        _shift_add(q, event * (1 - frac), low, n)
        if frac:
            _shift_add(q, event * frac, low + 1, n)
        signalled += q[n]
        p = q[:n]
    return float(signalled)


def false_alarm_probability(h: float, odds_ratio: float, expected_events: float, step: float = 0.04) -> float:
    """Probability that the chart with alternative ``odds_ratio`` and threshold ``h``
    signals within ``expected_events`` expected events when the predictions are right,
    in the Poisson limit (module docstring). The grid's error is first order in ``step``:
    computed at ``step`` and ``step / 2`` and extrapolated (Richardson)."""
    if h <= 0 or odds_ratio <= 0 or odds_ratio == 1 or expected_events < 0:
        raise ValueError("need h > 0, a positive odds ratio other than 1 and expected events >= 0")
    coarse = _signal_probability(h, odds_ratio, expected_events, step)
    fine = _signal_probability(h, odds_ratio, expected_events, step / 2)
    return float(min(max(2 * fine - coarse, 0.0), 1.0))


def cusum_threshold(odds_ratio: float, alpha: float, expected_events: float, tolerance: float = 0.01) -> float:
    """The smallest threshold (to ``tolerance``) whose false-alarm probability within
    ``expected_events`` is at most ``alpha`` (bisection on ``false_alarm_probability``)."""
    low, high = 0.5, 20.0
    while high - low > tolerance:
        mid = (low + high) / 2
        low, high = (mid, high) if false_alarm_probability(mid, odds_ratio, expected_events) > alpha else (low, mid)
    return high


# ---------------------------------------------------------------- the observations

@dataclass(frozen=True)
class Trials:
    """Interval trials of a set of predictions (module docstring), one per row:
    ``row`` (the prediction's position in the input), ``interval`` (0-3), ``matures_day``
    (days from surgery to the interval's end), ``q`` (predicted probability, a partial
    trial's prorated), ``y`` (1 event, 0 none)."""

    row: np.ndarray
    interval: np.ndarray
    matures_day: np.ndarray
    q: np.ndarray
    y: np.ndarray


def interval_trials(risks: np.ndarray, time_days: np.ndarray, status: np.ndarray,
                    followed_days: np.ndarray) -> Trials:
    """The trials of predictions with cumulative risks ``risks`` (n x 4, at
    ``CHART_HORIZONS_MONTHS``), follow-up ``time_days``/``status`` (``features.labels``:
    0 censored, 1 event, 2 death first) and ``followed_days`` (surgery to the data cut of
    the export linked). A row whose risk at an interval's end is missing gives no trial
    from that interval on."""
    F = np.clip(np.asarray(risks, dtype="float64"), 0.0, 1.0 - 1e-9)
    t = np.asarray(time_days, dtype="float64")
    s = np.asarray(status)
    followed = np.asarray(followed_days, dtype="float64")
    ends = np.array([horizon_days(h) for h in CHART_HORIZONS_MONTHS])
    starts = np.r_[0.0, ends[:-1]]
    before = np.c_[np.zeros(len(F)), F[:, :-1]]
    q = np.clip((F - before) / (1.0 - before), 0.0, 1.0 - 1e-9)
    ok = np.cumprod(np.isfinite(F), axis=1).astype(bool)  # a missing risk ends the row's trials
    parts = []
    for k in range(len(ends)):
        start, end = starts[k], ends[k]
        # matured, and at its start event-free and followed, or dead first (then a trial with
        # no event: q_k counts the dead among those still at risk of the event)
        enter = ok[:, k] & (followed >= end) & ((t > start) | (s == DEATH))
        event = enter & (s == EVENT) & (t <= end)
        lost = enter & (s == CENSORED) & (t < end)
        qk = np.where(lost, q[:, k] * (t - start) / (end - start), q[:, k])
        rows = np.flatnonzero(enter)
        parts.append((rows, np.full(len(rows), k), np.full(len(rows), end), qk[rows], event[rows].astype("int64")))
    return Trials(*(np.concatenate([p[i] for p in parts]) for i in range(5)))


def increments(q: np.ndarray, y: np.ndarray, odds_ratio: float) -> np.ndarray:
    """Each trial's log-likelihood ratio of the alternative ``odds_ratio`` against the
    prediction (Steiner et al. 2000): y log R - log(1 - q + R q)."""
    return y * math.log(odds_ratio) - np.log1p((odds_ratio - 1.0) * q)


def cusum_path(w: np.ndarray) -> np.ndarray:
    """The CUSUM C_n = max(0, C_{n-1} + w_n), C_0 = 0, after each increment: the
    cumulative sum minus its running minimum (0 included)."""
    total = np.cumsum(np.asarray(w, dtype="float64"))
    return total - np.minimum.accumulate(np.minimum(total, 0.0))


# ---------------------------------------------------------------- the charts of the store

CHART_COLUMNS = ["outcome", "model_name", "model_version", "role", "direction", "odds_ratio", "statistic",
                 "threshold", "signal", "first_signal", "peak", "expected_events", "observed_events", "trials",
                 "predictions", "life_expected_events", "since", "last_matured"]


def _first_per_procedure(scores: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """Scores with their linked follow-up, one per procedure, outcome, role and model
    version (the first logged, as ``training.realized.matured``), and the days followed."""
    linked = scores.merge(outcomes.rename(columns={"surgery_date": "surgery_date_linked"}),
                          on=["prediction_id", "outcome"], how="inner")
    linked = linked.sort_values("logged_at", kind="stable")
    linked = linked[~linked.duplicated(["key_hash", "outcome", "role", "model_version"], keep="first")]
    surgery = pd.to_datetime(linked["surgery_date_linked"])
    linked = linked.assign(surgery=surgery.to_numpy(),
                           followed_days=(pd.to_datetime(linked["data_cut"]) - surgery).dt.days.to_numpy(dtype="float64"))
    return linked.reset_index(drop=True)


def calibration_charts(scores: pd.DataFrame, outcomes: pd.DataFrame, since=None,
                       thresholds: dict[str, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The charts of every monitored outcome, model version and role in the store.

    ``scores``/``outcomes``: ``PredictionStore.scores_frame()``/``outcomes_frame()``;
    ``since`` (a date, optional): the charts restart then (trials maturing before it are
    left out), e.g. after the board has dealt with a signal; ``thresholds``: per
    direction (default ``THRESHOLDS``).

    Returns ``(charts, paths)``: one row per chart (``CHART_COLUMNS``: the statistic now,
    i.e. after the last matured trial, its threshold, ``signal`` = statistic >= threshold,
    the date the chart first reached it, its peak, expected and observed events, trials and
    predictions behind it); and every trial's date with both charts' values, for plots."""
    thresholds = thresholds or THRESHOLDS
    empty = pd.DataFrame(columns=CHART_COLUMNS), pd.DataFrame()
    if scores.empty or outcomes.empty:
        return empty
    linked = _first_per_procedure(scores[scores["outcome"].isin(MONITORED_OUTCOMES)], outcomes)
    cols = [horizon_column(h) for h in CHART_HORIZONS_MONTHS]
    cut = pd.Timestamp(since) if since is not None else None
    rows, paths = [], []
    for (outcome, version, role), part in linked.groupby(["outcome", "model_version", "role"], sort=True):
        tr = interval_trials(part[cols].to_numpy(dtype="float64"), part["time_days"].to_numpy(dtype="float64"),
                             part["status"].to_numpy(dtype="int64"), part["followed_days"].to_numpy())
        surgery = part["surgery"].to_numpy()[tr.row]
        when = pd.DatetimeIndex(surgery) + pd.to_timedelta(np.floor(tr.matures_day), unit="D")
        keep = np.ones(len(tr.row), bool) if cut is None else np.asarray(when >= cut)
        order = np.lexsort((tr.interval[keep], part["prediction_id"].to_numpy()[tr.row][keep],
                            surgery[keep], np.asarray(when)[keep]))
        q, y, row = tr.q[keep][order], tr.y[keep][order], tr.row[keep][order]
        dates = np.asarray(when)[keep][order]
        tag = {"outcome": outcome, "model_name": part["model_name"].iat[0], "model_version": str(version), "role": role}
        path = {"date": dates, "expected_events": np.cumsum(q), "observed_events": np.cumsum(y)}
        for direction, ratio in DIRECTIONS.items():
            c = cusum_path(increments(q, y, ratio))
            path[direction] = c
            crossed = np.flatnonzero(c >= thresholds[direction])
            statistic = float(c[-1]) if len(c) else 0.0
            rows.append({**tag, "direction": direction, "odds_ratio": ratio, "statistic": statistic,
                         "threshold": float(thresholds[direction]), "signal": statistic >= thresholds[direction],
                         "first_signal": pd.Timestamp(dates[crossed[0]]).date() if len(crossed) else None,
                         "peak": float(c.max()) if len(c) else 0.0, "expected_events": float(q.sum()),
                         "observed_events": int(y.sum()), "trials": int(len(q)),
                         "predictions": int(len(np.unique(row))), "life_expected_events": LIFE_EXPECTED_EVENTS,
                         "since": cut.date() if cut is not None else None,
                         "last_matured": pd.Timestamp(dates[-1]).date() if len(dates) else None})
        paths.append(pd.DataFrame(path).assign(**tag))
    charts = pd.DataFrame(rows, columns=CHART_COLUMNS)
    return charts, (pd.concat(paths, ignore_index=True) if paths else pd.DataFrame())


def chart_alerts(charts: pd.DataFrame) -> pd.DataFrame:
    """The champions' charts that have signalled since they started: the alerts the
    Prometheus rules raise (``RefractureRealizedUnderPrediction`` / ``OverPrediction``:
    peak >= threshold, role champion). A signal stays until the board restarts the chart
    (``refracture performance --chart-since``): a chart that crossed between two runs
    and fell back is not a false start, the evidence was there."""
    if charts.empty:
        return charts
    return charts[(charts["role"] == "champion") & (charts["peak"] >= charts["threshold"])].reset_index(drop=True)


def chart_rows(charts: pd.DataFrame, scores: pd.DataFrame, computed_at) -> list[dict]:
    """The charts the service exports (``predictionlog.schema.calibration_charts``): per
    outcome and role, those of the version that made that role's newest prediction (a
    replaced version's chart is history, in the report, not an alert)."""
    if charts.empty:
        return []
    newest = scores.sort_values("logged_at").groupby(["outcome", "role"])["model_version"].last()
    keep = [newest.get((o, r)) == v for o, r, v in zip(charts["outcome"], charts["role"], charts["model_version"])]
    return [{"outcome": c["outcome"], "role": c["role"], "model_version": str(c["model_version"]),
             "direction": c["direction"], "statistic": float(c["statistic"]), "threshold": float(c["threshold"]),
             "peak": float(c["peak"]), "first_signal": c["first_signal"], "expected_events": float(c["expected_events"]),
             "observed_events": int(c["observed_events"]), "life_expected_events": float(c["life_expected_events"]),
             "predictions": int(c["predictions"]), "computed_at": computed_at}
            for c in charts[keep].to_dict("records")]
