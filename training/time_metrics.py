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
rule of ``crude_label`` (a row censored at h counts as event-free at h). When G is not
given it is fitted here with events and deaths leaving the risk set before censorings at
the same time (the tie rule of ``competing_risks``); then the IPCW mean of the crude label
equals the Aalen-Johansen cumulative incidence exactly, tied times included, so the
bootstrap computes the observed (Aalen-Johansen) risk from the same weights.

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
- ``evaluate_at_horizons``: all of the above per horizon with paired bootstrap CIs
  (patients resampled with all their rows, ``training.resampling``; G refitted per
  resample), next to the oracle when the true risk is known.

Every bootstrap here takes ``patients`` (one id per row): a replicate draws patients, not
rows, because a patient's levels share death, censoring and part of their fracture risk.
``patients=None`` treats each row as its own patient (only right when no patient has two).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.competing_risks import CENSORED, DEATH, EVENT, _as_arrays, aalen_johansen, ipcw_weights
from training.evaluation import _weighted_logistic
from training.resampling import patient_codes, patient_counts

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

def _runs(sorted_values: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal values in a sorted array."""
    if len(sorted_values) == 0:
        return np.zeros(0, dtype="int64")
    return np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])


def _sum_runs(M: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Column sums of ``M`` (B, n) over runs starting at ``starts`` (no-op without ties)."""
    return M if len(starts) == M.shape[1] else np.add.reduceat(M, starts, axis=1)


class _Censoring:
    """Rows sorted by time, with what every replicate's censoring Kaplan-Meier needs.

    ``G(W)`` gives, for each row of the count matrix ``W`` (B, n; columns in the sorted
    order), G_b at every distinct time (B, K + 1; column 0 is G = 1 before the first
    time), so that G_b(x-) is column ``searchsorted(times, x, 'left')``.
    """

    def __init__(self, t: np.ndarray, s: np.ndarray):
        self.order = np.argsort(t, kind="stable")
        self.t, self.s = t[self.order], s[self.order]
        self.starts = _runs(self.t)
        self.times = self.t[self.starts]
        self.censored = self.s == CENSORED

    def G(self, W: np.ndarray) -> np.ndarray:
        removed = _sum_runs(W, self.starts)
        cens = _sum_runs(W * self.censored, self.starts)
        # Events and deaths at a time come before censoring at that time, so they leave
        # the risk set of censoring first: this keeps the IPCW mean of the crude label
        # equal to Aalen-Johansen even with tied times.
        at_risk = W.sum(axis=1, keepdims=True) - np.cumsum(removed, axis=1) + cens
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(at_risk > 0, 1.0 - cens / np.where(at_risk > 0, at_risk, 1.0), 1.0)
        return np.concatenate([np.ones((W.shape[0], 1), W.dtype), np.cumprod(factor, axis=1)], axis=1)

    def known(self, horizon: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows (sorted order) whose crude status at h is known, their label (event by h)
        and the column of G(min(T, h)-) for each."""
        known = np.flatnonzero((self.t >= horizon) | (self.s != CENSORED))
        y = ((self.s[known] == EVENT) & (self.t[known] <= horizon)).astype("float64")
        col = np.searchsorted(self.times, np.minimum(self.t[known], horizon), side="left")
        return known, y, col

    def ipcw(self, W: np.ndarray, horizon: float, G: np.ndarray | None = None) -> np.ndarray:
        """IPCW weights (B, n) of every replicate, G refitted on each (sorted order)."""
        known, _, col = self.known(horizon)
        G = self.G(W) if G is None else G
        out = np.zeros(W.shape, W.dtype)
        out[:, known] = W[:, known] / np.maximum(G[:, col], 1e-12)
        return out


def _bootstrap_ipcw(t: np.ndarray, s: np.ndarray, horizon: float, W: np.ndarray) -> np.ndarray:
    """IPCW weights (B, n) for each replicate of the count matrix ``W`` (B, n; rows in the
    given order), with the censoring Kaplan-Meier refitted on each replicate. Same rule as
    ``competing_risks.ipcw_weights`` (tested equal on expanded resamples without tied
    times; with ties see ``_Censoring.G``)."""
    cens = _Censoring(t, s)
    w_sorted = cens.ipcw(W[:, cens.order], horizon)
    out = np.empty_like(w_sorted)
    out[:, cens.order] = w_sorted
    return out


class _Ranked:
    """Known rows of one risk vector sorted by risk: labels, risk, logit and runs of ties,
    and the cells (equal-width bin of logit(risk) x label) used by the bootstrap's logistic."""

    def __init__(self, y: np.ndarray, risk: np.ndarray, n_cells: int = 512):
        self.order = np.argsort(risk, kind="mergesort")
        self.y, self.r = y[self.order], risk[self.order]
        self.lp = _logit(self.r)
        self.ties = _runs(self.r)
        # Equal-width bins of logit(risk): the fit is driven by the tails, where
        # equal-count bins would be wide.
        span = max(float(self.lp[-1] - self.lp[0]), 1e-12) if len(self.lp) else 1.0
        self.cells = _runs(np.floor((self.lp - self.lp[:1]) / span * n_cells).clip(0, n_cells - 1))

    def auroc(self, w: np.ndarray) -> np.ndarray:
        """Weighted Mann-Whitney AUROC (ties in risk count half) for each row of ``w``."""
        wp = _sum_runs(w * self.y.astype(w.dtype), self.ties)
        wn = _sum_runs(w, self.ties) - wp
        neg_below = np.cumsum(wn, axis=1) - wn
        with np.errstate(divide="ignore", invalid="ignore"):
            return (wp * (neg_below + 0.5 * wn)).sum(axis=1) / (wp.sum(axis=1) * wn.sum(axis=1))

    def logistic(self, w: np.ndarray, start=None, cell_lp: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """(calibration slope, intercept of the slope model, calibration-in-the-large) per
        row of ``w``; ``start`` is such a triple (the full-sample fit) to start Newton at.

        Exact (every row) without ``cell_lp``. With it, the fit runs on 2 x 512 cells
        (equal-width bin of logit(risk) x label) weighted by each replicate's weight sums and
        placed at ``cell_lp`` (the full-sample weighted mean logit of the cell): the
        bootstrap's approximation, far cheaper on large n, checked against exact refits in the tests.
        """
        pos_w = w @ self.y.astype(w.dtype)
        # Without both labels the logistic model has no finite fit: NaN, not a number
        # Newton stopped at.
        undefined = (pos_w <= 0) | (w.sum(axis=1) - pos_w <= 0)
        if undefined.all():
            nan = np.full(w.shape[0], np.nan)
            return nan, nan, nan.copy()
        if start is not None and not np.all(np.isfinite(start)):
            start = None
        if cell_lp is None:
            lp, y, ww = self.lp, self.y, w
        else:
            pos = np.add.reduceat(w * self.y.astype(w.dtype), self.cells, axis=1)
            lp, y = cell_lp, np.r_[np.ones(len(self.cells)), np.zeros(len(self.cells))]
            ww = np.concatenate([pos, np.add.reduceat(w, self.cells, axis=1) - pos], axis=1).astype("float64")
        slope, b = _weighted_logistic(lp, y, ww, slope=True, start=start)
        _, intercept = _weighted_logistic(lp, y, ww, slope=False, start=start)
        return tuple(np.where(undefined, np.nan, v) for v in (slope, b, intercept))

    def cell_lp(self, w: np.ndarray) -> np.ndarray:
        """Weighted mean logit(risk) of each (bin, label) cell under the weights ``w`` (n,)."""
        if len(self.cells) == 0:
            return np.zeros(0)
        out = []
        for lab in (self.y, 1 - self.y):
            sw = np.add.reduceat(w * lab, self.cells)
            swl = np.add.reduceat(w * lab * self.lp, self.cells)
            mid = np.add.reduceat(self.lp, self.cells) / np.diff(np.r_[self.cells, len(self.lp)])
            out.append(np.where(sw > 0, swl / np.where(sw > 0, sw, 1), mid))
        return np.concatenate(out)


def _metrics(rank: _Ranked, w_known: np.ndarray, n_w: np.ndarray, mean_predicted: np.ndarray,
             start=None, cell_lp: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every horizon metric per replicate from the IPCW weights of the known rows
    (``w_known``, (B, m), in ``rank``'s order), the replicate sizes ``n_w`` and mean
    predicted risks."""
    w = w_known[:, rank.order]
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["td_auroc"] = rank.auroc(w)
        out["brier"] = (w @ ((rank.y - rank.r) ** 2).astype(w.dtype)) / n_w
        out["calibration_slope"], _, out["calibration_intercept"] = rank.logistic(w, start, cell_lp)
        out["mean_predicted"] = mean_predicted
        out["observed_risk"] = (w @ rank.y.astype(w.dtype)) / n_w  # = Aalen-Johansen (module docstring)
        out["observed_expected"] = out["observed_risk"] / mean_predicted
    if w.shape[1] == 0:  # everyone censored before h: nothing is known there
        for k in ("brier", "observed_risk", "observed_expected"):
            out[k] = np.full(len(n_w), np.nan)
    return out


def _single(time, status, risk, horizon: float, G) -> tuple[_Ranked, np.ndarray, np.ndarray]:
    """(ranked known rows, their (1, m) IPCW weights, all risks) with ``G`` fitted here
    when None."""
    t, s = _check(time, status, horizon)
    r = _check_risk(risk, len(t))
    w = _bootstrap_ipcw(t, s, horizon, np.ones((1, len(t))))[0] if G is None else ipcw_weights(t, s, horizon, G)
    known = (t >= horizon) | (s != CENSORED)
    y = ((s[known] == EVENT) & (t[known] <= horizon)).astype("float64")
    return _Ranked(y, r[known]), w[known][None, :], r


# ---------------------------------------------------------------- public metrics

def td_auroc(time, status, risk, horizon: float, G=None) -> float:
    """Time-dependent (cumulative/dynamic) AUROC at ``horizon`` with IPCW, competing risks.

    Takes follow-up ``time``, ``status`` (0/1/2), predicted cumulative incidence ``risk``
    by the horizon, ``horizon`` in the unit of time, and optionally ``G`` (a censoring
    survival function from ``competing_risks.censoring_survival``, e.g. fitted on another
    sample; refitted on these rows when None). Returns the AUROC in [0, 1] (NaN when there
    are no cases or no controls).
    """
    rank, w, _ = _single(time, status, risk, horizon, G)
    return float(rank.auroc(w[:, rank.order])[0])


def brier_ipcw(time, status, risk, horizon: float, G=None) -> float:
    """IPCW Brier score at ``horizon`` of the predicted crude risk (arguments as ``td_auroc``):
    mean of w_i (1{event by h} - risk_i)^2 over all n rows (0 ideal)."""
    rank, w, r = _single(time, status, risk, horizon, G)
    return float(w[0, rank.order] @ (rank.y - rank.r) ** 2 / len(r))


def calibration_slope_intercept(time, status, risk, horizon: float, G=None) -> tuple[float, float]:
    """(slope, intercept) of IPCW-weighted logistic recalibration of the crude label at
    ``horizon`` on logit(risk) (arguments as ``td_auroc``).

    The slope comes from logit P(y) = a + slope * logit(risk) (1 ideal). The intercept is
    calibration-in-the-large: logit P(y) = intercept + logit(risk), slope fixed at 1
    (0 ideal; > 0 means the risk is underestimated on average).
    """
    rank, w, _ = _single(time, status, risk, horizon, G)
    slope, _, intercept = rank.logistic(w[:, rank.order])
    return float(slope[0]), float(intercept[0])


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
                      seed: int = 0, *, patients) -> pd.DataFrame:
    """Observed vs predicted risk at ``horizon`` per quantile bin of ``risk``.

    Returns one row per non-empty bin: ``bin`` (0 = lowest risk), ``n``, ``events`` (events
    by h), ``risk_low``/``risk_high`` (range of predictions), ``mean_predicted``,
    ``observed`` (Aalen-Johansen cumulative incidence of the rows in the bin) and
    ``observed_ci_low``/``observed_ci_high``: 95 % percentile bootstrap interval
    (``n_boot`` resamples of the patients with rows in the bin, each with those rows;
    ``patients`` one id per row; seeded by ``seed``, Aalen-Johansen refitted on each
    through its IPCW form).
    """
    t, s = _check(time, status, horizon)
    r = _check_risk(risk, len(t))
    ids = np.arange(len(t)) if patients is None else np.asarray(patients)
    b = _bin_index(r, bins)
    rng = np.random.default_rng(seed)
    rows = []
    for k in np.unique(b):
        m = b == k
        tk, sk = t[m], s[m]
        n = int(m.sum())
        W = patient_counts(rng, patient_codes(ids[m], n), n_boot)
        y = ((sk == EVENT) & (tk <= horizon)).astype("float64")
        reps = (_bootstrap_ipcw(tk, sk, horizon, W) @ y) / W.sum(axis=1)
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


def net_benefit_replicates(time, status, risk, horizon: float, thresholds, n_boot: int,
                           seed: int = 0, chunk: int = 100, *, patients) -> tuple[np.ndarray, np.ndarray]:
    """Net benefit and treat-all (``net_benefit``'s columns) of ``n_boot`` bootstrap
    resamples of the patients (``patients``: one id per row; each drawn patient brings all
    its rows; seeded by ``seed``): two arrays (n_boot, len(thresholds)).

    Each replicate's Aalen-Johansen among the treated (and among all, for treat-all) is its
    IPCW form with the censoring Kaplan-Meier refitted on that replicate's rows
    (``_bootstrap_ipcw``; equal to ``net_benefit`` on the expanded resample), all
    replicates of a chunk at once per threshold.
    """
    t, s = _check(time, status, horizon)
    r = _check_risk(risk, len(t))
    pts = np.asarray(thresholds, dtype="float64")
    if ((pts <= 0) | (pts >= 1)).any():
        raise ValueError("thresholds must lie strictly between 0 and 1")
    codes = patient_codes(patients, len(t))
    rng = np.random.default_rng(seed)
    y = ((s == EVENT) & (t <= horizon)).astype("float64")
    odds = pts / (1 - pts)
    nb, treat_all = np.zeros((n_boot, len(pts))), np.zeros((n_boot, len(pts)))
    for lo in range(0, n_boot, chunk):
        W = patient_counts(rng, codes, min(chunk, n_boot - lo))
        part = slice(lo, lo + len(W))
        n_w = W.sum(axis=1)  # rows in each replicate: varies when patients have several
        with np.errstate(divide="ignore", invalid="ignore"):
            cif_all = (_bootstrap_ipcw(t, s, horizon, W) @ y) / n_w
        treat_all[part] = cif_all[:, None] - (1 - cif_all[:, None]) * odds[None, :]
        for j, pt in enumerate(pts):
            above = r >= pt
            if not above.any():
                continue  # nobody treated: net benefit 0, as net_benefit
            Wa = W[:, above]
            n_a = Wa.sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                cif = np.where(n_a > 0, (_bootstrap_ipcw(t[above], s[above], horizon, Wa) @ y[above]) / n_a, 0.0)
            frac = n_a / n_w
            nb[part, j] = frac * cif - frac * (1 - cif) * odds[j]
    return nb, treat_all


# ---------------------------------------------------------------- all horizons, bootstrap

def _ci(values: np.ndarray) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if len(v) <= 10:
        return np.nan, np.nan
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def evaluate_at_horizons(time, status, risks: dict[float, np.ndarray], n_boot: int = 1000, seed: int = 0,
                         truth: dict[float, np.ndarray] | None = None, chunk: int = 200, *,
                         patients) -> pd.DataFrame:
    """Every metric at every horizon with 95 % percentile bootstrap CIs.

    ``risks`` maps a horizon (unit of ``time``) to the predicted cumulative incidence of
    each row; ``truth`` (optional, same keys) to the true one (the simulator's);
    ``patients`` the patient id of each row. Patients are resampled with replacement
    ``n_boot`` times, each with all its rows (seeded by ``seed``); the same resamples serve
    every horizon, the model and the oracle (paired), and G is refitted on each.
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

    cens = _Censoring(t, s)
    # Patients numbered in time order: with one row each, the resamples are those of rows.
    codes = patient_codes(patients, n)  # checked in the caller's order, then renumbered in time order
    codes = pd.factorize(codes[cens.order])[0]
    pred = {h: p[cens.order] for h, p in pred.items()}  # every array below in time order
    true = {h: p[cens.order] for h, p in true.items()} if true else None
    groups = {"": pred, "oracle_": true} if true else {"": pred}
    ones = np.ones((1, n))
    G1 = cens.G(ones)
    point: dict[float, dict[str, float]] = {}
    setup: dict[tuple[str, float], tuple] = {}
    for h in horizons:
        known, y, _ = cens.known(h)
        w1 = cens.ipcw(ones, h, G1)[:, known]
        point[h] = {}
        for who, risks_h in groups.items():
            rank = _Ranked(y, risks_h[h][known])
            start = tuple(float(v[0]) for v in rank.logistic(w1[:, rank.order]))
            cell_lp = rank.cell_lp(w1[0, rank.order])
            # The binned fit's full-sample offset from the exact one, removed from replicates.
            binned = rank.logistic(w1[:, rank.order], start, cell_lp)
            shift = (start[0] - float(binned[0][0]), start[2] - float(binned[2][0]))
            setup[who, h] = (known, rank, start, cell_lp, shift)
            m = _metrics(rank, w1, np.array([float(n)]), np.array([risks_h[h].mean()]), start)
            point[h].update({who + k: float(v[0]) for k, v in m.items()})
        if true:
            point[h]["td_auroc_diff"] = point[h]["td_auroc"] - point[h]["oracle_td_auroc"]
            point[h]["mean_abs_diff_truth"] = float(np.abs(pred[h] - true[h]).mean())

    rng = np.random.default_rng(seed)
    reps: dict[float, dict[str, list[np.ndarray]]] = {h: {} for h in horizons}
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        # float32 halves the memory traffic; its rounding (~1e-6 relative) is far below
        # any CI width. Point estimates stay in float64.
        W = patient_counts(rng, codes, size, "float32")
        n_w = W.sum(axis=1, dtype="float64")
        G = cens.G(W)
        for h in horizons:
            w_ipcw = None
            got: dict[str, np.ndarray] = {}
            for who, risks_h in groups.items():
                known, rank, start, cell_lp, shift = setup[who, h]
                if w_ipcw is None:
                    w_ipcw = cens.ipcw(W, h, G)[:, known]
                m = _metrics(rank, w_ipcw, n_w, (W @ risks_h[h].astype("float32")) / n_w, start, cell_lp)
                m["calibration_slope"] = m["calibration_slope"] + shift[0]
                m["calibration_intercept"] = m["calibration_intercept"] + shift[1]
                got.update({who + k: v for k, v in m.items()})
            if true:
                got["td_auroc_diff"] = got["td_auroc"] - got["oracle_td_auroc"]
                got["mean_abs_diff_truth"] = (W @ np.abs(pred[h] - true[h]).astype("float32")) / n_w
            for k, v in got.items():
                reps[h].setdefault(k, []).append(v)
        done += size

    t, s = cens.t, cens.s
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
