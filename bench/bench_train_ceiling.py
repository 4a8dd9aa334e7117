"""How close to the oracle can a model of one procedure record get? (issues 3 and 11)

The simulator's oracle is the true cumulative incidence (death competing), which depends on
more than a single procedure's record holds: measurement noise (DXA), missing inputs, and
for the adjacent outcome the other levels treated in the same session. This script
separates the gap between a model trained at the benchmark's size and the oracle into

- the **ceiling**: the model trained on a large cohort (``--big``), so that sample size
  hardly limits it, scored on a fresh cohort (``--fresh``): what the record's features can
  reach at best (irreducible error, for this model type);
- the **sample-size loss**: the same model type trained on an n = ``--n`` cohort (the
  benchmark's size), scored on the same fresh cohort (estimation error);
- the ceiling's td-AUROC gap within single-level and within multi-level sessions.

Both models go through the training stages ``refracture train`` runs for one candidate
(``training.data.outcome_data``, ``training.fitting.fit_candidate``: IPCW score model on
the training part, horizon calibration on out-of-fold scores) at the default
hyperparameters (``--search-trials 0``, ``training.search.default_params``). On the fresh
cohort, at 12 and 24 months: time-dependent AUROC of the model and the oracle on the
observed (censored, death-competing) outcomes (``training.time_metrics.td_auroc``); mean
predicted vs mean true risk; the OLS slope of logit(true) on logit(predicted).

    .venv/bin/python bench/bench_train_ceiling.py --big 50000 --fresh 50000 --n 10000

Writes ``bench/out/bench_train_ceiling.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.assemble import build_training_set  # noqa: E402
from features.catalog import feature_names  # noqa: E402
from features.io import write_frame_atomic, write_raw  # noqa: E402
from features.labels import horizon_days  # noqa: E402
from features.simulator import load_profile, simulate  # noqa: E402
from features.validate import validate_raw  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import outcome_data, prepare  # noqa: E402
from training.fitting import fit_candidate  # noqa: E402
from training.progress import NullProgress  # noqa: E402
from training.time_metrics import td_auroc  # noqa: E402

SCENARIOS = (("xiong2021-pvp", "cemented_refracture"), ("yassavoly2025-pkp", "adjacent_fracture"))
MODEL_TYPES = ("xgboost", "elastic_net")
HORIZONS = (12.0, 24.0)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def fit(profile: str, outcome: str, model_type: str, n: int, seed: int, folder: Path):
    """A ``RefractureModel`` of ``model_type`` at default hyperparameters, trained on the
    training part (80 %) of a simulated cohort of ``n`` procedures."""
    raw = folder / f"{profile}-{n}-{seed}"
    if not (raw / "truth.parquet").exists():
        tables, truth = simulate(load_profile(profile), n_procedures=n, seed=seed)
        write_raw(tables, raw)
        write_frame_atomic(truth, raw / "truth.parquet")
    cfg = TrainConfig(raw_dir=raw, outcomes=(outcome,), register=False, search_trials=0, n_bootstrap=50,
                      candidates=(model_type,), n_jobs=2, seed=seed)
    data = outcome_data(prepare(cfg), outcome, cfg)
    return fit_candidate(model_type, cfg, data, None, {}, NullProgress()).model


def fresh_cohort(profile: str, outcome: str, n: int, seed: int):
    """(post-op training set, true risks {months: array}) of a fresh simulated cohort."""
    tables, truth = simulate(load_profile(profile), n_procedures=n, seed=seed)
    ts = build_training_set(validate_raw(tables), "postop")
    truth = truth.set_index("procedure_id").reindex(ts.index)
    return ts, {h: truth[f"p_{outcome}_{h:g}m"].to_numpy(dtype="float64") for h in HORIZONS}


def scores(model, ts, outcome: str, true: dict, mask: np.ndarray | None = None) -> dict[str, float]:
    """Per horizon: td-AUROC of model and oracle, mean predicted / true, logit slope vs truth."""
    curve = model.curve_from_features(ts[feature_names(model.feature_set)])
    t = ts[f"{outcome}_time_days"].to_numpy(dtype="float64")
    s = ts[f"{outcome}_status"].to_numpy().astype(int)
    m = np.ones(len(t), bool) if mask is None else mask
    out = {}
    for h in HORIZONS:
        p, q = curve[f"p_{h:g}m"].to_numpy()[m], true[h][m]
        out[f"auroc_{h:g}m"] = td_auroc(t[m], s[m], p, horizon_days(h))
        out[f"oracle_auroc_{h:g}m"] = td_auroc(t[m], s[m], q, horizon_days(h))
        out[f"mean_rel_diff_{h:g}m"] = float(p.mean() / q.mean() - 1)
        out[f"logit_slope_{h:g}m"] = float(np.polyfit(_logit(p), _logit(q), 1)[0])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, default=50_000)
    ap.add_argument("--fresh", type=int, default=50_000)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--models", default=",".join(MODEL_TYPES), help="comma-separated model types")
    ap.add_argument("--scenarios", default="all", help="'all' or comma-separated profile names")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "bench_train_ceiling.json")
    args = ap.parse_args(argv)
    # In the order given, so that the scenario needed most runs first on a busy machine.
    scenarios = list(SCENARIOS) if args.scenarios == "all" else \
        [s for name in args.scenarios.split(",") for s in SCENARIOS if s[0] == name]
    head = ("| profile / outcome | model | horizon | oracle td-AUROC | ceiling (big) | at n | ceiling gap | gap at n | "
            "ceiling gap single- / multi-level | mean rel. diff ceiling / at n | logit slope vs truth ceiling / at n |")
    lines, rows = [head, "|" + "---|" * 11], []
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
        for profile, outcome in scenarios:
            ts, true = fresh_cohort(profile, outcome, args.fresh, seed=7)
            single = ts["n_levels_treated"].to_numpy() == 1
            for model_type in args.models.split(","):
                big = fit(profile, outcome, model_type, args.big, 99, Path(tmp))
                small = fit(profile, outcome, model_type, args.n, args.seed, Path(tmp))
                c, a = scores(big, ts, outcome, true), scores(small, ts, outcome, true)
                # The PVP profile has single-level sessions only: an empty group has no metrics.
                by_session = [scores(big, ts, outcome, true, m) if m.any() else {} for m in (single, ~single)]
                row = {"profile": profile, "outcome": outcome, "model": model_type, "big": args.big, "n": args.n,
                       "fresh": args.fresh, "share_multi_level": float((~single).mean()),
                       "ceiling": c, "at_n": a, "ceiling_single": by_session[0], "ceiling_multi": by_session[1]}
                rows.append(row)
                print(json.dumps(row), flush=True)
                for h in HORIZONS:
                    k = f"{h:g}m"
                    o = c[f"oracle_auroc_{k}"]
                    sess = " / ".join(f"{b[f'oracle_auroc_{k}'] - b[f'auroc_{k}']:+.3f}" if b else "—" for b in by_session)
                    lines.append(
                        f"| {profile} / {outcome} | {model_type} | {h:g} mo | {o:.3f} | {c[f'auroc_{k}']:.3f} | "
                        f"{a[f'auroc_{k}']:.3f} | {o - c[f'auroc_{k}']:+.3f} | {o - a[f'auroc_{k}']:+.3f} | {sess} | "
                        f"{c[f'mean_rel_diff_{k}']:+.1%} / {a[f'mean_rel_diff_{k}']:+.1%} | "
                        f"{c[f'logit_slope_{k}']:.2f} / {a[f'logit_slope_{k}']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
