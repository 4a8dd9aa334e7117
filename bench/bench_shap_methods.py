"""Exact or fast? Interventional vs path-dependent TreeSHAP on the XGBoost candidate (issue 4).

For XGBoost models of a few sizes (trained on a simulated PKP cohort, adjacent fracture),
explains ``--rows`` records with ``shap.TreeExplainer`` both ways and prints milliseconds
per record and the largest additivity error: |base value + sum of contributions - the
model's log-odds| (``BoostScorer.raw_logit``, the exact float64 sum of leaf values). The
product requires 1e-6.

    .venv/bin/python bench/bench_shap_methods.py --rows 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = ((200, 3, 0.05), (400, 5, 0.2), (400, 5, 0.01), (400, 2, 0.2))  # trees, depth, learning rate


def main(argv: list[str] | None = None) -> int:
    import shap

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
    X = lab[names].iloc[: args.rows]
    print("| trees | depth | method | ms per record | max additivity error |")
    print("|---|---|---|---|---|")
    for trees, depth, rate in SIZES:
        params = {"n_estimators": trees, "learning_rate": rate, "max_depth": depth, "min_child_weight": 1.0,
                  "subsample": 0.8, "colsample_bytree": 0.8, "reg_lambda": 0.1}
        scorer = make_scorer("xgboost", params, "adjacent_fracture", seed=0, n_jobs=2).fit(lab[names], y)
        exact = scorer.raw_logit(X)
        for method in ("interventional", "tree_path_dependent"):
            explainer = shap.TreeExplainer(scorer.model_.get_booster(), feature_perturbation=method, model_output="raw",
                                           data=scorer.background_ if method == "interventional" else None)
            start = time.perf_counter()
            values = explainer.shap_values(X.to_numpy(dtype="float64"), check_additivity=False)
            ms = 1000 * (time.perf_counter() - start) / len(X)
            error = np.abs(float(np.ravel(explainer.expected_value)[0]) + values.sum(axis=1) - exact).max()
            print(f"| {trees} | {depth} | {method} | {ms:.3f} | {error:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
