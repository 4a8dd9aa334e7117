"""Train every target on one simulated export and compare the mean predicted risk on another
with its truth: issue 22's before/after on the same files, with any checkout's code.

It uses only what ``refracture train`` used before issue 22 (``training.data``,
``training.fitting``, ``training.selection``; MLflow left out), so the same command runs
on main before the change (which ignores ``export.yaml``) and after it:

    .venv/bin/refracture synth --profile site-d-frail-registry-pkp --n 20000 --seed 22 --out /tmp/site-d-train
    .venv/bin/refracture synth --profile site-d-frail-registry-pkp --n 20000 --seed 1022 --out /tmp/site-d-fresh
    .venv/bin/python bench/train_and_score_export.py --train /tmp/site-d-train --fresh /tmp/site-d-fresh
    (cd ../main && .venv/bin/python ../<this checkout>/bench/train_and_score_export.py --train ... --fresh ...)

Prints, per target, the mean predicted risk by ``--months`` on the fresh export, its mean
true risk (``truth.parquet``) and the relative difference.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from features.assemble import build_training_set
from features.catalog import feature_names
from features.io import read_raw
from features.labels import TARGETS
from features.validate import validate_raw
from training.config import TrainConfig
from training.data import outcome_data, prepare
from training.fitting import fit_candidate
from training.progress import NullProgress
from training.selection import select


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--fresh", type=Path, required=True)
    ap.add_argument("--candidates", default="logistic")
    ap.add_argument("--months", type=float, default=24.0)
    args = ap.parse_args()
    t0 = time.process_time()
    cfg = TrainConfig(raw_dir=args.train, register=False, search_trials=0, n_bootstrap=50, cv_folds=2, n_jobs=1,
                      candidates=tuple(c.strip() for c in args.candidates.split(",")))
    prep = prepare(cfg)
    fresh = build_training_set(validate_raw(read_raw(args.fresh)), "postop")
    truth = pd.read_parquet(args.fresh / "truth.parquet").set_index("procedure_id").reindex(fresh.index)
    print("| target | mean predicted | mean true | relative difference |\n|---|---|---|---|")
    for target in TARGETS:
        data = outcome_data(prep, target, cfg)
        results = {m: fit_candidate(m, cfg, data, None, {}, NullProgress()) for m in cfg.candidates}
        model = results[select(results)[0]].model
        p = model.curve_from_features(fresh[feature_names(model.feature_set)])[f"p_{args.months:g}m"].mean()
        true = truth[f"p_{target}_{args.months:g}m"].mean()
        print(f"| {target} | {p:.4f} | {true:.4f} | {p / true - 1:+.3f} |", flush=True)
    print(f"\nCPU {time.process_time() - t0:.0f} s")


if __name__ == "__main__":
    main()
