"""Benchmark of issue 22's death target: exports whose deaths come from a registry.

The frail site D profile (``site-d-frail-registry-pkp``): deaths linked from a registry
until the data cut (over 99 % of them after the last clinic visit), fractures ascertained
until death or the data cut, frail patients seen less often and dying sooner. The same
export is read three ways (``tests/support/registry_exports.py``):

- ``stated``: with the ``export.yaml`` the simulator writes (deaths until the data cut,
  fractures until death or the data cut);
- ``no_file``: without ``export.yaml`` (the default: the deaths after the last contact
  count, as registry deaths to the latest date of the export; fractures end at the last
  contact, so those deaths do not compete);
- ``last_contact``: with an ``export.yaml`` saying deaths and fractures were ascertained
  until the last contact (the labels of main before this change, except that main also
  counted the fractures recorded after the last contact; main itself is measured on the
  same files by ``bench/train_and_score_export.py``).

Part 1, labels only (cheap, many seeds): the Aalen-Johansen 24-month incidence of each
outcome (1 - Kaplan-Meier for death) against the mean true risk of the same cohort.
Part 2, trained models: every target trained on ``--n-train`` procedures as ``refracture
train`` trains it (``--candidates``, no search), the mean predicted 24-month risk on a
fresh cohort of ``--n-eval`` against its mean truth (the target: within 10 %).
Part 3, what the independence of censoring costs (``training.censoring``: the training
weights use a marginal Kaplan-Meier G by default, or with ``--censoring-model cox`` a Cox
model of censoring on the patient's clinical covariates): the IPCW 24-month incidence with
each G against the truth, in two worlds where censoring depends on the patient, (a) frail
patients are lost more often (clinic deaths, 40 % lost, odds x3 per SD of frailty) and
(b) site D read without ``export.yaml`` (fracture follow-up ends at the last clinic visit
before a registry death: censoring driven by the coming death itself), and (c) site D
with its ``export.yaml`` (only the data cut censors). Part 4: the same worlds (a) and (b)
trained with each censoring model (``--model-censoring-seeds``), mean predicted 24-month
risk on a fresh cohort against the truth: a model can amplify what the weights leave.

    .venv/bin/python bench/bench_registry_deaths.py --label-seeds 10 --n-labels 20000 \
        --train-seeds 2 --n-train 20000 --n-eval 20000 --censoring-seeds 4 --n-censoring 60000 --model-censoring-seeds 1

Writes ``bench/out/bench_registry_deaths.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from features.ascertainment import from_metadata  # noqa: E402
from features.assemble import build_training_set  # noqa: E402
from features.labels import DAYS_PER_MONTH, TARGETS, build_labels  # noqa: E402
from features.simulator import load_profile, simulate  # noqa: E402
from features.simulator.export import ascertainment_of  # noqa: E402
from features.simulator.profile import Recording, Share, Value  # noqa: E402
from features.validate import validate_raw  # noqa: E402
from registry_exports import PROFILE, READINGS, mean_risk_against_truth, reading_metadata, train_targets, write_export  # noqa: E402
from training.censoring import censoring_model  # noqa: E402
from training.competing_risks import aalen_johansen, crude_label, ipcw_weights  # noqa: E402
from training.report import markdown_table  # noqa: E402


def label_rows(n: int, seeds: range) -> list[dict]:
    """Aalen-Johansen / mean truth at 24 months per reading, target and seed."""
    profile = load_profile(PROFILE)
    rows = []
    for seed in seeds:
        tables, truth = simulate(profile, n_procedures=n, seed=seed)
        typed = validate_raw(tables)
        for reading in READINGS:
            meta = reading_metadata(profile, reading)
            labels = build_labels(typed, ascertainment=None if meta is None else from_metadata(meta))
            true = truth.set_index("procedure_id").reindex(labels.index)
            for target in TARGETS:
                observed = aalen_johansen(labels[f"{target}_time_days"].to_numpy(), labels[f"{target}_status"].to_numpy(),
                                          24 * DAYS_PER_MONTH)
                mean_true = float(true[f"p_{target}_24m"].mean())
                rows.append({"seed": seed, "reading": reading, "target": target, "observed": float(observed),
                             "mean_true": mean_true, "rel_diff": float(observed / mean_true - 1)})
    return rows


def model_rows(n_train: int, n_eval: int, seeds: range, candidates: tuple[str, ...],
               readings=READINGS, censoring_models=("km",), profile=None) -> list[dict]:
    """Mean predicted / mean true 24-month risk on a fresh cohort per reading, censoring
    model, target and seed (``profile``: a loaded profile instead of site D's)."""
    rows = []
    for seed in seeds:
        for reading in readings:
            for kind in censoring_models:
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.process_time()
                    write_export(Path(tmp), n_train, seed, reading, profile or PROFILE)
                    models = train_targets(Path(tmp), search_trials=0, candidates=candidates, n_bootstrap=50, cv_folds=2,
                                           n_jobs=1, censoring_model=kind)
                    seconds = time.process_time() - t0
                fresh = mean_risk_against_truth(models, n_eval, 10_000 + seed, profile or PROFILE)
                for target, (predicted, true) in fresh.items():
                    rows.append({"seed": seed, "reading": reading, "censoring_model": kind, "target": target,
                                 "mean_predicted": predicted, "mean_true": true, "rel_diff": predicted / true - 1,
                                 "train_cpu_seconds": seconds})
                print(f"seed {seed} {reading} {kind}: trained in {seconds:.0f} s of CPU", flush=True)
    return rows


def frail_loss_profile(lost: float = 0.4, odds_ratio: float = 3.0):
    """Site D's patients followed as a clinic follows them (deaths until loss), with frail
    patients lost more often."""
    p = load_profile(PROFILE)
    fu = p.followup.model_copy(update={
        "lost_to_followup": Share(value=lost, source="bench: heavy loss"),
        "lost_to_followup_frailty_odds_ratio_per_sd": Value(value=odds_ratio, source="bench: frail patients lost more"),
        "recording": Recording()})
    return p.model_copy(update={"followup": fu, "name": f"{PROFILE}-frail-loss"})


def censoring_rows(n: int, seeds: range) -> list[dict]:
    """IPCW 24-month incidence with a marginal (Kaplan-Meier) and a Cox censoring model,
    against the mean truth, per world, target and seed."""
    worlds = {"frail patients lost more (clinic deaths)": (frail_loss_profile(), "stated"),
              "site D without export.yaml": (load_profile(PROFILE), "no_file"),
              "site D with export.yaml": (load_profile(PROFILE), "stated")}
    h = 24 * DAYS_PER_MONTH
    rows = []
    for world, (profile, reading) in worlds.items():
        for seed in seeds:
            tables, truth = simulate(profile, n_procedures=n, seed=seed)
            asc = ascertainment_of(profile) if reading == "stated" else None
            ts = build_training_set(validate_raw(tables), "preop", ascertainment=asc)
            true = truth.set_index("procedure_id").reindex(ts.index)
            rows_all = np.arange(len(ts))
            for target in TARGETS:
                t, s = ts[f"{target}_time_days"].to_numpy(float), ts[f"{target}_status"].to_numpy().astype(int)
                y = np.nan_to_num(crude_label(t, s, h))
                mean_true = float(true[f"p_{target}_24m"].mean())
                row = {"world": world, "seed": seed, "target": target, "mean_true": mean_true}
                for name in ("km", "cox"):
                    G = censoring_model(name, t, s, ts, rows_all, until=h)
                    w = ipcw_weights(t, s, h, G=G)
                    row[f"{name}_rel_diff"] = float((w * y).sum() / w.sum() / mean_true - 1)
                    row[f"{name}_max_weight"] = float(w.max())
                rows.append(row)
            print(f"censoring: {world}, seed {seed}", flush=True)
    return rows


def summary(rows: list[dict], value: str) -> pd.DataFrame:
    """Per reading and target: mean, SD, min and max of the relative difference, the share
    of seeds within 10 %, and the mean of ``value`` and of the truth over the seeds."""
    df = pd.DataFrame(rows)
    g = df.groupby(["reading", "target"], sort=False)["rel_diff"]
    out = pd.DataFrame({"mean_rel_diff": g.mean(), "sd": g.std(), "min": g.min(), "max": g.max(),
                        "within_10pct": g.apply(lambda s: float(np.mean(np.abs(s) <= 0.10))),
                        value: df.groupby(["reading", "target"], sort=False)[value].mean(),
                        "mean_true": df.groupby(["reading", "target"], sort=False)["mean_true"].mean()})
    return out.reset_index()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-labels", type=int, default=20_000)
    ap.add_argument("--label-seeds", type=int, default=10)
    ap.add_argument("--n-train", type=int, default=20_000)
    ap.add_argument("--train-seeds", type=int, default=2)
    ap.add_argument("--n-eval", type=int, default=20_000)
    ap.add_argument("--candidates", default="logistic")
    ap.add_argument("--n-censoring", type=int, default=60_000)
    ap.add_argument("--censoring-seeds", type=int, default=4)
    ap.add_argument("--model-censoring-seeds", type=int, default=1)
    args = ap.parse_args()
    report: dict = {"args": vars(args), "profile": PROFILE}
    if args.label_seeds:
        labels = label_rows(args.n_labels, range(1, args.label_seeds + 1))
        report["labels"] = labels
        print(f"\n### Labels: Aalen-Johansen / mean truth at 24 months ({args.label_seeds} cohorts of {args.n_labels:,})\n")
        print(markdown_table(summary(labels, "observed"), ".4f"), flush=True)
    if args.train_seeds:
        models = model_rows(args.n_train, args.n_eval, range(1, args.train_seeds + 1),
                            tuple(c.strip() for c in args.candidates.split(",")))
        report["models"] = models
        print(f"\n### Trained models: mean predicted / mean true 24-month risk (trained on {args.n_train:,}, "
              f"fresh {args.n_eval:,}; {args.train_seeds} seeds)\n")
        print(markdown_table(pd.DataFrame(models).drop(columns="censoring_model"), ".4f"), flush=True)
        print()
        print(markdown_table(summary(models, "mean_predicted"), ".4f"), flush=True)
    if args.censoring_seeds:
        cens = censoring_rows(args.n_censoring, range(1, args.censoring_seeds + 1))
        report["censoring"] = cens
        df = pd.DataFrame(cens)
        table = df.groupby(["world", "target"], sort=False).agg(
            km_mean=("km_rel_diff", "mean"), km_sd=("km_rel_diff", "std"), cox_mean=("cox_rel_diff", "mean"),
            cox_sd=("cox_rel_diff", "std"), cox_max_weight=("cox_max_weight", "max")).reset_index()
        print(f"\n### Censoring model: IPCW 24-month incidence / truth - 1 ({args.censoring_seeds} cohorts of "
              f"{args.n_censoring:,})\n")
        print(markdown_table(table, ".4f"), flush=True)
    if args.model_censoring_seeds:
        seeds = range(1, args.model_censoring_seeds + 1)
        candidates = tuple(c.strip() for c in args.candidates.split(","))
        rows = model_rows(args.n_train, args.n_eval, seeds, candidates, ("stated",), ("km", "cox"), frail_loss_profile())
        rows = [{**r, "world": "frail patients lost more (clinic deaths)"} for r in rows]
        rows += [{**r, "world": "site D without export.yaml"}
                 for r in model_rows(args.n_train, args.n_eval, seeds, candidates, ("no_file",), ("km", "cox"))]
        report["model_censoring"] = rows
        print(f"\n### Censoring model, trained (on {args.n_train:,}; fresh {args.n_eval:,}): mean predicted / truth - 1\n")
        print(markdown_table(pd.DataFrame(rows)[["world", "seed", "censoring_model", "target", "mean_predicted",
                                                 "mean_true", "rel_diff"]], ".4f"), flush=True)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_registry_deaths.json").write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
