"""Size and power of ``refracture recalibrate``'s tests (issue 22): how often they reject a
correct model, and how often they find a +0.3 logit miscalibration.

Each of ``--datasets`` simulated site exports (``--profile`` yassavoly2025-pkp, ``--n``
4,000 procedures, about 2,800 patients: a third of them with two or three treated
levels; seeds ``--seed`` + 0, 1, ...) goes through the real data path (``simulate`` ->
``validate_raw`` -> ``build_labels``); the crude labels at 3, 6, 12 and 24 months and their
IPCW weights are built as ``recalibrate`` builds them (``local_targets``). The model under
test, for each outcome and for death:

- **null (a correct model)**: the simulator's true cumulative incidence of each procedure
  at each horizon (``truth.parquet``), its 24-month log-odds as the score ``eta``. It is
  correct by construction, clustering and all (death, censoring and the remote-fracture
  process are the patient's), so every rejection is a false one;
- **shift**: the same with every log-odds ``--shift`` (0.3) *below* the truth (the model
  under-predicts: observed/expected about 1.3).

Four versions of the rule's three tests, on the same datasets:

- ``LR/K (before)``: the old tests, likelihood ratio of the stacked IPCW likelihood
  divided by K = 4 horizons against chi-square (the (ii) fit unconstrained here, so that
  it nests a parent outside the ``a_t + b eta`` family; for a parent inside it the product
  fitted the same model with a_t ordered and b > 0);
- ``Wald sandwich, patients``: the plain robust score test U' V^-1 U against
  chi-square(q), V the patient-clustered sandwich (a first attempt, not kept: it inverts
  a noisy V; ``robust_wald`` here);
- ``score, procedures``: ``training.recalibrate.calibration_tests`` (Rao-Scott corrected
  working score tests) with every procedure its own cluster (robust to the stacking of
  horizons, not to patients);
- ``score, patients (after)``: the product's tests, clustered by patient.

Reported per target and test: the rejection rate of (ii) vs none and (i) vs none at 5 %
(with the exact binomial 95 % interval), and the rule's outcome (``closed_test``: any
update chosen). Target: a correct model rejected in 4-6 % of 500 datasets.

    .venv/bin/python bench/bench_recal_tests.py --datasets 500 --cache /tmp/recal-cache

``--cache DIR`` keeps each simulated dataset's arrays (``DIR/d<seed>.npz``: patient
codes and, per target, time, status and true incidence at each horizon) and reuses them,
so the datasets can be simulated in parallel and the tests rerun cheaply. Shards:
``--first 0 --datasets 250 --out a.json``, ``--first 250 --datasets 250 --out b.json``,
then ``--merge a.json b.json`` prints the tables of all of them.

Writes ``bench/out/bench_recal_tests.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from features.labels import TARGETS, build_labels, horizon_days
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from modelstore.candidates import logit
from training.recalibrate import ALPHA, best_shift, calibration_tests, closed_test, local_targets, row_loss
from training.resampling import patient_codes

ROOT = Path(__file__).resolve().parents[1]
HORIZONS = (3.0, 6.0, 12.0, 24.0)
TESTS = ("ii_vs_none", "ii_vs_i", "i_vs_none")
METHODS = ("LR/K (before)", "Wald sandwich, patients", "score, procedures", "score, patients (after)")


def _offset_fit(z0: np.ndarray, design: np.ndarray, labels: np.ndarray, w: np.ndarray) -> float:
    """Minimum stacked IPCW negative log-likelihood of ``z0 + design . theta`` (Newton)."""
    y, ww = np.nan_to_num(labels), np.where(np.isfinite(labels), w, 0.0)
    theta = np.zeros(design.shape[2])
    for _ in range(50):
        z = z0 + design @ theta
        mu = 1 / (1 + np.exp(-z))
        g = np.einsum("nk,nkq->q", ww * (y - mu), design)
        h = np.einsum("nk,nkp,nkq->pq", ww * mu * (1 - mu), design, design)
        step = np.linalg.solve(h, g)
        theta += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(row_loss(z0 + design @ theta, labels, w).sum())


def lr_over_k(z0: np.ndarray, delta: float, eta: np.ndarray, labels: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """The old statistics: 2 * (log-likelihood gain) / K against chi-square (df K + 1, K, 1)."""
    n, K = labels.shape
    design = np.concatenate([np.broadcast_to(np.eye(K), (n, K, K)), np.broadcast_to(eta[:, None, None], (n, K, 1))],
                            axis=2)
    nll0 = float(row_loss(z0, labels, w).sum())
    nll_i = float(row_loss(z0 + delta, labels, w).sum())
    nll_ii = _offset_fit(z0, design, labels, w)
    lr = {"ii_vs_none": (nll0 - nll_ii, K + 1), "ii_vs_i": (nll_i - nll_ii, K), "i_vs_none": (nll0 - nll_i, 1)}
    return {f"p_{k}": float(stats.chi2.sf(max(2 * d / K, 0.0), df)) for k, (d, df) in lr.items()}


def robust_wald(z0: np.ndarray, delta: float, eta: np.ndarray, labels: np.ndarray, w: np.ndarray,
                codes: np.ndarray) -> dict[str, float]:
    """The plain patient-clustered robust score tests: U' V^-1 U against chi-square(q), V the
    empirical covariance of the per-patient sums of each procedure's (efficient) score."""
    n, K = labels.shape
    horizon = np.broadcast_to(np.eye(K), (n, K, K))
    score = np.broadcast_to(eta[:, None, None], (n, K, 1))
    ones = np.ones((n, K, 1))
    y, ww = np.nan_to_num(labels), np.where(np.isfinite(labels), w, 0.0)
    out = {}
    for name, z, tested, nuisance in (("ii_vs_none", z0, np.concatenate([horizon, score], 2), None),
                                      ("ii_vs_i", z0 + delta, np.concatenate([horizon[:, :, 1:], score], 2), ones),
                                      ("i_vs_none", z0, ones, None)):
        mu = 1 / (1 + np.exp(-z))
        r = ww * (y - mu)
        u = np.einsum("nk,nkq->nq", r, tested)
        if nuisance is not None:
            v = ww * mu * (1 - mu)
            a11 = np.einsum("nk,nkp,nkq->pq", v, nuisance, nuisance)
            a12 = np.einsum("nk,nkp,nkq->pq", v, nuisance, tested)
            u = u - np.einsum("nk,nkp->np", r, nuisance) @ np.linalg.solve(a11, a12)
        pp = np.column_stack([np.bincount(codes, weights=u[:, j]) for j in range(u.shape[1])])
        total = pp.sum(0)
        out[f"p_{name}"] = float(stats.chi2.sf(total @ np.linalg.pinv(pp.T @ pp) @ total, u.shape[1]))
    return out


def arrays(profile, n: int, seed: int, cache: Path | None) -> dict[str, np.ndarray]:
    """Patient codes and, per target, time, status and true incidence (n, K) of one dataset,
    from ``cache`` when it holds them (written there otherwise)."""
    path = cache / f"d{seed}.npz" if cache else None
    if path is not None and path.exists():
        with np.load(path) as f:
            return dict(f)
    labels, truth, patients = dataset(profile, n, seed)
    out = {"codes": patient_codes(patients, len(labels))}
    for target in TARGETS:
        out[f"{target}_t"] = labels[f"{target}_time_days"].to_numpy(dtype="float64")
        out[f"{target}_s"] = labels[f"{target}_status"].to_numpy().astype(int)
        out[f"{target}_p"] = np.column_stack([truth[f"p_{target}_{h:g}m"].to_numpy(dtype="float64")
                                              for h in HORIZONS])
    if path is not None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **out)
        tmp.rename(path)
    return out


def dataset(profile, n: int, seed: int):
    """(labels, truth, patient ids) of one simulated export, aligned by procedure."""
    tables, truth = simulate(profile, n_procedures=n, seed=seed)
    typed = validate_raw(tables)
    labels = build_labels(typed)
    truth = truth.set_index("procedure_id").reindex(labels.index)
    patients = typed["procedures"].set_index("procedure_id")["patient_id"].reindex(labels.index).to_numpy()
    return labels, truth, patients


def binomial_ci(k: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) 95 % interval of a rate k/n."""
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=int, default=500)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--profile", default="yassavoly2025-pkp")
    ap.add_argument("--shift", type=float, default=0.3, help="log-odds the model is below the truth (power)")
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--first", type=int, default=0, help="index of the first dataset (seed + first)")
    ap.add_argument("--cache", type=Path, default=None, help="folder of simulated datasets to reuse or fill")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "bench_recal_tests.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="summarise the per-dataset rows of these --out files (shards run with --first) instead")
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads(f.read_text()) for f in args.merge]
        frame = pd.concat([pd.DataFrame(part["rows"]) for part in parts], ignore_index=True)
        report(frame, args, sum(part["cpu_seconds"] for part in parts))
        return
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    profile = load_profile(args.profile)
    t0 = time.process_time()
    rows = []
    for d in range(args.first, args.first + args.datasets):
        a = arrays(profile, args.n, args.seed + d, args.cache)
        by_patient = a["codes"]
        by_procedure = np.arange(len(by_patient))
        for target in TARGETS:
            t, s = a[f"{target}_t"], a[f"{target}_s"]
            lab, w = local_targets(t, s, HORIZONS)
            events = int(((s == 1) & (t <= horizon_days(24))).sum())
            z_true = logit(a[f"{target}_p"])
            eta = z_true[:, -1]
            for scenario, z0 in (("null", z_true), (f"shift -{args.shift:g}", z_true - args.shift)):
                delta = best_shift(z0, lab, w)
                got = {METHODS[0]: lr_over_k(z0, delta, eta, lab, w),
                       METHODS[1]: robust_wald(z0, delta, eta, lab, w, by_patient),
                       METHODS[2]: calibration_tests(z0, delta, eta, lab, w, by_procedure),
                       METHODS[3]: calibration_tests(z0, delta, eta, lab, w, by_patient)}
                for method, tests in got.items():
                    choice, _ = closed_test(tests, events)
                    rows.append({"dataset": d, "target": target, "scenario": scenario, "method": method,
                                 "events": events, "patients": int(by_patient.max() + 1), "choice": choice,
                                 **{f"p_{k}": tests[f"p_{k}"] for k in TESTS}})
        if (d + 1) % 50 == 0:
            print(f"{d + 1} datasets, {time.process_time() - t0:.0f} s CPU", flush=True)
    report(pd.DataFrame(rows), args, time.process_time() - t0)


def report(frame: pd.DataFrame, args, cpu: float) -> None:
    """Print the markdown tables of the per-dataset rows ``frame`` and write ``args.out``."""
    summary = []
    for (scenario, target, method), g in frame.groupby(["scenario", "target", "method"], sort=False):
        line = {"scenario": scenario, "target": target, "method": method, "datasets": len(g),
                "events_median": float(g["events"].median()), "patients_median": float(g["patients"].median())}
        for k in ("ii_vs_none", "i_vs_none"):
            hits = int((g[f"p_{k}"] < ALPHA).sum())
            lo, hi = binomial_ci(hits, len(g))
            line[f"reject_{k}"], line[f"reject_{k}_ci"] = hits / len(g), (lo, hi)
        updates = int((g["choice"] != "none").sum())
        line["update_chosen"], line["update_chosen_ci"] = updates / len(g), binomial_ci(updates, len(g))
        line["choices"] = g["choice"].value_counts().to_dict()
        summary.append(line)
    n_sets = frame["dataset"].nunique()
    for scenario in frame["scenario"].unique():
        print(f"\n### {scenario}: {n_sets} datasets of {args.n:,} procedures ({args.profile})\n")
        print("| target | events by 24 mo (median) | test | (ii) vs none rejects | (i) vs none rejects | rule updates |")
        print("|---|---|---|---|---|---|")
        for line in summary:
            if line["scenario"] != scenario:
                continue
            cells = [f"{line[k]:.1%} ({line[k + '_ci'][0]:.1%}-{line[k + '_ci'][1]:.1%})"
                     for k in ("reject_ii_vs_none", "reject_i_vs_none", "update_chosen")]
            print(f"| {line['target']} | {line['events_median']:.0f} | {line['method']} | {' | '.join(cells)} |")
    print(f"\nCPU {cpu:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args), "cpu_seconds": cpu, "summary": summary,
                                    "rows": frame.to_dict(orient="records")}, indent=1, default=str))
    print(f"wrote {args.out}")

if __name__ == "__main__":
    main()
