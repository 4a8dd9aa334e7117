"""Path-dependent or interventional? TreeSHAP methods on the XGBoost candidate (issues 4, 14).

For XGBoost models of a few sizes (trained on a simulated PKP cohort, adjacent fracture),
explains ``--rows`` records three ways and prints, per method, records/s on one and on two
threads, the largest additivity error |base value + sum of contributions - the model's
log-odds| (``BoostScorer.raw_logit``, the exact float64 sum of leaf values; the product
accepts 1e-5) and how the method agrees with interventional TreeSHAP: the share of records
whose dominant (largest |interventional|) feature has the same sign, and the rank
correlation of the features' mean |SHAP|.

- ``pred_contribs``: XGBoost's own path-dependent TreeSHAP (what the product uses by default);
- ``shap path-dependent``: ``shap.TreeExplainer(feature_perturbation="tree_path_dependent")``;
- ``interventional``: ``shap.TreeExplainer`` against the model's 100 background rows.

    .venv/bin/python bench/bench_shap_methods.py --rows 3000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = ((200, 3, 0.05), (400, 5, 0.2), (400, 5, 0.01), (400, 2, 0.2))  # trees, depth, learning rate


def _rank(v: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(v))


def main(argv: list[str] | None = None) -> int:
    import shap
    import xgboost as xgb

    from features.assemble import build_training_set
    from features.catalog import feature_names
    from features.simulator import load_profile, simulate
    from features.validate import validate_raw
    from modelstore.candidates import make_scorer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000)
    args = ap.parse_args(argv)
    names = feature_names("postop")
    ts = build_training_set(validate_raw(simulate(load_profile("yassavoly2025-pkp"), 8000, 2)[0]), "postop")
    lab = ts[ts["adjacent_fracture"].notna()]
    y = lab["adjacent_fracture"].astype(int).to_numpy()
    X = lab[names].iloc[np.resize(np.arange(len(lab)), args.rows)]
    data = X.to_numpy(dtype="float64")
    print(f"{args.rows} records, {len(names)} features; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| trees | depth | method | records/s, 1 thread | records/s, 2 threads | max additivity error | "
          "dominant feature same sign | rank corr. of mean abs SHAP |")
    print("|---|---|---|---|---|---|---|---|")
    for trees, depth, rate in SIZES:
        params = {"n_estimators": trees, "learning_rate": rate, "max_depth": depth, "min_child_weight": 1.0,
                  "subsample": 0.8, "colsample_bytree": 0.8, "reg_lambda": 0.1}
        scorer = make_scorer("xgboost", params, "adjacent_fracture", seed=0, n_jobs=2).fit(lab[names], y)
        exact = scorer.raw_logit(X)
        booster = scorer.booster_

        def contribs(threads: int):
            booster.set_param({"nthread": threads})
            out = booster.predict(xgb.DMatrix(data, missing=np.nan), pred_contribs=True).astype("float64")
            return float(out[0, -1]), out[:, :-1]

        def tree_shap(method: str):
            explainer = shap.TreeExplainer(booster, feature_perturbation=method, model_output="raw",
                                           data=scorer.background_ if method == "interventional" else None)

            def run(threads: int):
                booster.set_param({"nthread": threads})  # shap's C++ TreeSHAP is single-threaded
                values = np.asarray(explainer.shap_values(data, check_additivity=False), dtype="float64")
                base = float(np.ravel(explainer.expected_value)[0])
                return base, values
            return run

        methods = {"pred_contribs (path-dependent)": contribs, "shap path-dependent": tree_shap("tree_path_dependent"),
                   "interventional": tree_shap("interventional")}
        results = {}
        for label, fn in methods.items():
            rates = []
            for threads in (1, 2):
                start = time.perf_counter()
                base, values = fn(threads)
                rates.append(len(X) / (time.perf_counter() - start))
            results[label] = (base, values, rates)
        _, inter, _ = results["interventional"]
        idx = np.arange(len(X))
        top = np.abs(inter).argmax(axis=1)
        for label, (base, values, rates) in results.items():
            error = np.abs(base + values.sum(axis=1) - exact).max()
            same = (np.sign(values[idx, top]) == np.sign(inter[idx, top])).mean()
            corr = np.corrcoef(_rank(np.abs(values).mean(axis=0)), _rank(np.abs(inter).mean(axis=0)))[0, 1]
            print(f"| {trees} | {depth} | {label} | {rates[0]:,.0f} | {rates[1]:,.0f} | {error:.1e} | "
                  f"{100 * same:.1f} % | {corr:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
