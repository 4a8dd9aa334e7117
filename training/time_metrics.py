"""Performance of predicted absolute risk at a horizon, with death as a competing event.

Every function takes per-row follow-up ``time`` and competing-risks ``status`` as
``features.labels`` codes them (0 censored, 1 the event of interest, 2 death first), the
predicted cumulative incidence ``risk`` (probability in [0, 1] of the event by the
horizon, death allowed to come first) and the ``horizon`` in the unit of ``time`` (days
in this project). Nothing here reads or writes files.

Censoring is handled by inverse probability of censoring weights (IPCW,
``training.competing_risks.ipcw_weights``): a row whose crude status at the horizon is
known (event or death before it, or followed up to it) is weighted 1 / G(min(T, h)-), a
row censored before the horizon 0. G is the Kaplan-Meier "survival" of censoring. For
controls followed past the horizon this is 1 / G(h-) rather than Blanche's 1 / G(h); the
two differ only when censoring happens exactly at h, and the left limit keeps the one
rule of ``crude_label`` (a row censored at h counts as event-free at h). With this G the
IPCW mean of the crude label equals the Aalen-Johansen cumulative incidence exactly, so
the bootstrap computes the observed (Aalen-Johansen) risk from the same weights.

Metrics:

- ``td_auroc``: cumulative/dynamic time-dependent AUROC for competing risks (Blanche,
  Dartigues & Jacqmin-Gadda 2013, Stat Med 32:5381, "definition 2"): cases have the
  event by h; controls are everyone else whose status at h is known (event-free past h,
  or dead first); ties in risk count half.
- ``brier``: IPCW Brier score of the crude risk, (1/n) sum w_i (y_i - risk_i)^2.
- ``calibration_slope``: slope of an IPCW-weighted logistic regression of the crude label
  on logit(risk) (1 ideal, < 1 predictions too extreme); ``calibration_intercept``:
  calibration-in-the-large, the intercept of the same model with logit(risk) as offset
  (slope fixed at 1; 0 ideal, > 0 risk underestimated).
- ``observed_expected``: Aalen-Johansen cumulative incidence / mean predicted risk.
- ``calibration_table``: per quantile bin of risk, the Aalen-Johansen incidence within
  the bin with a percentile-bootstrap 95 % CI.
- ``net_benefit``: survival decision curve (Vickers et al. 2008, BMC Med Inform Decis
  Mak 8:53) with the Kaplan-Meier replaced by the Aalen-Johansen cumulative incidence.
- ``evaluate_at_horizons``: all of the above per horizon with paired bootstrap CIs (rows
  resampled, G refitted per resample), next to the oracle when the true risk is known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.competing_risks import CENSORED, DEATH, EVENT, _as_arrays, aalen_johansen, ipcw_weights
from training.evaluation import _weighted_logistic

_EPS = 1e-15
#: Metrics of ``evaluate_at_horizons`` that get an ``oracle_`` twin when the truth is known.
METRICS = ("td_auroc", "brier", "calibration_slope", "calibration_intercept", "observed_expected",
           "mean_predicted", "observed_risk")


# ---------------------------------------------------------------- input checks

def _check(time, status, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    t, s, _ = _as_arrays(time, status)
    bad = ~np.isin(s, (CENSORED, EVENT, DEATH))
    if bad.any():
        raise ValueError(f"status: row {int(np.flatnonzero(bad)[0])} is {s[bad][0]}, expected 0 censored, 1 event or 2 death")
    if not np.isfinite(horizon) or horizon <= 0:
        raise ValueError(f"horizon must be a positive number in the unit of time, got {horizon!r}")
    return t, s


def _check_risk(risk, n: int, name: str = "risk") -> np.ndarray:
    r = np.asarray(risk, dtype="float64")
    if r.shape != (n,):
        raise ValueError(f"{name}: expected {n} values (one per row of time/status), got shape {r.shape}")
    bad = ~np.isfinite(r) | (r < 0) | (r > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: row {i} is {r[i]!r}, expected a probability in [0, 1]")
    return r


def _logit(p: np.ndarray) -> np.ndarray:
    pc = np.clip(p, _EPS, 1 - _EPS)
    return np.log(pc) - np.log1p(-pc)


# ---------------------------------------------------------------- weighted kernels

def _bootstrap_ipcw(t: np.ndarray, s: np.ndarray, horizon: float, W: np.ndarray) -> np.ndarray:
    """IPCW weights (B, n) for each replicate of the count matrix ``W`` (B, n), with the
    censoring Kaplan-Meier G refitted on each replicate: W * known / G_b(min(T, h)-).

    Same rule as ``competing_risks.ipcw_weights``, on all replicates at once: only the
    jump times before h matter, so G is a (B, K) matrix with K the distinct times < h.
    """
    order = np.argsort(t, kind="stable")
    ts = t[order]
    starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
    uniq = ts[starts]
    k_h = int(np.searchsorted(uniq, horizon, side="left"))  # distinct times < h
    Ws = W[:, order]
    removed = np.add.reduceat(Ws, starts, axis=1)[:, :k_h]
    cens = np.add.reduceat(Ws * (s[order] == CENSORED), starts, axis=1)[:, :k_h]
    n_w = W.sum(axis=1, keepdims=True)
    at_risk = n_w - np.cumsum(removed, axis=1) + removed
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(at_risk > 0, 1.0 - cens / np.where(at_risk > 0, at_risk, 1.0), 1.0)
    G = np.concatenate([np.ones((W.shape[0], 1)), np.cumprod(factor, axis=1)], axis=1)
    idx = np.searchsorted(uniq[:k_h], np.minimum(t, horizon), side="left")  # column of G(x-)
    known = (t >= horizon) | (s != CENSORED)
    return np.where(known[None, :], W / np.maximum(G[:, idx], 1e-12), 0.0)


def _weighted_auroc(y: np.ndarray, r: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUROC (ties in ``r`` count half) for each row of ``w`` (B, n)."""
    order = np.argsort(r, kind="mergesort")
    rs = r[order]
    starts = np.flatnonzero(np.r_[True, rs[1:] != rs[:-1]])
    wo = w[:, order]
    wp = np.add.reduceat(wo * y[order], starts, axis=1)
    wn = np.add.reduceat(wo * (1 - y[order]), starts, axis=1)
    neg_below = np.cumsum(wn, axis=1) - wn
    with np.errstate(divide="ignore", invalid="ignore"):
        return (wp * (neg_below + 0.5 * wn)).sum(axis=1) / (wp.sum(axis=1) * wn.sum(axis=1))


def _metrics(t: np.ndarray, s: np.ndarray, horizon: float, risk: np.ndarray, W: np.ndarray,
             w_ipcw: np.ndarray | None = None, start: tuple[float, float, float] | None = None) -> dict[str, np.ndarray]:
    """Every horizon metric for each replicate (row of the count matrix ``W``, (B, n)).

    ``w_ipcw``: the IPCW weights (B, n) if already computed (they do not depend on the
    risk, so model and oracle share them). ``start``: full-sample (slope, intercept of
    the slope model, calibration-in-the-large) to start the Newton steps from.
    """
    if w_ipcw is None:
        w_ipcw = _bootstrap_ipcw(t, s, horizon, W)
    known = (t >= horizon) | (s != CENSORED)
    # Rows censored before h have weight 0 in every IPCW metric: drop them once.
    y = ((s[known] == EVENT) & (t[known] <= horizon)).astype("float64")
    r, w = risk[known], w_ipcw[:, known]
    n_w = W.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["td_auroc"] = _weighted_auroc(y, r, w)
        out["brier"] = (w @ (y - r) ** 2) / n_w
        lp = _logit(r)
        out["calibration_slope"], _ = _weighted_logistic(lp, y, w, slope=True, start=start)
        _, out["calibration_intercept"] = _weighted_logistic(lp, y, w, slope=False, start=start)
        out["mean_predicted"] = (W @ risk) / n_w
        out["observed_risk"] = (w @ y) / n_w  # = Aalen-Johansen (module docstring)
        out["observed_expected"] = out["observed_risk"] / out["mean_predicted"]
    return out


def _single(time, status, risk, horizon: float, G) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked arrays and the (1, n) IPCW weights from ``G`` (fitted here when None)."""
    t, s = _check(time, status, horizon)
    r = _check_risk(risk, len(t))
    w = ipcw_weights(t, s, horizon, G)[None, :]
    return t, s, r, w


def _logistic_start(t, s, horizon, r, w) -> tuple[float, float, float]:
    """Full-sample (slope, intercept with slope, intercept in the large)."""
    known = (t >= horizon) | (s != CENSORED)
    y = ((s[known] == EVENT) & (t[known] <= horizon)).astype("float64")
    lp = _logit(r[known])
    a, b = _weighted_logistic(lp, y, w[:, known], slope=True)
    _, c = _weighted_logistic(lp, y, w[:, known], slope=False)
    return float(a[0]), float(b[0]), float(c[0])


# ---------------------------------------------------------------- public metrics

def td_auroc(time, status, risk, horizon: float, G=None) -> float:
    """Time-dependent (cumulative/dynamic) AUROC at ``horizon`` with IPCW, competing risks.

    Takes follow-up ``time``, ``status`` (0/1/2), predicted cumulative incidence ``risk``
    by the horizon, ``horizon`` in the unit of time, and optionally ``G`` (a censoring
    survival function from ``competing_risks.censoring_survival``, e.g. fitted on another
    sample; refitted on these rows when None). Returns the AUROC in [0, 1] (NaN when there
    are no cases or no controls).
    """
    t, s, r, w = _single(time, status, risk, horizon, G)
    known = (t >= horizon) | (s != CENSORED)
    y = ((s[known] == EVENT) & (t[known] <= horizon)).astype("float64")
    return float(_weighted_auroc(y, r[known], w[:, known])[0])


def brier_ipcw(time, status, risk, horizon: float, G=None) -> float:
    """IPCW Brier score at ``horizon`` of the predicted crude risk (arguments as ``td_auroc``):
    mean of w_i (1{event by h} - risk_i)^2 over all n rows (0 ideal)."""
    t, s, r, w = _single(time, status, risk, horizon, G)
    y = ((s == EVENT) & (t <= horizon)).astype("float64")
    return float((w[0] @ (y - r) ** 2) / len(t))


def calibration_slope_intercept(time, status, risk, horizon: float, G=None) -> tuple[float, float]:
    """(slope, intercept) of IPCW-weighted logistic recalibration of the crude label at
    ``horizon`` on logit(risk) (arguments as ``td_auroc``).

    The slope comes from logit P(y) = a + slope * logit(risk) (1 ideal). The intercept is
    calibration-in-the-large: logit P(y) = intercept + logit(risk), slope fixed at 1
    (0 ideal; > 0 means the risk is underestimated on average).
    """
    t, s, r, w = _single(time, status, risk, horizon, G)
    slope, _, intercept = _logistic_start(t, s, horizon, r, w)
    return slope, intercept


def observed_expected(time, status, risk, horizon: float) -> float:
    """Aalen-Johansen cumulative incidence at ``horizon`` divided by the mean ``risk``
    (1 ideal; > 1 risk underestimated)."""
    t, s = _check(time, status, horizon)
    r = _check_risk(risk, len(t))
    return float(aalen_johansen(t, s, horizon) / r.mean())


def _bin_index(risk: np.ndarray, bins: int) -> np.ndarray:
    """Quantile bin (0..bins-1) of each risk; tied risks share a bin, so bins may be
    fewer or unequal when the risk takes few values."""
    edges = np.quantile(risk, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, risk, side="right")


def calibration_table(time, status, risk, horizon: float, bins: int = 10, n_boot: int = 200,
                      seed: int = 0) -> pd.DataFrame:
    """Observed vs predicted risk at ``horizon`` per quantile bin of ``risk``.

    Returns one row per non-empty bin: ``bin`` (0 = lowest risk), ``n``, ``events`` (events
    by h), ``risk_low``/``risk_high`` (range of predictions), ``mean_predicted``,
    ``observed`` (Aalen-Johansen cumulative incidence of the rows in the bin) and
    ``observed_ci_low``/``observed_ci_high``: 95 % percentile bootstrap interval
    (``n_boot`` resamples of the bin's rows, seeded by ``seed``, Aalen-Johansen refitted
    on each through its IPCW form).
    """
    t, s = _check(time, status, horizon)
    r = _check_risk(risk, len(t))
    b = _bin_index(r, bins)
    rng = np.random.default_rng(seed)
    rows = []
    for k in np.unique(b):
        m = b == k
        tk, sk = t[m], s[m]
        n = int(m.sum())
        W = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype("float64")
        y = ((sk == EVENT) & (tk <= horizon)).astype("float64")
        reps = (_bootstrap_ipcw(tk, sk, horizon, W) @ y) / n
        lo, hi = np.percentile(reps, [2.5, 97.5]) if n_boot > 10 else (np.nan, np.nan)
        rows.append({"bin": int(k), "n": n, "events": int(y.sum()), "risk_low": float(r[m].min()),
                     "risk_high": float(r[m].max()), "mean_predicted": float(r[m].mean()),
                     "observed": float(aalen_johansen(tk, sk, horizon)),
                     "observed_ci_low": float(lo), "observed_ci_high": float(hi)})
    return pd.DataFrame(rows)


def net_benefit(time, status, risk, horizon: float, thresholds) -> pd.DataFrame:
    """Decision curve at ``horizon``: treat when risk >= threshold.

    NB(pt) = P(risk >= pt) * CIF_above - P(risk >= pt) * (1 - CIF_above) * pt / (1 - pt),
    with CIF_above the Aalen-Johansen cumulative incidence among rows with risk >= pt
    (Vickers et al. 2008 with death as a competing event). Returns columns ``threshold``,
    ``treated`` (fraction with risk >= pt), ``net_benefit``, ``treat_all`` (CIF - (1 - CIF)
    pt / (1 - pt), CIF over all rows) and ``treat_none`` (0).
    """
    t, s = _check(time, status, horizon)
    r = _check_risk(risk, len(t))
    pts = np.asarray(thresholds, dtype="float64")
    if ((pts <= 0) | (pts >= 1)).any():
        raise ValueError("thresholds must lie strictly between 0 and 1")
    cif_all = aalen_johansen(t, s, horizon)
    rows = []
    for pt in pts:
        odds = pt / (1 - pt)
        above = r >= pt
        frac = above.mean()
        cif = aalen_johansen(t[above], s[above], horizon) if above.any() else 0.0
        rows.append({"threshold": float(pt), "treated": float(frac),
                     "net_benefit": float(frac * cif - frac * (1 - cif) * odds),
                     "treat_all": float(cif_all - (1 - cif_all) * odds), "treat_none": 0.0})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- all horizons, bootstrap

def _ci(values: np.ndarray) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if len(v) <= 10:
        return np.nan, np.nan
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def evaluate_at_horizons(time, status, risks: dict[float, np.ndarray], n_boot: int = 1000, seed: int = 0,
                         truth: dict[float, np.ndarray] | None = None, chunk: int = 200) -> pd.DataFrame:
    """Every metric at every horizon with 95 % percentile bootstrap CIs.

    ``risks`` maps a horizon (unit of ``time``) to the predicted cumulative incidence of
    each row; ``truth`` (optional, same keys) to the true one (the simulator's). Rows are
    resampled with replacement ``n_boot`` times (seeded by ``seed``); the same resamples
    serve every horizon, the model and the oracle (paired), and G is refitted on each.
    ``chunk`` resamples are held in memory at once (about chunk * n * 8 bytes per array).

    Returns one row per horizon with ``horizon``, ``n``, ``events`` (observed by h),
    ``deaths_first`` (deaths by h), ``censored_before`` (censored before h), and for each
    of ``METRICS`` the value and ``_ci_low``/``_ci_high``. With ``truth``: the same with
    the prefix ``oracle_``, ``td_auroc_diff`` (model - oracle, paired CI) and
    ``mean_abs_diff_truth`` (mean |risk - true risk|, with CI).
    """
    t, s, _ = _as_arrays(time, status)
    horizons = sorted(float(h) for h in risks)
    for h in horizons:
        _check(t, s, h)
    n = len(t)
    pred = {h: _check_risk(risks[h], n, f"risks[{h:g}]") for h in horizons}
    true = None
    if truth is not None:
        if sorted(float(h) for h in truth) != horizons:
            raise ValueError(f"truth has horizons {sorted(truth)}, risks has {horizons}")
        true = {h: _check_risk(truth[h], n, f"truth[{h:g}]") for h in horizons}

    ones = np.ones((1, n))
    point: dict[float, dict[str, float]] = {}
    starts: dict[tuple[str, float], tuple[float, float, float]] = {}
    for h in horizons:
        w1 = _bootstrap_ipcw(t, s, h, ones)
        point[h] = {}
        for who, p in (("", pred[h]), ("oracle_", true[h] if true else None)):
            if p is None:
                continue
            starts[who, h] = _logistic_start(t, s, h, p, w1)
            point[h].update({who + k: float(v[0]) for k, v in _metrics(t, s, h, p, ones, w1, starts[who, h]).items()})
        if true:
            point[h]["td_auroc_diff"] = point[h]["td_auroc"] - point[h]["oracle_td_auroc"]
            point[h]["mean_abs_diff_truth"] = float(np.abs(pred[h] - true[h]).mean())

    rng = np.random.default_rng(seed)
    reps: dict[float, dict[str, list[np.ndarray]]] = {h: {} for h in horizons}
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        W = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype("float64")
        for h in horizons:
            w_ipcw = _bootstrap_ipcw(t, s, h, W)
            got = {k: v for k, v in _metrics(t, s, h, pred[h], W, w_ipcw, starts["", h]).items()}
            if true:
                got.update({"oracle_" + k: v for k, v in
                            _metrics(t, s, h, true[h], W, w_ipcw, starts["oracle_", h]).items()})
                got["td_auroc_diff"] = got["td_auroc"] - got["oracle_td_auroc"]
                got["mean_abs_diff_truth"] = (W @ np.abs(pred[h] - true[h])) / W.sum(axis=1)
            for k, v in got.items():
                reps[h].setdefault(k, []).append(v)
        done += size

    rows = []
    for h in horizons:
        row: dict[str, float] = {"horizon": h, "n": n,
                                 "events": int(((s == EVENT) & (t <= h)).sum()),
                                 "deaths_first": int(((s == DEATH) & (t <= h)).sum()),
                                 "censored_before": int(((s == CENSORED) & (t < h)).sum())}
        for k, v in point[h].items():
            row[k] = v
            row[f"{k}_ci_low"], row[f"{k}_ci_high"] = _ci(np.concatenate(reps[h][k])) if n_boot else (np.nan, np.nan)
        rows.append(row)
    return pd.DataFrame(rows)
