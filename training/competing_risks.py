"""Censoring-aware estimates of absolute (crude) risk with death as a competing event.

Inputs everywhere are per-row follow-up ``time`` (any unit, e.g. days) and competing-risks
``status`` as ``features.labels`` codes it: 0 censored, 1 the event of interest, 2 death
(or any other competing event) first.

- ``aalen_johansen``: the nonparametric cumulative incidence of the event at given times
  (Aalen-Johansen; with one event type it is 1 - Kaplan-Meier). Used as the *observed*
  risk in calibration plots, for the simulator's truth test and in site reports.
- ``censoring_survival``: Kaplan-Meier estimate of G(t) = P(still under follow-up at t),
  treating censoring as the "event" and events and deaths as censoring of it.
- ``ipcw_weights``: inverse-probability-of-censoring weights for the binary crude label
  at a horizon (Blanche et al. 2013): a row whose status at the horizon is known (event
  or death before it, or followed past it) gets 1 / G(min(time, horizon)-); a row censored
  before the horizon gets 0. Weighted means of the label estimate the cumulative incidence
  without the upward bias of dropping early-censored event-free rows. With the marginal G
  of ``censoring_survival`` the weights assume censoring is independent of the outcome
  given nothing, which holds for administrative censoring at a data cut and random loss;
  ``training.censoring`` offers a G given the patient's covariates for training (any
  ``G(at, before)`` that takes one time per row works here). Stated in the model card.

Ties follow the usual convention: at a common time, events and deaths happen before
censoring (and leave the censoring risk set first).
"""

from __future__ import annotations

import numpy as np

CENSORED, EVENT, DEATH = 0, 1, 2


def _as_arrays(time, status, weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(time, dtype="float64")
    s = np.asarray(status).astype("int64")
    w = np.ones(len(t)) if weights is None else np.asarray(weights, dtype="float64")
    if t.shape != s.shape or t.shape != w.shape or t.ndim != 1:
        raise ValueError("time, status (and weights) must be 1-d arrays of the same length")
    if np.isnan(t).any() or (t < 0).any():
        raise ValueError("time must be non-negative and not missing")
    return t, s, w


def _step(times: np.ndarray, values: np.ndarray, at: np.ndarray, before: bool = False) -> np.ndarray:
    """Right-continuous step function (value 0 before the first time) evaluated at ``at``;
    ``before=True`` gives the left limit f(at-)."""
    idx = np.searchsorted(times, at, side="left" if before else "right") - 1
    return np.where(idx >= 0, values[np.maximum(idx, 0)], 0.0)


def aalen_johansen(time, status, at, cause: int = EVENT, weights=None) -> np.ndarray:
    """Cumulative incidence of ``cause`` at each time in ``at`` (Aalen-Johansen estimator).

    ``status`` codes: 0 censored, any other value an event of that type. Optional case
    ``weights`` (e.g. bootstrap counts). Returns an array shaped like ``at``.
    """
    t, s, w = _as_arrays(time, status, weights)
    at_arr = np.atleast_1d(np.asarray(at, dtype="float64"))
    if len(t) == 0:
        return np.full(at_arr.shape, np.nan)
    order = np.argsort(t, kind="stable")
    t, s, w = t[order], s[order], w[order]
    uniq, first = np.unique(t, return_index=True)
    d_any = np.add.reduceat(w * (s != CENSORED), first)
    d_cause = np.add.reduceat(w * (s == cause), first)
    removed = np.add.reduceat(w, first)
    at_risk = np.cumsum(removed[::-1])[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        hazard_any = np.where(at_risk > 0, d_any / at_risk, 0.0)
        hazard_cause = np.where(at_risk > 0, d_cause / at_risk, 0.0)
    surv = np.cumprod(1.0 - hazard_any)
    surv_before = np.concatenate([[1.0], surv[:-1]])
    cif = np.cumsum(surv_before * hazard_cause)
    return _step(uniq, cif, at_arr).reshape(np.shape(at)) if np.ndim(at) else float(_step(uniq, cif, at_arr)[0])


def censoring_survival(time, status):
    """Kaplan-Meier G(t) of remaining uncensored. Returns ``G(at, before=False)``: a
    function giving G at times ``at`` (or its left limit G(at-) with ``before=True``)."""
    t, s, _ = _as_arrays(time, status)
    if len(t) == 0:
        return lambda at, before=False: np.ones(np.shape(at))
    order = np.argsort(t, kind="stable")
    t, s = t[order], s[order]
    uniq, first = np.unique(t, return_index=True)
    c = np.add.reduceat((s == CENSORED).astype("float64"), first)
    others = np.add.reduceat((s != CENSORED).astype("float64"), first)
    # Events and deaths at a time come before censoring at that time, so they leave the
    # censoring risk set first: the IPCW mean of the crude label then equals the
    # Aalen-Johansen incidence exactly, tied times included (training.time_metrics).
    n = (len(t) - first) - others
    surv = np.cumprod(np.where(n > 0, 1.0 - c / np.where(n > 0, n, 1.0), 1.0))

    def G(at, before: bool = False) -> np.ndarray:
        at_arr = np.asarray(at, dtype="float64")
        g = 1.0 - _step(uniq, 1.0 - surv, at_arr.ravel(), before=before)
        return g.reshape(at_arr.shape)

    return G


def ipcw_weights(time, status, horizon: float, G=None) -> np.ndarray:
    """IPCW weights of the binary crude label at ``horizon`` (module docstring).

    ``G``: a censoring survival function from ``censoring_survival`` (fitted on these rows
    when not given, e.g. to reuse the training part's on a test part). Weights are 0 for
    rows censored before the horizon, else 1 / G(min(time, horizon)-).
    """
    t, s, _ = _as_arrays(time, status)
    G = G or censoring_survival(t, s)
    known = (t >= horizon) | (s != CENSORED)
    g = G(np.minimum(t, horizon), before=True)
    with np.errstate(divide="ignore"):
        w = np.where(known, 1.0 / np.maximum(g, 1e-12), 0.0)
    return w


def crude_label(time, status, horizon: float) -> np.ndarray:
    """Binary crude label at ``horizon``: 1 event by then, 0 known event-free (death first
    or followed past it), NaN censored before it."""
    t, s, _ = _as_arrays(time, status)
    y = np.where((s == EVENT) & (t <= horizon), 1.0, 0.0)
    return np.where((t < horizon) & (s == CENSORED), np.nan, y)
