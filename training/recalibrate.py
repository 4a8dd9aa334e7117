"""Updating a champion for a new site: closed testing between no update, intercept only and
intercept and slope (Vergouwe et al. 2017, Stat Med 36:4529-39), on the local follow-up.

The model is ``logit F(t|x) = a_t + b * eta(x)`` (``modelstore.calibration``). On the
site's procedures, with the crude labels at every horizon weighted by the inverse
probability of remaining under follow-up (Kaplan-Meier of the *local* censoring, death a
competing event: ``training.competing_risks``), the same estimator as training:

- **none**: the champion's (a_t, b) as they are (0 parameters fitted);
- **(i) intercept**: a_t + delta for one common delta, b kept (1 parameter; the order of
  the a_t is kept, so curves still never fall);
- **(ii) intercept and slope**: every a_t and b refitted (K + 1 parameters, a_t kept
  non-decreasing and b > 0 by ``HorizonCalibration.fit``);
- **(iii) refit on the pooled data**: the score model of the same family with the
  champion's hyperparameters refitted on its training export plus the site's procedures,
  with no site term, then calibrated on the site (``training.pooled``; many parameters).

**Rule** (closed testing, alpha = 0.05): first (ii) against none (df K + 1); if not
significant, no update. Else (ii) against (i) (df K); if significant, (ii), else (i)
against none (df 1): (i) if significant, else none. Minimum local events by the headline
horizon per option (Riley et al. 2021 and Vergouwe 2017 ask for at least 100 events to
estimate a slope): (i) needs ``MIN_EVENTS_INTERCEPT`` (20), (ii) ``MIN_EVENTS_SLOPE``
(100); with fewer the option is not considered. The stacked likelihood counts each
procedure once per horizon (K correlated labels); the log-likelihood ratio is divided by
K, which is conservative (as if the K labels of a procedure carried one label's
information). The IPCW weights sum to about the number of procedures at each horizon
(they stand for the censored ones too), as in training.

**Step 4, (iii)** (``with_refit``): considered only with at least ``MIN_EVENTS_REFIT``
(100) local events by the headline horizon and the training export at hand (the version's
recorded ``raw_dir``, or ``--pooled-with``). (iii) and the closed test's choice are both
fitted on ``REFIT_FOLDS`` - 1 folds of the site and scored on the held-out fold
(``training.pooled``); (iii) is chosen when its held-out log score is better by a
one-sided paired z-test over patients at alpha 0.05, else the closed test's choice
stands. Held-out rather than in-sample likelihood: (iii) is not nested in (i)/(ii) and
has far more parameters, which a likelihood ratio on the fitting data would reward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from scipy import stats
from scipy.optimize import minimize_scalar

from features.labels import horizon_days
from modelstore.calibration import HorizonCalibration
from training.competing_risks import censoring_survival
from training.data import horizon_targets

ALPHA = 0.05
MIN_EVENTS_INTERCEPT = 20
MIN_EVENTS_SLOPE = 100
#: (iii)'s calibration is an (ii) fit on the site, so it needs what (ii) needs; its score
#: model draws on the pooled rows, and the held-out test guards against a refit that the
#: site's events cannot show to be better.
MIN_EVENTS_REFIT = MIN_EVENTS_SLOPE
RULE = ("closed testing (Vergouwe 2017), alpha 0.05: LR (ii) vs none, then (ii) vs (i), then (i) vs none; "
        f"(i) needs >= {MIN_EVENTS_INTERCEPT} local events by the headline horizon, (ii) >= {MIN_EVENTS_SLOPE}; "
        f"then, with >= {MIN_EVENTS_REFIT} events and the training export, (iii) refit on pooled data (champion's "
        "family and hyperparameters, no site term, calibrated on the site) replaces that choice if its held-out "
        "log score over site folds is better by a one-sided paired z-test over patients, p < 0.05")
#: The tag ``recalibration_method`` per decision.
METHODS = {"none": "none (champion kept)", "intercept": "(i) intercept only",
           "intercept_slope": "(ii) intercept and slope", "refit_pooled": "(iii) refit on pooled data"}


@dataclass
class Decision:
    """The rule's choice and its evidence."""

    choice: str                       # "none", "intercept", "intercept_slope", "refit_pooled"
    calibration: HorizonCalibration   # the (possibly unchanged) calibration
    n: int
    events: int                       # local events by the headline horizon
    stats: dict[str, float] = field(default_factory=dict)
    note: str = ""
    scorer: Any = None                # the refitted score model with "refit_pooled", else None

    def tags(self) -> dict[str, str]:
        return {"recalibration_decision": self.choice, "recalibration_method": METHODS[self.choice],
                "recalibration_rule": RULE[:4000],
                "local_n_procedures": str(self.n), "local_n_events": str(self.events),
                "recalibration_note": self.note[:4000],
                **{f"recalibration_{k}": f"{v:.6g}" for k, v in self.stats.items()}}


def row_loss(z: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per row: IPCW-weighted log loss of calibrated log-odds ``z`` (n, K), summed over horizons."""
    w = np.where(np.isfinite(labels), weights, 0.0)
    y = np.nan_to_num(labels)
    return np.sum(w * (np.logaddexp(0.0, z) - y * z), axis=1)


def _nll(cal: HorizonCalibration, eta: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    return float(row_loss(cal.logit(eta), y, w).sum())


def _shift(cal: HorizonCalibration, delta: float) -> HorizonCalibration:
    return HorizonCalibration(cal.horizons_months, tuple(a + delta for a in cal.intercepts), cal.slope)


def local_targets(time_days: np.ndarray, status: np.ndarray, horizons_months) -> tuple[np.ndarray, np.ndarray]:
    """Crude labels (n, K; NaN unknown) and IPCW weights (0 where unknown) under the
    Kaplan-Meier of the local censoring, exactly as training builds them."""
    G = censoring_survival(time_days, status)
    return horizon_targets(time_days, status, horizons_months, G)


def _best_shift(cal: HorizonCalibration, eta: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    res = minimize_scalar(lambda d: _nll(_shift(cal, d), eta, y, w), bounds=(-8, 8), method="bounded",
                          options={"xatol": 1e-8})
    return float(res.x)


def update(choice: str, cal: HorizonCalibration, eta: np.ndarray, labels: np.ndarray,
           w: np.ndarray) -> HorizonCalibration:
    """The calibration of option ``choice`` ("none", "intercept", "intercept_slope") fitted
    on scores ``eta`` with crude labels (n, K; NaN unknown) and IPCW weights ``w``."""
    if choice == "none":
        return cal
    if choice == "intercept":
        return _shift(cal, _best_shift(cal, eta, np.nan_to_num(labels), np.where(np.isfinite(labels), w, 0.0)))
    if choice == "intercept_slope":
        return HorizonCalibration.fit(eta, labels, w, cal.horizons_months)
    raise ValueError(f"no calibration update called {choice!r}")


def crossfit_logits(choice: str, cal: HorizonCalibration, eta: np.ndarray, time_days: np.ndarray,
                    status: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``f(train_mask)``: calibrated log-odds (n, K) of every row with option ``choice``
    fitted on the rows of ``train_mask`` (for held-out comparisons, ``training.pooled``)."""
    labels, w = local_targets(time_days, status, cal.horizons_months)

    def logits(train: np.ndarray) -> np.ndarray:
        return update(choice, cal, eta[train], labels[train], w[train]).logit(eta)
    return logits


def with_refit(d: Decision, refit, alpha: float = ALPHA) -> Decision:
    """Step 4 of the rule: (iii) (a ``training.pooled.RefitResult``) replaces the closed
    test's choice ``d`` if its held-out log score is significantly better."""
    st = {**d.stats, **refit.stats}
    p = refit.p_value
    if d.events < MIN_EVENTS_REFIT:  # callers should not have refitted; the rule still holds
        return Decision(d.choice, d.calibration, d.n, d.events, st, d.note + f"; (iii) not considered: {d.events} "
                        f"events < {MIN_EVENTS_REFIT}")
    if p < alpha:
        return Decision("refit_pooled", refit.calibration, d.n, d.events, st,
                        f"{d.note}; (iii) vs {d.choice} on held-out site folds: z={refit.stats['refit_z']:.2f}, "
                        f"p={p:.3g} < {alpha}: refit on pooled data", scorer=refit.scorer)
    return Decision(d.choice, d.calibration, d.n, d.events, st,
                    f"{d.note}; (iii) vs {d.choice} on held-out site folds: z={refit.stats['refit_z']:.2f}, "
                    f"p={p:.3g} >= {alpha}: {d.choice} kept")


def decide(cal: HorizonCalibration, eta: np.ndarray, time_days: np.ndarray, status: np.ndarray,
           headline_months: float, alpha: float = ALPHA) -> Decision:
    """Apply the rule (module docstring) to the scores ``eta`` of the site's procedures."""
    horizons = cal.horizons_months
    labels, w = local_targets(time_days, status, horizons)
    y = np.nan_to_num(labels)
    K = len(horizons)
    events = int(((status == 1) & (time_days <= horizon_days(headline_months))).sum())
    n = len(eta)
    nll0 = _nll(cal, eta, y, w)
    delta = _best_shift(cal, eta, y, w)
    cal_i = _shift(cal, delta)
    nll_i = _nll(cal_i, eta, y, w)
    cal_ii = HorizonCalibration.fit(eta, labels, w, horizons)
    nll_ii = _nll(cal_ii, eta, y, w)
    lr_i = max(2 * (nll0 - nll_i) / K, 0.0)
    lr_ii = max(2 * (nll0 - nll_ii) / K, 0.0)
    lr_ii_i = max(2 * (nll_i - nll_ii) / K, 0.0)
    p_ii_none, p_ii_i, p_i_none = stats.chi2.sf(lr_ii, K + 1), stats.chi2.sf(lr_ii_i, K), stats.chi2.sf(lr_i, 1)
    st = {"delta": delta, "slope_refit": cal_ii.slope, "slope_parent": cal.slope,
          "lr_ii_vs_none": lr_ii, "p_ii_vs_none": p_ii_none, "lr_ii_vs_i": lr_ii_i, "p_ii_vs_i": p_ii_i,
          "lr_i_vs_none": lr_i, "p_i_vs_none": p_i_none}
    if events < MIN_EVENTS_INTERCEPT:
        return Decision("none", cal, n, events, st, f"{events} local events < {MIN_EVENTS_INTERCEPT}: no update")
    slope_ok = events >= MIN_EVENTS_SLOPE
    if slope_ok and p_ii_none >= alpha:
        return Decision("none", cal, n, events, st, f"(ii) vs none p={p_ii_none:.3g} >= {alpha}: no update")
    if slope_ok and p_ii_i < alpha:
        return Decision("intercept_slope", cal_ii, n, events, st, f"(ii) vs (i) p={p_ii_i:.3g} < {alpha}")
    if p_i_none < alpha:
        why = "" if slope_ok else f" ((ii) not considered: {events} events < {MIN_EVENTS_SLOPE})"
        return Decision("intercept", cal_i, n, events, st, f"(i) vs none p={p_i_none:.3g} < {alpha}{why}")
    return Decision("none", cal, n, events, st, f"(i) vs none p={p_i_none:.3g} >= {alpha}: no update")
