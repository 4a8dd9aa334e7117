"""Coverage of the 95 % intervals of AUROC, O/E and calibration slope at 24 months (issue 22).

**The fixed model.** For each outcome and for death, the elastic net is trained once, as
``refracture train`` trains it (``training.data``, ``training.fitting``: IPCW labels,
grouped folds, ``--search-trials`` trials, horizon calibration), on a ``--n-train``
procedure cohort of ``--profile`` (seed 1). It is then held fixed.

**The truth** of each metric is its population value for that fixed model, computed from
the simulator's true 24-month cumulative incidence ``p_i`` (death competing;
``truth.parquet``) of every procedure of a ``--n-truth`` cohort (seed 2) with the model's
predicted risk ``r_i`` -- no outcome drawn, no censoring, so no estimation noise but the
finite population (a 200,000-procedure population leaves a Monte Carlo error about 20x
smaller than a 4,000-procedure cohort's):

- td-AUROC (Blanche's definition 2: cases have the event by 24 months, controls are all
  others): the probability that a case's risk exceeds a control's (ties count half) over
  pairs of distinct procedures, each procedure a case with probability p_i and a control
  with 1 - p_i: sum_{i != j} p_i (1 - p_j) [1(r_i > r_j) + 1(r_i = r_j) / 2] /
  sum_{i != j} p_i (1 - p_j);
- O/E: mean p_i / mean r_i (the estimator's Aalen-Johansen incidence estimates mean p_i);
- calibration slope: the slope b of the logistic model logit P(event by 24 months) = a +
  b logit(r_i) that the IPCW-weighted fit estimates, i.e. the maximiser of the expected
  log-likelihood sum p_i log expit(a + b lp_i) + (1 - p_i) log(1 - expit(a + b lp_i))
  (a logistic fit with fractional labels p_i).

The same three figures estimated from the population's *observed* follow-up (IPCW and
Aalen-Johansen, ``training.time_metrics``) are printed next to them as a check.

**The cohorts.** ``--cohorts`` fresh cohorts of ``--n`` procedures (seeds ``--seed`` + k),
each through the real data path (``simulate`` -> ``validate_raw`` ->
``build_training_set``), scored by the fixed models and evaluated by
``training.time_metrics.evaluate_at_horizons`` at 24 months with ``--boot`` resamples
(the site report's default 200), twice with the same seed: resampling procedures
(``patients=None``, what every interval did before) and resampling patients (what they do
now). An interval covers when truth lies within [low, high].

    .venv/bin/python bench/bench_coverage.py --cohorts 200

Writes ``bench/out/bench_coverage.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

from features.assemble import build_training_set
from features.catalog import feature_names
from features.io import write_frame_atomic, write_raw
from features.labels import TARGETS, horizon_days
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from modelstore.calibration import fit_logistic_1d
from modelstore.candidates import logit
from training.config import TrainConfig
from training.data import outcome_data, prepare
from training.fitting import fit_candidate
from training.progress import NullProgress
from training.time_metrics import evaluate_at_horizons

ROOT = Path(__file__).resolve().parents[1]
H24 = horizon_days(24)
METRICS = {"td_auroc": "AUROC", "observed_expected": "O/E", "calibration_slope": "calibration slope"}
METHODS = {"procedures (before)": False, "patients (after)": True}


def train_models(profile, n: int, trials: int, folder: Path, targets=TARGETS) -> dict:
    """The elastic net of each of ``targets``, trained once on a cohort of ``n`` (seed 1)."""
    tables, truth = simulate(profile, n_procedures=n, seed=1)
    write_raw(tables, folder)
    write_frame_atomic(truth, folder / "truth.parquet")
    cfg = TrainConfig(raw_dir=folder, register=False, candidates=("elastic_net",), search_trials=trials,
                      n_bootstrap=50, n_jobs=1)
    prep = prepare(cfg)
    return {target: fit_candidate("elastic_net", cfg, outcome_data(prep, target, cfg), None, {},
                                  NullProgress()).model for target in targets}


def cohort(profile, n: int, seed: int, models: dict) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, dict]:
    """(training set, truth, patient ids, target -> predicted 24-month risk) of one cohort."""
    tables, truth = simulate(profile, n_procedures=n, seed=seed)
    typed = validate_raw(tables)
    ts = build_training_set(typed, "postop")
    truth = truth.set_index("procedure_id").reindex(ts.index)
    patients = typed["procedures"].set_index("procedure_id")["patient_id"].reindex(ts.index).to_numpy()
    risk = {target: m.curve_from_features(ts[feature_names(m.feature_set)])["p_24m"].to_numpy()
            for target, m in models.items()}
    return ts, truth, patients, risk


def population_auroc(p: np.ndarray, r: np.ndarray) -> float:
    """sum_{i != j} p_i (1 - p_j) [1(r_i > r_j) + 1(r_i = r_j) / 2] / sum_{i != j} p_i (1 - p_j)."""
    order = np.argsort(r, kind="mergesort")
    p, r = p[order], r[order]
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    case, control = np.add.reduceat(p, starts), np.add.reduceat(1 - p, starts)
    below = np.cumsum(control) - control
    same = np.add.reduceat(p * (1 - p), starts)  # i = j pairs, counted half in the ties
    num = (case * (below + 0.5 * control)).sum() - 0.5 * same.sum()
    den = p.sum() * (1 - p).sum() - (p * (1 - p)).sum()
    return float(num / den)


def population_truth(p: np.ndarray, r: np.ndarray) -> dict[str, float]:
    """The population values of the three metrics (module docstring)."""
    slope, _ = fit_logistic_1d(logit(r), p)
    return {"td_auroc": population_auroc(p, r), "observed_expected": float(p.mean() / r.mean()),
            "calibration_slope": float(slope)}


def coverage_ci(hits: int, n: int) -> tuple[float, float]:
    ci = stats.binomtest(hits, n).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohorts", type=int, default=200)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-truth", type=int, default=200_000)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--search-trials", type=int, default=5)
    ap.add_argument("--profile", default="yassavoly2025-pkp")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated outcomes and/or death")
    args = ap.parse_args()
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    if not targets or set(targets) - set(TARGETS):
        ap.error(f"--targets: choose from {', '.join(TARGETS)}")
    profile = load_profile(args.profile)
    t0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        models = train_models(profile, args.n_train, args.search_trials, Path(tmp) / "train", targets)
    print(f"trained {', '.join(models)} ({time.process_time() - t0:.0f} s CPU)", flush=True)
    ts, truth, patients, risk = cohort(profile, args.n_truth, 2, models)
    population, check = {}, {}
    with threadpool_limits(limits=1, user_api="blas"):
        for target in targets:
            p = truth[f"p_{target}_24m"].to_numpy(dtype="float64")
            population[target] = population_truth(p, risk[target])
            row = evaluate_at_horizons(ts[f"{target}_time_days"].to_numpy(dtype="float64"),
                                       ts[f"{target}_status"].to_numpy().astype(int), {H24: risk[target]},
                                       n_boot=0, patients=patients).iloc[0]
            check[target] = {k: float(row[k]) for k in METRICS}
    print(f"truth from {args.n_truth:,} procedures ({time.process_time() - t0:.0f} s CPU)", flush=True)
    for target in targets:
        print(f"  {target}: " + ", ".join(f"{METRICS[k]} {population[target][k]:.4f} (observed {check[target][k]:.4f})"
                                          for k in METRICS), flush=True)

    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        for k in range(args.cohorts):
            ts, truth, patients, risk = cohort(profile, args.n, args.seed + k, models)
            for target in targets:
                t = ts[f"{target}_time_days"].to_numpy(dtype="float64")
                s = ts[f"{target}_status"].to_numpy().astype(int)
                for method, by_patient in METHODS.items():
                    row = evaluate_at_horizons(t, s, {H24: risk[target]}, n_boot=args.boot, seed=k,
                                               patients=patients if by_patient else None).iloc[0]
                    for m in METRICS:
                        lo, hi = float(row[f"{m}_ci_low"]), float(row[f"{m}_ci_high"])
                        rows.append({"cohort": k, "target": target, "method": method, "metric": m,
                                     "estimate": float(row[m]), "low": lo, "high": hi,
                                     "covers": bool(lo <= population[target][m] <= hi),
                                     "events": int(row["events"]), "patients": len(pd.unique(patients))})
            if (k + 1) % 20 == 0:
                print(f"{k + 1} cohorts, {time.process_time() - t0:.0f} s CPU", flush=True)
    frame = pd.DataFrame(rows)
    summary = []
    for (target, metric, method), g in frame.groupby(["target", "metric", "method"], sort=False):
        hits = int(g["covers"].sum())
        lo, hi = coverage_ci(hits, len(g))
        est = g["estimate"].to_numpy()
        summary.append({"target": target, "metric": metric, "method": method, "cohorts": len(g),
                        "truth": population[target][metric], "observed_in_population": check[target][metric],
                        "mean_estimate": float(np.nanmean(est)), "sd_estimate": float(np.nanstd(est, ddof=1)),
                        "mean_width": float((g["high"] - g["low"]).mean()),
                        "below": float((g["high"] < population[target][metric]).mean()),
                        "above": float((g["low"] > population[target][metric]).mean()),
                        "coverage": hits / len(g), "coverage_ci": (lo, hi),
                        "events_median": float(g["events"].median()), "patients_median": float(g["patients"].median())})
    cpu = time.process_time() - t0
    out = pd.DataFrame(summary)
    print(f"\n### Coverage of 95 % intervals at 24 months: {args.cohorts} cohorts of {args.n:,} procedures "
          f"({args.profile}), {args.boot} resamples\n")
    print("| target | events (median) | metric | truth | mean estimate (SD) | coverage, procedures (before) "
          "| coverage, patients (after) | width after / before |")
    print("|---|---|---|---|---|---|---|---|")
    for (target, metric), g in out.groupby(["target", "metric"], sort=False):
        before = g[g["method"] == "procedures (before)"].iloc[0]
        after = g[g["method"] == "patients (after)"].iloc[0]
        cells = [f"{r['coverage']:.1%} ({r['coverage_ci'][0]:.1%}-{r['coverage_ci'][1]:.1%})" for r in (before, after)]
        print(f"| {target} | {after['events_median']:.0f} | {METRICS[metric]} | {after['truth']:.4f} | "
              f"{after['mean_estimate']:.4f} ({after['sd_estimate']:.4f}) | {cells[0]} | {cells[1]} | "
              f"{after['mean_width'] / before['mean_width']:.2f} |")
    print(f"\nCPU {cpu:.0f} s")
    path = ROOT / "bench" / "out" / "bench_coverage.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": vars(args), "cpu_seconds": cpu, "population": population,
                                "population_observed": check, "summary": summary}, indent=1, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
