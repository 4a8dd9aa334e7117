"""Performance of predicted probabilities, each with a seeded 95 % bootstrap CI.

Metrics (all on probabilities of the event within the horizon):

- discrimination: ``auroc``, ``auprc`` (average precision);
- overall accuracy: ``brier``, ``log_loss``;
- calibration: ``calibration_intercept`` (calibration-in-the-large: intercept of a
  logistic model of the outcome with the predicted log-odds as offset; 0 is ideal),
  ``calibration_slope`` (slope on the predicted log-odds; 1 is ideal, < 1 means
  predictions too extreme), ``ece`` (expected calibration error over 10 equal-count bins
  of the predictions, absolute);
- clinical utility: ``net_benefit_<t>`` at thresholds t = 5 %, 10 %, ... 30 % (decision
  curve analysis, Vickers 2006: TP/n − FP/n · t/(1 − t)), with ``treat_all_<t>``.

The bootstrap resamples patients with replacement, each with all of its rows
(``training.resampling``: ``n_boot`` replicates, percentile CI), and is vectorised:
replicate counts form a (B, n) weight matrix and every metric is computed for all
replicates at once from weighted sums.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.resampling import patient_codes, patient_counts

THRESHOLDS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30)
N_BINS = 10
_EPS = 1e-15


def log_loss_terms(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-row negative log-likelihood of 0/1 labels ``y`` under probabilities ``p``
    (clipped to [1e-15, 1 - 1e-15]): the one log-loss rule every mean below uses."""
    pc = np.clip(np.asarray(p, dtype="float64"), _EPS, 1 - _EPS)
    y = np.asarray(y, dtype="float64")
    return -(y * np.log(pc) + (1 - y) * np.log1p(-pc))


def weighted_log_loss(y: np.ndarray, p: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Mean log loss weighted by ``weight`` (e.g. IPCW weights: rows weighing 0, whose label
    is unknown, do not count)."""
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype="float64")
    keep = w > 0
    return float(w[keep] @ log_loss_terms(np.asarray(y, dtype="float64")[keep], np.asarray(p)[keep]) / w[keep].sum())


def _groups(sorted_values: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal values in a sorted array."""
    return np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])


def _weighted_metrics(y: np.ndarray, p: np.ndarray, W: np.ndarray, bins: np.ndarray,
                      start: tuple[float, float, float] | None = None) -> dict[str, np.ndarray]:
    """Every metric for each row of the weight matrix ``W`` (B, n). Returns name -> (B,).

    ``start`` = (slope, intercept, intercept-in-the-large) of the full sample: bootstrap
    replicates start their Newton steps there and converge in a few iterations.
    """
    y = y.astype("float64")
    n_w = W.sum(axis=1)
    pos = W @ y
    neg = n_w - pos
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["n"] = n_w
        out["events"] = pos
        out["prevalence"] = pos / n_w
        out["brier"] = (W @ (p - y) ** 2) / n_w
        pc = np.clip(p, _EPS, 1 - _EPS)
        out["log_loss"] = (W @ log_loss_terms(y, p)) / n_w

        # AUROC (Mann-Whitney with ties counted half) and average precision, from sums
        # of weights over runs of tied scores.
        order = np.argsort(p, kind="mergesort")
        starts = _groups(p[order])
        Wp = np.add.reduceat(W[:, order] * y[order], starts, axis=1)
        Wn = np.add.reduceat(W[:, order] * (1 - y[order]), starts, axis=1)
        neg_below = np.cumsum(Wn, axis=1) - Wn
        out["auroc"] = (Wp * (neg_below + 0.5 * Wn)).sum(axis=1) / (pos * neg)
        tp = np.cumsum(Wp[:, ::-1], axis=1)
        fp = np.cumsum(Wn[:, ::-1], axis=1)
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0.0)
        out["auprc"] = (Wp[:, ::-1] * precision).sum(axis=1) / pos

        lp = np.log(pc) - np.log1p(-pc)
        out["calibration_slope"], _ = _weighted_logistic(lp, y, W, slope=True, start=start)
        _, out["calibration_intercept"] = _weighted_logistic(lp, y, W, slope=False, start=start)

        onehot = np.eye(N_BINS)[bins]
        out["ece"] = np.abs(W @ (onehot * (y - p)[:, None])).sum(axis=1) / n_w

        for t in THRESHOLDS:
            treat = (p >= t).astype("float64")
            odds = t / (1 - t)
            out[f"net_benefit_{int(round(t * 100)):02d}"] = (W @ (treat * y) - odds * (W @ (treat * (1 - y)))) / n_w
            out[f"treat_all_{int(round(t * 100)):02d}"] = (pos - odds * neg) / n_w
    return out


def _weighted_logistic(lp: np.ndarray, y: np.ndarray, W: np.ndarray, slope: bool,
                       start: tuple[float, float, float] | None = None, tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate: (slope, intercept) of logit P(y) = slope * lp + intercept (``slope=True``)
    or (1, intercept) of logit P(y) = lp + intercept (``slope=False``).

    Newton steps with step halving (per replicate) from ``start`` (the full-sample fit)
    or from the null model.
    """
    B = W.shape[0]
    n_w = W.sum(axis=1)
    ybar = np.clip((W @ y) / np.where(n_w > 0, n_w, 1), 1e-6, 1 - 1e-6)
    if start is not None:
        a = np.full(B, start[0] if slope else 1.0)
        b = np.full(B, start[1] if slope else start[2])
    else:
        a = np.zeros(B) if slope else np.ones(B)
        b = np.log(ybar / (1 - ybar)) - (0.0 if slope else (W @ lp) / np.where(n_w > 0, n_w, 1))

    def loglik(a_: np.ndarray, b_: np.ndarray) -> np.ndarray:
        eta = a_[:, None] * lp[None, :] + b_[:, None]
        return (W * (y[None, :] * eta - np.logaddexp(0.0, eta))).sum(axis=1)

    current = loglik(a, b)
    for _ in range(40):
        eta = a[:, None] * lp[None, :] + b[:, None]
        with np.errstate(over="ignore"):
            mu = 1.0 / (1.0 + np.exp(-eta))
        r = W * (y[None, :] - mu)
        v = W * mu * (1 - mu)
        g_b = r.sum(axis=1)
        h_bb = v.sum(axis=1) + 1e-9
        if slope:
            g_a = r @ lp
            h_aa = v @ (lp * lp) + 1e-9
            h_ab = v @ lp
            det = h_aa * h_bb - h_ab**2
            det = np.where(np.abs(det) > 1e-12, det, np.nan)
            da = np.nan_to_num((h_bb * g_a - h_ab * g_b) / det)
            db = np.nan_to_num((h_aa * g_b - h_ab * g_a) / det)
        else:
            da = np.zeros(B)
            db = g_b / h_bb
        scale = np.ones(B)
        new = loglik(a + da, b + db)
        for _ in range(20):
            worse = new < current - 1e-9
            if not worse.any():
                break
            scale = np.where(worse, scale / 2, scale)
            new = np.where(worse, loglik(a + scale * da, b + scale * db), new)
        a, b = a + scale * da, b + scale * db
        current = new
        if not np.max(np.abs(np.r_[scale * da, scale * db]), initial=0.0) > tol:
            break
    return a, b


def _bins(p: np.ndarray) -> np.ndarray:
    """Equal-count bin index (0..N_BINS-1) of each prediction, from the full sample."""
    edges = np.quantile(p, np.linspace(0, 1, N_BINS + 1)[1:-1])
    return np.searchsorted(edges, p, side="right").clip(0, N_BINS - 1)


def replicates(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int, *, patients, chunk: int = 250,
               weight: np.ndarray | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Point estimates and bootstrap replicate arrays of every metric.

    ``patients``: the patient id of each row; every replicate resamples patients with all
    their rows (``training.resampling``); None only when each row is its own patient.
    ``weight``: case weights (e.g. inverse-probability-of-censoring weights of crude labels
    at a horizon, which makes the AUROC the IPCW time-dependent AUROC with the censoring
    distribution held fixed); each resample multiplies them by its counts. The same
    ``seed`` and patients give the same resamples, so replicates of two models on the same
    rows are paired (used for differences, e.g. model vs oracle).
    """
    y = np.asarray(y, dtype="float64")
    p = np.asarray(p, dtype="float64")
    base = np.ones(len(y)) if weight is None else np.asarray(weight, dtype="float64")
    bins = _bins(p)
    point = {k: float(v[0]) for k, v in _weighted_metrics(y, p, base[None, :], bins).items()}
    start = None
    if all(np.isfinite([point["calibration_slope"], point["calibration_intercept"]])):
        pc = np.clip(p, _EPS, 1 - _EPS)
        lp = np.log(pc) - np.log1p(-pc)
        start = (point["calibration_slope"], float(_weighted_logistic(lp, y, base[None, :], slope=True)[1][0]),
                 point["calibration_intercept"])
    codes = patient_codes(patients, len(y))
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {}
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        W = patient_counts(rng, codes, size) * base
        for k, v in _weighted_metrics(y, p, W, bins, start).items():
            parts.setdefault(k, []).append(v)
        done += size
    reps = {k: np.concatenate(v) for k, v in parts.items()} if parts else {}
    return point, reps


def with_ci(point: dict[str, float], reps: dict[str, np.ndarray], prefix: str = "") -> dict[str, float]:
    """Flat dict: ``<prefix><metric>``, ``..._ci_low``, ``..._ci_high`` (2.5/97.5 percentiles)."""
    out: dict[str, float] = {}
    for k, v in point.items():
        out[f"{prefix}{k}"] = v
        if k in ("n", "events") or k not in reps:
            continue
        r = reps[k][np.isfinite(reps[k])]
        lo, hi = (np.percentile(r, [2.5, 97.5]) if len(r) > 10 else (np.nan, np.nan))
        out[f"{prefix}{k}_ci_low"] = float(lo)
        out[f"{prefix}{k}_ci_high"] = float(hi)
    return out


def evaluate(y: np.ndarray, p: np.ndarray, n_boot: int = 1000, seed: int = 0, *, patients) -> dict[str, float]:
    """Every metric with its 95 % bootstrap CI, as a flat dict (see module docstring;
    ``patients`` as ``replicates``)."""
    point, reps = replicates(y, p, n_boot, seed, patients=patients)
    return with_ci(point, reps)


def paired_difference(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, metrics: tuple[str, ...],
                      n_boot: int = 1000, seed: int = 0, *, patients) -> dict[str, float]:
    """Metric(a) − metric(b) on the same rows with paired-bootstrap 95 % CIs (the same
    patients drawn for both; ``patients`` as ``replicates``)."""
    pa, ra = replicates(y, p_a, n_boot, seed, patients=patients)
    pb, rb = replicates(y, p_b, n_boot, seed, patients=patients)
    out: dict[str, float] = {}
    for m in metrics:
        d = ra[m] - rb[m]
        d = d[np.isfinite(d)]
        out[f"{m}_diff"] = pa[m] - pb[m]
        lo, hi = (np.percentile(d, [2.5, 97.5]) if len(d) > 10 else (np.nan, np.nan))
        out[f"{m}_diff_ci_low"], out[f"{m}_diff_ci_high"] = float(lo), float(hi)
    return out


#: Subgroups reported for fairness (TRIPOD+AI 14/23a): column of the subgroup frame.
SUBGROUPS = ("sex", "age_band", "region", "technique")
SUBGROUP_METRICS = ("auroc", "brier", "log_loss", "calibration_intercept", "calibration_slope")
#: Subgroups with fewer events (or non-events) than this get counts only.
MIN_SUBGROUP_EVENTS = 5


def age_band(age_years: pd.Series) -> pd.Series:
    """'<70', '70-79', '≥80' (NaN stays missing)."""
    return pd.cut(age_years, [-np.inf, 70, 80, np.inf], right=False, labels=["<70", "70-79", "≥80"]).astype(object)


def subgroup_metrics(y: np.ndarray, p: np.ndarray, groups: pd.DataFrame, n_boot: int = 300, seed: int = 0,
                     weight: np.ndarray | None = None, *, patients) -> pd.DataFrame:
    """Metrics with CIs per level of each subgroup column of ``groups`` (row-aligned with y, p).

    ``weight``: case weights (IPCW weights of crude labels; rows weighing 0 are left out).
    ``patients``: patient id per row; a level's CIs resample its patients (with their rows
    in that level), as ``replicates``.
    Returns one row per (subgroup, level) with n, events, and ``SUBGROUP_METRICS`` (+ CIs);
    metrics are NaN when the level has fewer than ``MIN_SUBGROUP_EVENTS`` events or non-events.
    """
    rows = []
    y = np.asarray(y, dtype="float64")
    p = np.asarray(p, dtype="float64")
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype="float64")
    ids = np.arange(len(y)) if patients is None else np.asarray(patients)
    for col in groups.columns:
        values = groups[col].to_numpy()
        for level in pd.unique(values[pd.notna(values)]):
            mask = (values == level) & (w > 0)
            yy, pp = y[mask], p[mask]
            row: dict[str, object] = {"subgroup": col, "level": str(level), "n": int(mask.sum()), "events": int(yy.sum())}
            if yy.sum() >= MIN_SUBGROUP_EVENTS and (1 - yy).sum() >= MIN_SUBGROUP_EVENTS:
                point, reps = replicates(yy, pp, n_boot, seed, patients=ids[mask], weight=w[mask])
                flat = with_ci({k: point[k] for k in SUBGROUP_METRICS}, reps)
                row.update(flat)
            rows.append(row)
    return pd.DataFrame(rows)
