"""How close to the oracle can a model of one procedure record get? (issue 3, the AUROC target)

The simulator's oracle is the true probability, which depends on more than a single
procedure's record holds: measurement noise (DXA), and for the adjacent outcome the other
levels treated in the same session (a cemented neighbour cannot fracture; a sister level
two steps away adds its own adjacent-fracture risk to the level between). This script
separates the gap between the champion and the oracle into

- the **ceiling**: a model trained on a very large cohort (``--big``), so that sample size
  no longer limits it, scored on a fresh cohort (``--fresh``): what the record's features
  can reach at best;
- the **sample-size loss**: the same model type trained on the training part of an
  n = ``--n`` cohort (the benchmark's size), scored on the same fresh cohort;
- for ``adjacent_fracture``, the ceiling with two extra inputs the record contract does not
  have: whether the vertebra directly above / below was treated in the same session;
- the ceiling's gap within single-level and within multi-level sessions.

All AUROCs are on the fresh cohort (``--fresh`` procedures), so test-set noise is small.
Models: XGBoost and elastic net at the training defaults (``training.search.default_params``).

    .venv/bin/python bench/bench_train_ceiling.py --big 200000 --fresh 100000 --n 10000

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCENARIOS = (("xiong2021-pvp", "cemented_refracture"), ("yassavoly2025-pkp", "adjacent_fracture"))
NEIGHBOURS = ["upper_neighbour_treated", "lower_neighbour_treated"]


def cohort(profile: str, outcome: str, n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Labelled post-op training set (with session neighbour flags) and the true risks."""
    from features.assemble import build_training_set
    from features.levels import level_index
    from features.simulator import load_profile, simulate
    from features.validate import validate_raw

    tables, truth = simulate(load_profile(profile), n_procedures=n, seed=seed)
    typed = validate_raw(tables)
    ts = build_training_set(typed, "postop")
    p = typed["procedures"]
    index = level_index(p["level"]).astype(float).to_numpy()
    session = (p["patient_id"].astype(str) + "|" + p["surgery_date"].astype(str)).to_numpy()
    treated = set(zip(session, index))
    flags = pd.DataFrame({
        "upper_neighbour_treated": [float((s, i - 1) in treated) for s, i in zip(session, index)],
        "lower_neighbour_treated": [float((s, i + 1) in treated) for s, i in zip(session, index)],
    }, index=p["procedure_id"].to_numpy())
    ts = ts.join(flags)
    lab = ts[ts[outcome].notna()]
    risk = truth.set_index("procedure_id").loc[lab.index, f"p_{outcome}"].to_numpy()
    return lab, risk


def fit_score(model_type: str, outcome: str, train: pd.DataFrame, features: list[str], test: pd.DataFrame) -> np.ndarray:
    from modelstore.candidates import make_scorer
    from training.search import default_params

    scorer = make_scorer(model_type, default_params(model_type), outcome, seed=0, n_jobs=2)
    scorer.fit(train[features], train[outcome].astype(int).to_numpy())
    return scorer.raw_logit(test[features])


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    from features.catalog import feature_names
    from training.split import train_test_split_grouped

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, default=200_000)
    ap.add_argument("--fresh", type=int, default=100_000)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    names = feature_names("postop")
    rows = ["| profile / outcome | oracle | model | ceiling (trained on big) | trained on n | "
            "ceiling gap | gap at n | ceiling with neighbour flags | ceiling gap, single-level / multi-level sessions |",
            "|" + "---|" * 9]
    for profile, outcome in SCENARIOS:
        big, _ = cohort(profile, outcome, args.big, seed=99)
        fresh, risk = cohort(profile, outcome, args.fresh, seed=7)
        small, _ = cohort(profile, outcome, args.n, seed=args.seed)
        y_small = small[outcome].astype(int).to_numpy()
        train, _test = train_test_split_grouped(y_small, small["patient_id"].astype(str).to_numpy(), 0.2, args.seed)
        y = fresh[outcome].astype(int).to_numpy()
        oracle = roc_auc_score(y, risk)
        single = fresh["n_levels_treated"].to_numpy() == 1
        for model_type in ("xgboost", "elastic_net"):
            scores = fit_score(model_type, outcome, big, names, fresh)
            ceiling = roc_auc_score(y, scores)
            by_session = " / ".join(
                f"{roc_auc_score(y[m], risk[m]) - roc_auc_score(y[m], scores[m]):+.3f}" if 0 < y[m].sum() < m.sum() else "—"
                for m in (single, ~single))
            at_n = roc_auc_score(y, fit_score(model_type, outcome, small.iloc[train], names, fresh))
            flagged = ""
            if outcome == "adjacent_fracture":
                flagged = f"{roc_auc_score(y, fit_score(model_type, outcome, big, names + NEIGHBOURS, fresh)):.3f}"
            rows.append(f"| {profile} / {outcome} | {oracle:.3f} | {model_type} | {ceiling:.3f} | {at_n:.3f} | "
                        f"{oracle - ceiling:+.3f} | {oracle - at_n:+.3f} | {flagged} | {by_session} |")
            print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
