"""Benchmark of issue 13's targets: a model moved to a new site, then repaired there.

For each ``--train-profile``: champions of every outcome trained through
``training.pipeline.run`` (as ``refracture train``; ``--candidates``/``--search-trials``
budget) in a temporary MLflow store, on ``--n-train`` procedures (seed 1). Then on site-c
(``site-c-older-frail-pkp``), a *fresh* evaluation cohort of ``--n-eval`` procedures
(seed 99) with its true cumulative incidence (``truth.parquet``) gives, at 24 months:

- **transport** (before anything is done): O/E (Aalen-Johansen over mean predicted),
  calibration slope and td-AUROC (``training.time_metrics``), oracle td-AUROC;
- **after recalibrate with 500 local procedures** (seed 50; the whole rule of
  ``training.recalibrate``, closed test then option (iii) on the pooled data with the
  training export, as ``refracture recalibrate`` applies it: ``training.pooled``): the same
  figures of the rule's choice (targets: slope 0.9-1.1 and O/E 0.9-1.1);
- **with 2,000 local procedures** (seed 51): the same; target AUROC within 0.03 of the
  oracle's (recalibration is monotone: it cannot change AUROC; only a refit (iii) could);
- **(iii) forced**: for each local size, the pooled refit's figures whatever the rule
  chose (what (iii) would give; with its held-out p against (ii));
- **site-report on 20k procedures**: wall time of ``refracture site-report`` (CLI in a
  subprocess, validation and MLflow logging included; target < 60 s).

    .venv/bin/python bench/bench_site.py --train-profile xiong2021-pvp --n-train 6000

Writes ``bench/out/bench_site.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.io import read_raw, write_raw
from features.labels import horizon_days
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from modelstore.tracking import configure_tracking
from training.config import TrainConfig
from training.pipeline import run
from training.pooled import decide_with_pool, pooled_refit
from training.recalibrate import crossfit_logits
from training.site_eval import site_data
from training.site_run import choose_versions
from training.time_metrics import calibration_slope_intercept, observed_expected, td_auroc

ROOT = Path(__file__).resolve().parents[1]
SITE = "site-c-older-frail-pkp"


def _write(profile: str, n: int, seed: int, folder: Path) -> Path:
    tables, truth = simulate(load_profile(profile), n, seed)
    write_raw(tables, folder)
    truth.to_parquet(folder / "truth.parquet")
    return folder


def _figures(p24, t, s, truth=None) -> dict:
    h = horizon_days(24)
    out = {"oe": observed_expected(t, s, p24, h), "slope": calibration_slope_intercept(t, s, p24, h)[0],
           "auroc": td_auroc(t, s, p24, h)}
    if truth is not None:
        out["oracle_auroc"] = td_auroc(t, s, truth, h)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-profile", action="append", default=None)
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--n-eval", type=int, default=20000)
    ap.add_argument("--candidates", default="logistic,xgboost")
    ap.add_argument("--search-trials", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "bench_site.json")
    args = ap.parse_args()
    profiles = args.train_profile or ["xiong2021-pvp"]
    results = {"n_train": args.n_train, "n_eval": args.n_eval, "candidates": args.candidates, "profiles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fresh = _write(SITE, args.n_eval, 99, tmp / "fresh")
        fresh_site = site_data(validate_raw(read_raw(fresh)))
        truth = pd.read_parquet(fresh / "truth.parquet").set_index("procedure_id")
        truth.index = truth.index.astype(str)
        local = {n: site_data(validate_raw(read_raw(_write(SITE, n, seed, tmp / f"local{n}"))))
                 for n, seed in ((500, 50), (2000, 51))}
        for profile in profiles:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            store = tmp / f"mlflow-{profile}"
            train_dir = _write(profile, args.n_train, 1, tmp / f"train-{profile}")
            t0 = time.perf_counter()
            run(TrainConfig(raw_dir=train_dir, search_trials=args.search_trials, n_bootstrap=50, cv_folds=3,
                            candidates=tuple(args.candidates.split(",")), n_jobs=2, store_dir=store))
            train_s = time.perf_counter() - t0
            configure_tracking(store)
            train_site = site_data(validate_raw(read_raw(train_dir)))
            res = {"train_seconds": train_s, "outcomes": {}}
            for c in choose_versions("champion", None):
                ok, t, s = fresh_site.follow_up(c.outcome)
                eta = c.model.score_from_features(c.model.features(fresh_site.records[ok]))
                true24 = truth.loc[fresh_site.records.index[ok], f"p_{c.outcome}_24m"].to_numpy()
                k = c.model.calibration.index(24)

                def p24(cal):
                    return 1 / (1 + np.exp(-cal.logit(eta)[:, k]))

                row = {"transport": _figures(p24(c.model.calibration), t, s, true24)}
                pok, pt, ps = train_site.follow_up(c.outcome)
                pool = (c.model.features(train_site.records[pok]), pt, ps)
                X_fresh = c.model.features(fresh_site.records[ok])
                for n, data in local.items():
                    okl, tl, sl = data.follow_up(c.outcome)
                    Xl = c.model.features(data.records[okl])
                    etal = c.model.score_from_features(Xl)
                    m = c.model
                    t1 = time.perf_counter()
                    d = decide_with_pool(m.model_type, m.params, m.outcome, m.calibration, etal, Xl, tl, sl,
                                         data.patients[okl], 24, pool, n_jobs=2)
                    rule_s = time.perf_counter() - t1

                    def p_of(cal, scorer=None):
                        e = eta if scorer is None else scorer.raw_logit(X_fresh)  # (iii): its own score
                        return 1 / (1 + np.exp(-cal.logit(e)[:, k]))

                    row[f"local_{n}"] = {"decision": d.choice, "events": d.events, "rule_seconds": rule_s,
                                         **_figures(p_of(d.calibration, d.scorer), t, s)}
                    t1 = time.perf_counter()
                    forced = pooled_refit(m.model_type, m.params, m.outcome, *pool, Xl, tl, sl, data.patients[okl],
                                          m.calibration.horizons_months, 24,
                                          crossfit_logits("intercept_slope", m.calibration, etal, tl, sl), n_jobs=2)
                    row[f"refit_{n}"] = {"p_vs_ii": forced.p_value, "seconds": time.perf_counter() - t1,
                                         **_figures(p_of(forced.calibration, forced.scorer), t, s)}
                res["outcomes"][c.outcome] = row
            # site-report on the 20k fresh cohort through the CLI (validation + MLflow logging included).
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "refracture", "site-report", "--raw", str(fresh), "--out",
                                  str(tmp / f"report-{profile}"), "--store", str(store)],
                                 env=env, capture_output=True, text=True, cwd=ROOT)
            res["site_report_seconds_wall"] = time.perf_counter() - t0
            res["site_report_ok"] = out.returncode == 0
            if out.returncode:
                res["site_report_error"] = out.stderr[-2000:]
            results["profiles"][profile] = res
            print(f"\n### trained on {profile} (n={args.n_train}, {train_s:.0f} s), site-c fresh n={args.n_eval}\n")
            print("| outcome | stage | decision (events) | O/E | slope | AUROC | oracle AUROC |")
            print("|---|---|---|---|---|---|---|")
            for o, row in res["outcomes"].items():
                tr = row["transport"]
                print(f"| {o} | transport | – | {tr['oe']:.2f} | {tr['slope']:.2f} | {tr['auroc']:.3f} | {tr['oracle_auroc']:.3f} |")
                for n in (500, 2000):
                    r = row[f"local_{n}"]
                    print(f"| {o} | recalibrate, {n} local | {r['decision']} ({r['events']}) | {r['oe']:.2f} | "
                          f"{r['slope']:.2f} | {r['auroc']:.3f} | {tr['oracle_auroc']:.3f} |")
                    f = row[f"refit_{n}"]
                    print(f"| {o} | (iii) forced, {n} local | held-out p vs (ii) {f['p_vs_ii']:.3g} | {f['oe']:.2f} | "
                          f"{f['slope']:.2f} | {f['auroc']:.3f} | {tr['oracle_auroc']:.3f} |")
            print(f"\nsite-report on {args.n_eval} procedures: {res['site_report_seconds_wall']:.1f} s wall "
                  f"(ok={res['site_report_ok']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
