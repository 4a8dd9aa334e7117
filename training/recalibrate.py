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
(100); with fewer the option is not considered. The IPCW weights sum to about the number
of procedures at each horizon (they stand for the censored ones too), as in training.

**The tests** are patient-clustered working score tests with a Rao-Scott correction
(Rao & Scott 1984, Ann Stat 12:46; the Satterthwaite form that Lumley & Scott 2014, Aust N
Z J Stat 56:1, give for working likelihoods of clustered survey data), ``clustered_score_test``.
The fitted likelihood is a working one: it stacks K correlated labels of each procedure
(the crude labels at 3, 6, 12 and 24 months), weights them by IPCW, and a patient's levels
share death, censoring and part of their fracture risk. So a likelihood ratio has no
chi-square law (the old rule divided it by K and rejected a correct model in 0.5-2.5 % of
null datasets instead of 5 %). The score test needs only the model under the null (the
parent, or the parent shifted by the fitted common delta). Its working statistic X = U'
I^-1 U (U the total score of the tested terms, I their working information, each
procedure's score first projected off a nuisance term, delta in (ii) vs (i)) is, under the
null, a weighted sum of chi-square(1) variables with weights the eigenvalues of I^-1 V,
where V is the variance of U over *patients*: the per-procedure scores summed per patient,
their empirical covariance (the cluster sandwich), whatever the correlation within a
patient and across horizons. X / c is referred to chi-square(nu), c = tr(M^2) / tr(M),
nu = tr(M)^2 / tr(M^2), M = I^-1 V. Only traces of V enter, not its inverse: the Wald form
U' V^-1 U (a plain robust score test) inverts an estimate of V whose contrasts between
horizons rest on the few events between them, and it rejected a correct model in
8.8-10.6 % of null datasets. On 500 simulated null datasets of the PKP profile (4,000
procedures, about 2,800 patients) this test rejects a correct model in 5.0-6.4 % (each
interval containing 5 %), and the rule updates it in 4.8-6.0 %
(``bench/bench_recal_tests.py``; bench/README.md). The constrained (ii) fit (ordered
a_t, b > 0) is not needed for the test, only for the update it chooses.

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

from features.labels import horizon_days
from modelstore.calibration import HorizonCalibration
from training.competing_risks import censoring_survival
from training.data import horizon_targets
from training.resampling import patient_codes

ALPHA = 0.05
MIN_EVENTS_INTERCEPT = 20
MIN_EVENTS_SLOPE = 100
#: (iii)'s calibration is an (ii) fit on the site, so it needs what (ii) needs; its score
#: model draws on the pooled rows, and the held-out test guards against a refit that the
#: site's events cannot show to be better.
MIN_EVENTS_REFIT = MIN_EVENTS_SLOPE
RULE = ("closed testing (Vergouwe 2017), alpha 0.05, patient-clustered working score tests, Rao-Scott corrected (Lumley & Scott 2014): "
        "(ii) vs none, then (ii) vs (i), then (i) vs none; "
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


def _shift(cal: HorizonCalibration, delta: float) -> HorizonCalibration:
    return HorizonCalibration(cal.horizons_months, tuple(a + delta for a in cal.intercepts), cal.slope)


def local_targets(time_days: np.ndarray, status: np.ndarray, horizons_months) -> tuple[np.ndarray, np.ndarray]:
    """Crude labels (n, K; NaN unknown) and IPCW weights (0 where unknown) under the
    Kaplan-Meier of the local censoring, exactly as training builds them."""
    G = censoring_survival(time_days, status)
    return horizon_targets(time_days, status, horizons_months, G)


def best_shift(z: np.ndarray, labels: np.ndarray, w: np.ndarray) -> float:
    """The common delta (log-odds) that, added to the log-odds ``z`` (n, K) at every
    horizon, maximises the IPCW-weighted likelihood of the crude ``labels`` (n, K)."""
    ww = np.where(np.isfinite(labels), w, 0.0)
    y = np.nan_to_num(labels)
    delta = 0.0
    for _ in range(100):  # Newton on a concave function of one variable, steps capped at 1
        mu = 1.0 / (1.0 + np.exp(-(z + delta)))
        info = float(np.sum(ww * mu * (1 - mu)))
        if info <= 0:
            break
        step = float(np.clip(np.sum(ww * (y - mu)) / info, -1.0, 1.0))
        delta = float(np.clip(delta + step, -8.0, 8.0))
        if abs(step) < 1e-10:
            break
    return delta


def update(choice: str, cal: HorizonCalibration, eta: np.ndarray, labels: np.ndarray,
           w: np.ndarray) -> HorizonCalibration:
    """The calibration of option ``choice`` ("none", "intercept", "intercept_slope") fitted
    on scores ``eta`` with crude labels (n, K; NaN unknown) and IPCW weights ``w``."""
    if choice == "none":
        return cal
    if choice == "intercept":
        return _shift(cal, best_shift(cal.logit(eta), labels, w))
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


def clustered_score_test(z: np.ndarray, labels: np.ndarray, weights: np.ndarray, tested: np.ndarray,
                         nuisance: np.ndarray | None, codes: np.ndarray) -> tuple[float, int, float, float]:
    """Patient-clustered, Rao-Scott corrected working score test that the log-odds ``z`` (n, K)
    need no term ``tested`` (n, K, q): the logistic model ``logit P(y_ik) = z_ik + tested_ik .
    theta``, theta = 0, on crude labels ``labels`` (n, K; NaN unknown) weighted by
    ``weights`` (n, K).

    ``nuisance`` (n, K, m) or None: terms already fitted in ``z`` (their score is 0 there),
    projected off each row's score with the working information. ``codes``: patient index
    of each row (``training.resampling.patient_codes``). Returns (X / c, q, nu, p): the
    working statistic scaled by c, the number of tested terms, the Satterthwaite degrees of
    freedom and the p-value against chi-square(nu) (module docstring).
    """
    w = np.where(np.isfinite(labels), weights, 0.0)
    y = np.nan_to_num(labels)
    mu = 1.0 / (1.0 + np.exp(-z))
    r = w * (y - mu)
    v = w * mu * (1 - mu)
    u = np.einsum("nk,nkq->nq", r, tested)
    info = np.einsum("nk,nkp,nkq->pq", v, tested, tested)
    if nuisance is not None:
        a11 = np.einsum("nk,nkp,nkq->pq", v, nuisance, nuisance)
        a12 = np.einsum("nk,nkp,nkq->pq", v, nuisance, tested)
        proj = np.linalg.lstsq(a11, a12, rcond=None)[0]
        u = u - np.einsum("nk,nkp->np", r, nuisance) @ proj
        info = info - a12.T @ proj
    q = u.shape[1]
    per_patient = np.column_stack([np.bincount(codes, weights=u[:, j]) for j in range(q)])
    total = per_patient.sum(axis=0)
    info_inv = np.linalg.pinv(info)
    m = info_inv @ (per_patient.T @ per_patient)
    t1, t2 = float(np.trace(m)), float(np.trace(m @ m))
    if not (t1 > 0 and t2 > 0):  # no information or no variation: nothing to test
        return 0.0, q, 0.0, 1.0
    c, nu = t2 / t1, t1 * t1 / t2
    x = float(total @ info_inv @ total) / c
    return x, q, nu, float(stats.chi2.sf(x, nu))


def calibration_tests(z: np.ndarray, delta: float, eta: np.ndarray, labels: np.ndarray, w: np.ndarray,
                      codes: np.ndarray) -> dict[str, float]:
    """The three tests of the rule (``clustered_score_test``), as ``score_*`` (the scaled
    statistic), ``df_*`` (terms tested), ``nu_*`` (its Satterthwaite degrees of freedom) and
    ``p_*`` for ``ii_vs_none``, ``ii_vs_i`` and ``i_vs_none``.

    ``z``: the parent's log-odds (n, K); ``delta``: the fitted common shift (``best_shift``);
    ``eta``: the scores (n,). (ii) adds a term per horizon and one in ``eta`` to ``z`` (for a
    parent ``a_t + b * eta`` that is every a_t and b refitted), (i) one common term."""
    n, K = labels.shape
    horizon = np.broadcast_to(np.eye(K)[None, :, :], (n, K, K))
    score = np.broadcast_to(np.asarray(eta, dtype="float64")[:, None, None], (n, K, 1))
    ones = np.ones((n, K, 1))
    out: dict[str, float] = {}
    for name, z, tested, nuisance in (
            ("ii_vs_none", z, np.concatenate([horizon, score], axis=2), None),
            ("ii_vs_i", z + delta, np.concatenate([horizon[:, :, 1:], score], axis=2), ones),
            ("i_vs_none", z, ones, None)):
        x, df, nu, p = clustered_score_test(z, labels, w, tested, nuisance, codes)
        out.update({f"score_{name}": x, f"df_{name}": float(df), f"nu_{name}": nu, f"p_{name}": p})
    return out


def decide(cal: HorizonCalibration, eta: np.ndarray, time_days: np.ndarray, status: np.ndarray,
           headline_months: float, alpha: float = ALPHA, *, patients) -> Decision:
    """Apply the rule (module docstring) to the scores ``eta`` of the site's procedures;
    ``patients``: the patient id of each (the tests' clusters; None: each its own patient)."""
    horizons = cal.horizons_months
    labels, w = local_targets(time_days, status, horizons)
    events = int(((status == 1) & (time_days <= horizon_days(headline_months))).sum())
    n = len(eta)
    codes = patient_codes(patients, n)
    z = cal.logit(eta)
    delta = best_shift(z, labels, w)
    cal_i = _shift(cal, delta)
    cal_ii = HorizonCalibration.fit(eta, labels, w, horizons)
    tests = calibration_tests(z, delta, eta, labels, w, codes)
    st = {"delta": delta, "slope_refit": cal_ii.slope, "slope_parent": cal.slope,
          "n_patients": float(codes.max() + 1 if n else 0), **tests}
    choice, note = closed_test(tests, events, alpha)
    return Decision(choice, {"none": cal, "intercept": cal_i, "intercept_slope": cal_ii}[choice], n, events, st, note)


def closed_test(tests: dict[str, float], events: int, alpha: float = ALPHA) -> tuple[str, str]:
    """(choice, note) of the closed test (module docstring) from the p-values ``p_ii_vs_none``,
    ``p_ii_vs_i``, ``p_i_vs_none`` of ``tests`` and the local ``events`` by the headline."""
    p_ii_none, p_ii_i, p_i_none = tests["p_ii_vs_none"], tests["p_ii_vs_i"], tests["p_i_vs_none"]
    if events < MIN_EVENTS_INTERCEPT:
        return "none", f"{events} local events < {MIN_EVENTS_INTERCEPT}: no update"
    slope_ok = events >= MIN_EVENTS_SLOPE
    if slope_ok and p_ii_none >= alpha:
        return "none", f"(ii) vs none p={p_ii_none:.3g} >= {alpha}: no update"
    if slope_ok and p_ii_i < alpha:
        return "intercept_slope", f"(ii) vs (i) p={p_ii_i:.3g} < {alpha}"
    if p_i_none < alpha:
        why = "" if slope_ok else f" ((ii) not considered: {events} events < {MIN_EVENTS_SLOPE})"
        return "intercept", f"(i) vs none p={p_i_none:.3g} < {alpha}{why}"
    return "none", f"(i) vs none p={p_i_none:.3g} >= {alpha}: no update"
