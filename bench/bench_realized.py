"""Realized performance over simulated deployments: coverage of the O/E interval, and how
soon a planted calibration shift is flagged (with the false-alarm rate without one).

A deployment is one simulated site scoring a year of procedures (a copy of the profile
whose enrolment is one year, 2021: the contract refuses dates in the future), with the
simulator's true risks known. Its "model" is
the truth times a factor, so the true O/E of its matured predictions is known exactly:
mean(true risk) / mean(predicted risk) over those patients.

- ``coverage``: every prediction logged in a real SQLite store (``predictionlog``), the
  export linked by ``link_outcomes`` (keyed hashes, ``features.labels``) once every
  24-month horizon has matured, and ``training.realized.realized_performance`` (the site
  report's estimators, 200 resamples); does each outcome's 95 % interval of O/E at 24
  months cover the true O/E? Target: 90-98 % of deployments.
- ``detection``: the board looks every quarter (months 3, 6, ..., 24 after the start) at
  the calibration alerts of ``training.realized.calibration_alerts`` (the Prometheus
  rules' decision: O/E outside 0.8-1.25 with its interval excluding 1, >= 100 matured),
  for every outcome and horizon. With the model under-predicting by 1.5 (true O/E 1.5):
  the look and the number of matured predictions at the first under-prediction alert.
  Without a shift: the share of deployments with any alert at any look (false alarms).
  Each look's labels are the final export's follow-up cut at the look's date (as
  ``simulate(..., data_cut=)`` draws it: same events, follow-up truncated; the linkage and
  store path is the coverage run's), and the estimator is ``evaluate_at_horizons``.

    .venv/bin/python bench/bench_realized.py coverage --deployments 200 --jobs 2
    .venv/bin/python bench/bench_realized.py detection --deployments 100 --shifted 50 --jobs 2

Writes bench/out/bench_realized_<mode>.json and prints the summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.labels import OUTCOMES, build_labels, horizon_days  # noqa: E402
from features.simulator import load_profile, simulate  # noqa: E402
from features.validate import validate_raw  # noqa: E402
from modelstore.estimand import DEFAULT_HORIZONS_MONTHS, horizon_column  # noqa: E402
from predictionlog.keys import link_key  # noqa: E402
from predictionlog.linkage import link_outcomes  # noqa: E402
from predictionlog.rows import ModelScores, Predictions  # noqa: E402
from predictionlog.store import PredictionStore  # noqa: E402
from training.realized import MIN_MATURED_ALERT, calibration_alerts, matured, realized_performance  # noqa: E402
from training.time_metrics import evaluate_at_horizons  # noqa: E402

PROFILE = "xiong2021-pvp"
START = dt.date(2021, 1, 1)
SECRET = b"bench-secret-of-at-least-thirty-two-characters"
OUT = ROOT / "bench" / "out"


def deployment_profile(name: str = PROFILE):
    """The profile with one year of enrolment (2021) and its data cut 25 months after."""
    p = load_profile(name)
    followup = p.followup.model_copy(update={"enrolment_start": START, "enrolment_end": dt.date(2021, 12, 31),
                                             "data_cut": dt.date(2024, 1, 31)})
    return p.model_copy(update={"followup": followup, "name": f"{name}-deployment-2021"})


def _risks(procedures: pd.DataFrame, truth: pd.DataFrame, outcome: str, factor: float) -> np.ndarray:
    tr = truth.set_index("procedure_id").loc[procedures["procedure_id"].to_numpy()]
    return np.minimum(tr[[f"p_{outcome}_{m:g}m" for m in DEFAULT_HORIZONS_MONTHS]].to_numpy() * factor, 0.999)


# ---------------------------------------------------------------- coverage

def coverage_one(d: int, n: int, n_boot: int) -> list[dict]:
    factor = (0.8, 1.0, 1.25)[d % 3]
    profile = deployment_profile()
    tables, truth = simulate(profile, n, seed=10_000 + d)
    procs = tables["procedures"]
    with tempfile.TemporaryDirectory() as tmp:
        store = PredictionStore(f"sqlite:///{tmp}/p.db")
        store.migrate()
        scores = [ModelScores(o, f"refracture-{o}", "1", _risks(procs, truth, o, factor)) for o in OUTCOMES]
        call = Predictions("batch", list(procs["procedure_id"]), scores, surgery_dates=list(procs["surgery_date"]))
        batch = call.rows(SECRET)
        for row, when in zip(batch.predictions, procs["surgery_date"]):
            row["logged_at"] = pd.Timestamp(when).tz_localize("UTC").isoformat()
        store.insert(batch)
        link_outcomes(store, validate_raw(tables), SECRET, profile.followup.data_cut, "bench")
        s, o = store.scores_frame(), store.outcomes_frame()
        store.dispose()
    realized = realized_performance(s, o, (24,), 24, n_boot=n_boot, seed=d, by_month=False)
    rows = matured(s, o, 24)
    by_hash = {link_key(SECRET, p): p for p in procs["procedure_id"]}
    tr = truth.set_index("procedure_id")
    out = []
    for outcome in OUTCOMES:
        m = rows[rows["outcome"] == outcome]
        ids = m["key_hash"].map(by_hash)
        true_oe = float(tr.loc[ids, f"p_{outcome}_24m"].mean() / m[horizon_column(24)].mean())
        r = realized.metrics[realized.metrics["outcome"] == outcome].iloc[0]
        out.append({"deployment": d, "outcome": outcome, "factor": factor, "matured": int(r["matured"]),
                    "events": int(r["events"]), "true_oe": true_oe, "oe": float(r["observed_expected"]),
                    "ci_low": float(r["observed_expected_ci_low"]), "ci_high": float(r["observed_expected_ci_high"]),
                    "covered": bool(r["observed_expected_ci_low"] <= true_oe <= r["observed_expected_ci_high"])})
    print(f"coverage {d}: " + json.dumps([(o["outcome"][:3], round(o["true_oe"], 3), round(o["ci_low"], 3),
                                           round(o["ci_high"], 3), o["covered"]) for o in out]), file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------- detection

#: The board's quarterly looks, months after the deployment's first day, for two years.
LOOK_MONTHS = tuple(range(3, 25, 3))


def detection_one(d: int, n: int, n_boot: int, shift: float) -> dict:
    """Every look's figures per outcome and horizon (``series``: one row per look where the
    series' matured set grew; an unchanged set gives the same figures and is carried
    over), and the look and series of the first alert (an under-prediction one when
    shifted, any one otherwise)."""
    profile = deployment_profile()
    tables, truth = simulate(profile, n, seed=20_000 + d)
    typed = validate_raw(tables)
    labels = build_labels(typed)
    procs = typed["procedures"].set_index("procedure_id").loc[labels.index.astype(str)]
    surgery = procs["surgery_date"]
    risks = {o: _risks(procs.reset_index(), truth, o, 1 / shift) for o in OUTCOMES}
    out = {"deployment": d, "shift": shift, "first_alert": None, "series": []}
    started = time.perf_counter()
    last: dict[tuple, dict] = {}
    for look in LOOK_MONTHS:
        cut = pd.Timestamp(START) + pd.DateOffset(months=look)
        followed = (cut - surgery).dt.days.to_numpy(dtype="float64")
        visible = followed >= 3
        for outcome in OUTCOMES:
            t = labels[f"{outcome}_time_days"].to_numpy(dtype="float64")
            s = labels[f"{outcome}_status"].to_numpy(dtype="int64")
            seen = t <= followed  # truncated at the look's cut, as an export drawn then
            t_c, s_c = np.where(seen, t, followed), np.where(seen, s, 0)
            for j, h in enumerate(DEFAULT_HORIZONS_MONTHS):
                m = visible & (followed >= horizon_days(h))
                key = (outcome, h)
                if m.sum() < MIN_MATURED_ALERT:
                    continue
                if key in last and last[key]["matured"] == int(m.sum()):
                    row = dict(last[key], look_month=look)
                else:
                    table = evaluate_at_horizons(t_c[m], s_c[m], {horizon_days(h): risks[outcome][m, j]},
                                                 n_boot=n_boot, seed=d)
                    r = table.iloc[0]
                    row = {"look_month": look, "outcome": outcome, "horizon_months": h, "matured": int(m.sum()),
                           "events": int(r["events"]), "role": "champion", "model_version": "1",
                           **{k: float(r[k]) for k in ("observed_expected", "observed_expected_ci_low",
                                                       "observed_expected_ci_high", "calibration_slope",
                                                       "calibration_slope_ci_low", "calibration_slope_ci_high")}}
                last[key] = row
                out["series"].append(row)
        if out["first_alert"] is None:
            out["first_alert"] = _first_alert(pd.DataFrame([r for r in out["series"] if r["look_month"] == look]), shift)
    print(f"detection {d} shift {shift}: {out['first_alert']} ({time.perf_counter() - started:.0f} s)", file=sys.stderr,
          flush=True)
    return out


def _first_alert(rows: pd.DataFrame, shift: float) -> dict | None:
    if rows.empty:
        return None
    alerts = calibration_alerts(rows)
    if shift != 1:
        alerts = alerts[alerts["alert"] == "under_prediction"]
    if alerts.empty:
        return None
    hit = rows.merge(alerts[["outcome", "horizon_months", "alert"]], on=["outcome", "horizon_months"])
    first = hit.sort_values("matured").iloc[0]
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in first[["look_month", "outcome", "horizon_months",
                                                                          "alert", "matured", "events",
                                                                          "observed_expected"]].items()}


# ---------------------------------------------------------------- alert rules compared

def _alerting(look_rows: pd.DataFrame, rule: str) -> pd.DataFrame:
    """The (outcome, horizon) series of one look that alert under ``rule``:
    ``product`` (``calibration_alerts``: every series), ``longest`` (per outcome only the
    longest horizon with enough matured predictions and events), ``persistent`` (decided
    by the caller: the product rule at two consecutive looks)."""
    alerts = calibration_alerts(look_rows)
    if rule == "longest" and len(alerts):
        ok = look_rows[(look_rows["matured"] >= MIN_MATURED_ALERT) & (look_rows["events"] >= 20)]
        longest = ok.groupby("outcome")["horizon_months"].max()
        alerts = alerts[alerts["horizon_months"] == alerts["outcome"].map(longest)]
    return alerts


def compare_rules(path: Path = OUT / "bench_realized_detection.json") -> dict:
    """False alarms (null deployments) and detection (shifted) of each rule, from the
    series a detection run saved."""
    data = json.loads(path.read_text())
    out = {}
    for rule in ("product", "longest", "persistent"):
        res = {}
        for group in ("null", "shifted"):
            firsts = []
            for dep in data[group]:
                series = pd.DataFrame(dep["series"])
                first, previous = None, set()
                for look in LOOK_MONTHS:
                    rows = series[series["look_month"] == look] if len(series) else series
                    if rows.empty:
                        continue
                    alerts = _alerting(rows, "longest" if rule == "longest" else "product")
                    if group == "shifted":
                        alerts = alerts[alerts["alert"] == "under_prediction"]
                    keys = {(a.outcome, a.horizon_months, a.alert) for a in alerts.itertuples()}
                    hit = keys & previous if rule == "persistent" else keys
                    previous = keys
                    if hit:
                        o, h, _ = sorted(hit)[0]
                        r = rows[(rows["outcome"] == o) & (rows["horizon_months"] == h)].iloc[0]
                        first = {"look_month": look, "matured": int(r["matured"]), "events": int(r["events"])}
                        break
                firsts.append(first)
            hit = [f for f in firsts if f]
            res[group] = {"deployments": len(firsts), "flagged": len(hit)}
            if group == "shifted" and hit:
                res[group].update({"matured_median": float(np.median([f["matured"] for f in hit])),
                                   "matured_p90": float(np.percentile([f["matured"] for f in hit], 90)),
                                   "look_month_median": float(np.median([f["look_month"] for f in hit]))})
        out[rule] = res
    return out


# ---------------------------------------------------------------- main

def _summary_coverage(rows: list[dict]) -> dict:
    df = pd.DataFrame(rows)
    per = df.groupby("outcome").agg(coverage=("covered", "mean"), matured=("matured", "median"),
                                    events=("events", "median"),
                                    width=("ci_high", lambda s: float(np.median(s - df.loc[s.index, "ci_low"]))))
    return {"deployments": int(df["deployment"].nunique()), "coverage_all": float(df["covered"].mean()),
            "per_outcome": per.reset_index().to_dict("records")}


def _summary_detection(rows: list[dict], shift: float) -> dict:
    firsts = [r["first_alert"] for r in rows]
    hit = [f for f in firsts if f is not None]
    out = {"deployments": len(rows), "shift": shift, "flagged": len(hit), "flagged_share": len(hit) / len(rows)}
    if shift != 1 and hit:
        matured = np.array([f["matured"] for f in hit])
        events = np.array([f["events"] for f in hit])
        looks = np.array([f["look_month"] for f in hit])
        out.update({"matured_at_detection_median": float(np.median(matured)),
                    "matured_at_detection_p90": float(np.percentile(matured, 90)),
                    "events_at_detection_median": float(np.median(events)),
                    "look_month_median": float(np.median(looks)), "look_month_p90": float(np.percentile(looks, 90)),
                    "first_alert_series": pd.Series([f"{f['outcome']} {f['horizon_months']:g}m" for f in hit])
                    .value_counts().to_dict()})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["coverage", "detection", "rules"])
    ap.add_argument("--deployments", type=int, default=200)
    ap.add_argument("--first", type=int, default=0, help="number of the first deployment (coverage: to extend a run)")
    ap.add_argument("--n", type=int, default=1000, help="procedures a deployment scores in its year")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--shift", type=float, default=1.5, help="true O/E of the shifted deployments (detection)")
    ap.add_argument("--shifted", type=int, default=None, help="shifted deployments (detection; default --deployments)")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.mode == "rules":  # from the last detection run's saved series
        print(json.dumps(compare_rules(), indent=1))
        return 0
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        if args.mode == "coverage":
            parts = pool.map(coverage_one, range(args.first, args.first + args.deployments), [args.n] * args.deployments,
                             [args.bootstrap] * args.deployments)
            rows = [r for part in parts for r in part]
            result = {"summary": _summary_coverage(rows), "rows": rows}
        else:
            k, j = args.deployments, args.shifted or args.deployments
            null = list(pool.map(detection_one, range(k), [args.n] * k, [args.bootstrap] * k, [1.0] * k))
            shifted = list(pool.map(detection_one, range(k, k + j), [args.n] * j, [args.bootstrap] * j, [args.shift] * j))
            result = {"summary": {"null": _summary_detection(null, 1.0), "shifted": _summary_detection(shifted, args.shift)},
                      "null": null, "shifted": shifted}
    result["seconds"] = time.perf_counter() - started
    result["args"] = vars(args)
    (OUT / f"bench_realized_{args.mode}.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result["summary"], indent=1, default=str))
    print(f"{result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
