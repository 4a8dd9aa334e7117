"""Benchmark of issue 11's targets: absolute risk over time, death competing.

For each simulator profile: a training cohort of ``--n-train`` procedures (seed 1) goes
through the training stages as ``refracture train`` runs them (``training.data``,
``training.fitting``, ``training.selection``; MLflow logging left out, it is not what is
measured), every candidate for every outcome; the selected model then scores a *fresh*
cohort of ``--n-eval`` procedures (seed 2) whose true cumulative incidence is known
(``truth.parquet``: ``p_<outcome>_<m>m``). Reported per outcome, at 12 and 24 months:

- mean predicted vs mean true risk (relative difference; target within 10 %);
- calibration slope of predicted against true risk on the logit scale: OLS slope of
  logit(true) on logit(predicted) (target 0.9-1.1; below 1 = predictions too extreme);
- time-dependent AUROC of the model and of the oracle (the true risk) on the fresh cohort's
  observed outcomes (``training.time_metrics.td_auroc``; target: gap within 0.02);
- observed / expected on the fresh cohort (observed: Aalen-Johansen, 1 - Kaplan-Meier for
  death; ``training.time_metrics.observed_expected``), for the model and the oracle;
- training time of all candidates for the outcome (target < 5 minutes at n = 10k).

``death`` (the context model: probability of death from any cause, pre-operative features,
oracle ``p_death_<m>m``) is a target like the outcomes; ``--targets`` picks a subset, e.g.
``--targets death --skip-heavy`` for the death model alone.

Then the censoring-heavy cohort: the xiong profile with more loss to follow-up and higher
mortality so that at least 30 % of procedures are censored or dead before 24 months; the
mean predicted 24-month risk of the selected model vs the truth (target within 10 %), next to
the old complete-case label rate (events among procedures followed to 24 months or with the
event).

    .venv/bin/python bench/bench_risk_over_time.py --n-train 10000 --n-eval 20000 --search-trials 20

Writes ``bench/out/bench_risk_over_time.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.assemble import build_training_set
from features.catalog import feature_names
from features.labels import TARGETS, horizon_days
from features.simulator import load_profile, simulate
from features.simulator.profile import Share
from features.validate import validate_raw
from features.io import write_frame_atomic, write_raw
from training.config import TrainConfig
from training.data import outcome_data, prepare
from training.fitting import fit_candidate
from training.progress import NullProgress
from training.report import markdown_table
from training.selection import select
from training.time_metrics import observed_expected, td_auroc

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("xiong2021-pvp", "yassavoly2025-pkp")
REPORTED_HORIZONS = (12.0, 24.0)
TARGET_MEAN_REL = 0.10
TARGET_SLOPE = (0.9, 1.1)
TARGET_AUROC_GAP = 0.02
TARGET_SECONDS = 300.0
HEAVY_SHARE = 0.30


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def heavy_profile(name: str, lost: float, mortality_factor: float):
    """``name`` with ``lost`` loss to follow-up and mortality multiplied by ``mortality_factor``."""
    p = load_profile(name)
    fu = p.followup
    annual = fu.mortality.annual_at_80.model_copy(update={
        "female": min(0.9, fu.mortality.annual_at_80.female * mortality_factor),
        "male": min(0.9, fu.mortality.annual_at_80.male * mortality_factor)})
    fu = fu.model_copy(update={
        "lost_to_followup": Share(value=lost, source="bench: censoring-heavy scenario"),
        "mortality": fu.mortality.model_copy(update={"annual_at_80": annual})})
    return p.model_copy(update={"followup": fu, "name": f"{name}-heavy"})


def train_profile(profile, n: int, seed: int, cfg_kwargs: dict, folder: Path, targets=TARGETS) -> dict:
    """Train every target (outcomes and death) on a simulated cohort; returns {outcome: (model, seconds, note)}."""
    tables, truth = simulate(profile, n_procedures=n, seed=seed)
    write_raw(tables, folder)
    write_frame_atomic(truth, folder / "truth.parquet")
    cfg = TrainConfig(raw_dir=folder, register=False, **cfg_kwargs)
    prep = prepare(cfg)
    out = {}
    for outcome in targets:
        t0 = time.perf_counter()
        data = outcome_data(prep, outcome, cfg)
        results = {m: fit_candidate(m, cfg, data, None, {}, NullProgress()) for m in cfg.candidates}
        chosen, _ = select(results)
        out[outcome] = {"model": results[chosen].model, "seconds": time.perf_counter() - t0, "selected": chosen,
                        "candidate_seconds": {m: round(r.seconds, 1) for m, r in results.items()}}
    return out


def evaluate_fresh(models: dict, profile, n: int, seed: int) -> tuple[list[dict], dict]:
    """Score a fresh cohort; compare with its truth and its observed outcomes."""
    tables, truth = simulate(profile, n_procedures=n, seed=seed)
    typed = validate_raw(tables)
    ts = build_training_set(typed, "postop")
    truth = truth.set_index("procedure_id").reindex(ts.index)
    rows = []
    for outcome, m in models.items():
        model = m["model"]
        curve = model.curve_from_features(ts[feature_names(model.feature_set)])
        t = ts[f"{outcome}_time_days"].to_numpy(dtype="float64")
        s = ts[f"{outcome}_status"].to_numpy().astype(int)
        for h in REPORTED_HORIZONS:
            p = curve[f"p_{h:g}m"].to_numpy()
            true = truth[f"p_{outcome}_{h:g}m"].to_numpy(dtype="float64")
            slope = float(np.polyfit(_logit(p), _logit(true), 1)[0])
            auc, auc_oracle = td_auroc(t, s, p, horizon_days(h)), td_auroc(t, s, true, horizon_days(h))
            oe, oe_oracle = observed_expected(t, s, p, horizon_days(h)), observed_expected(t, s, true, horizon_days(h))
            rows.append({"outcome": outcome, "horizon_months": h, "selected": m["selected"],
                         "mean_predicted": float(p.mean()), "mean_true": float(true.mean()),
                         "mean_rel_diff": float(p.mean() / true.mean() - 1), "logit_slope_vs_true": slope,
                         "td_auroc": auc, "td_auroc_oracle": auc_oracle, "td_auroc_gap": auc - auc_oracle,
                         "observed_expected": oe, "observed_expected_oracle": oe_oracle,
                         "mean_abs_diff_truth": float(np.abs(p - true).mean()), "train_seconds": m["seconds"]})
    h = horizon_days(24)
    ended = {o: float(((ts[f"{o}_time_days"] < h) & (ts[f"{o}_status"] != 1)).mean()) for o in models}
    return rows, ended


def complete_case_rate(profile, n: int, seed: int, outcome: str) -> tuple[float, float, float]:
    """(old complete-case label rate, true mean 24-month risk, share censored or dead before 24
    months) on a cohort of ``profile``: the old rule dropped every procedure whose follow-up
    ended before 24 months without the event, deaths included."""
    tables, truth = simulate(profile, n_procedures=n, seed=seed)
    ts = build_training_set(validate_raw(tables), "postop")
    t, s = ts[f"{outcome}_time_days"].to_numpy(dtype="float64"), ts[f"{outcome}_status"].to_numpy()
    h = horizon_days(24)
    old = np.where((s == 1) & (t <= h), 1.0, np.where(t >= h, 0.0, np.nan))
    return float(np.nanmean(old)), float(truth[f"p_{outcome}_24m"].mean()), float(((t < h) & (s != 1)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-eval", type=int, default=20_000)
    ap.add_argument("--search-trials", type=int, default=20)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--heavy-lost", type=float, default=0.45)
    ap.add_argument("--heavy-mortality", type=float, default=2.5)
    ap.add_argument("--skip-heavy", action="store_true")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated outcomes and/or death")
    args = ap.parse_args()
    cfg_kwargs = {"search_trials": args.search_trials, "n_bootstrap": args.bootstrap, "n_jobs": 2}
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        ap.error(f"--targets: unknown {unknown or 'none given'}; choose from {', '.join(TARGETS)}")
    report: dict = {"args": vars(args), "profiles": {}, "heavy": None}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.profiles.split(","):
            profile = load_profile(name)
            models = train_profile(profile, args.n_train, 1, cfg_kwargs, Path(tmp) / name, targets)
            rows, ended = evaluate_fresh(models, profile, args.n_eval, 2)
            report["profiles"][name] = {"rows": rows, "ended_before_24m": ended,
                                        "candidate_seconds": {o: m["candidate_seconds"] for o, m in models.items()}}
            print(f"\n### {name}: trained on {args.n_train:,}, evaluated on a fresh {args.n_eval:,}\n")
            print(markdown_table(pd.DataFrame(rows), ".4f"), flush=True)
        if not args.skip_heavy:
            profile = heavy_profile("xiong2021-pvp", args.heavy_lost, args.heavy_mortality)
            models = train_profile(profile, args.n_train, 3, cfg_kwargs, Path(tmp) / "heavy", targets)
            rows, ended = evaluate_fresh(models, profile, args.n_eval, 4)
            heavy = []
            for r in rows:
                if r["horizon_months"] != 24.0:
                    continue
                old, true, share = complete_case_rate(profile, args.n_eval, 4, r["outcome"])
                heavy.append({**r, "ended_before_24m": ended[r["outcome"]], "old_complete_case_rate": old,
                              "old_rel_diff": old / true - 1})
            report["heavy"] = heavy
            print(f"\n### censoring-heavy xiong2021-pvp (lost {args.heavy_lost:.0%}, mortality x{args.heavy_mortality})\n")
            print(markdown_table(pd.DataFrame(heavy)[["outcome", "ended_before_24m", "mean_predicted", "mean_true",
                                                      "mean_rel_diff", "old_complete_case_rate", "old_rel_diff",
                                                      "train_seconds"]], ".4f"), flush=True)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_risk_over_time.json").write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
