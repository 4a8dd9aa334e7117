"""Option (iii) of a site update: the champion's score model refitted on the pooled data
(the version's training export plus the site's procedures), then calibrated to the site.

Pure: feature frames and follow-up arrays in, a fitted scorer, its calibration and the
held-out comparison out (``training.site_run`` reads the exports and registers).

**What is refitted.** The same model family and the same hyperparameters as the champion
(``RefractureModel.params``: no search, so the refit costs ``REFIT_FOLDS + 1`` fits), on
the crude labels at the headline horizon with IPCW weights, as ``training.fitting`` fits
it. The censoring survival G is fitted *per source* (training export, site): follow-up
habits differ between hospitals and each row's weight must reflect its own censoring.

**No site term.** A served model cannot know which hospital sent a request (the record
contract has no site field), so the pooled score model has no site indicator; the site's
baseline risk and the spread of its scores enter through the horizon calibration
(``modelstore.calibration``), fitted on the *site's* cross-fitted scores only, as training
fits it on the training part's out-of-fold scores. The result predicts for the site.

**Held-out comparison with the recalibrated champion.** The site's procedures are split
into ``REFIT_FOLDS`` folds grouped by patient. For fold j: the score model is refitted on
the whole training export plus the site's other folds and scores fold j (cross-fitted
scores ``oof``); fold j's calibrated log-odds come from a calibration fitted on the other
folds' cross-fitted scores (``training.fitting.cross_fitted_headline`` does the same in
training). The recalibrated champion gets the same treatment: its update (none, (i) or
(ii), the closed test's choice) is fitted on the other folds and applied to fold j. Each
procedure's loss is its IPCW-weighted log loss summed over the K horizons; the per-patient
sums of the difference (recalibrated minus refit) are tested by a one-sided paired z-test
(the log-score comparison of two non-nested models on held-out data, Vuong 1989: the refit
has many more parameters than a recalibration, so a likelihood ratio on the fitting data
would favour it; on held-out folds the extra parameters pay their own way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import stats

from features.labels import horizon_days
from modelstore.calibration import HorizonCalibration
from modelstore.candidates import make_scorer
from training.competing_risks import crude_label
from training.recalibrate import (MIN_EVENTS_REFIT, Decision, crossfit_logits, decide, local_targets, row_loss,
                                  with_refit)
from training.split import cv_folds, fold_ids

#: Folds of the site's procedures for the held-out comparison (each costs one refit).
REFIT_FOLDS = 3


@dataclass
class RefitResult:
    """The (iii) model's parts and its held-out comparison with the recalibrated champion.

    ``scorer``: fitted on every pooled row; ``calibration``: fitted on the site's
    cross-fitted scores; ``stats``: ``refit_*`` figures (log-likelihood gain per horizon
    on held-out folds, the paired z and one-sided p, rows and events used)."""

    scorer: Any
    calibration: HorizonCalibration
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def p_value(self) -> float:
        return self.stats["refit_p_vs_recalibrated"]


def local_folds(t: np.ndarray, s: np.ndarray, groups: np.ndarray, headline_months: float, seed: int,
                n_folds: int = REFIT_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds of the site's rows, stratified by the headline status and grouped by patient."""
    y = crude_label(t, s, horizon_days(headline_months))
    strata = np.where(np.isnan(y), 2, y).astype(int)
    return cv_folds(strata, groups, n_folds, seed)


def paired_test(loss_a: np.ndarray, loss_b: np.ndarray, groups: np.ndarray) -> tuple[float, float, float]:
    """One-sided paired z-test that ``b`` has a lower held-out loss than ``a``: the
    per-row differences are summed per patient (levels of one patient are not independent).
    Returns (total difference, z, p)."""
    d = pd.Series(loss_a - loss_b).groupby(np.asarray(groups)).sum().to_numpy()
    total = float(d.sum())
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    if sd <= 0:
        return total, 0.0, 1.0
    z = float(d.mean() / (sd / np.sqrt(len(d))))
    return total, z, float(stats.norm.sf(z))


def pooled_refit(model_type: str, params: dict[str, Any], outcome: str,
                 X_pool: pd.DataFrame, t_pool: np.ndarray, s_pool: np.ndarray,
                 X_site: pd.DataFrame, t_site: np.ndarray, s_site: np.ndarray, groups_site: np.ndarray,
                 horizons_months, headline_months: float,
                 recalibrated: Callable[[np.ndarray], np.ndarray],
                 seed: int = 0, n_jobs: int = 2, n_folds: int = REFIT_FOLDS) -> RefitResult:
    """Refit ``model_type`` with ``params`` on pool + site and compare it on held-out site folds.

    ``X_*``: feature frames (same columns, the champion's ``feature_names``); ``t_*`` follow-up
    in days, ``s_*`` status (0 censored, 1 event, 2 death first); ``groups_site`` patient ids
    of the site's rows. ``recalibrated(train_mask)`` returns the recalibrated champion's
    calibrated log-odds (n_site, K) with its update fitted on the site rows where
    ``train_mask`` is True (``training.recalibrate.crossfit_logits``).
    """
    horizons = tuple(float(h) for h in horizons_months)
    k = horizons.index(float(headline_months))
    lab_p, w_p = local_targets(t_pool, s_pool, horizons)
    lab_s, w_s = local_targets(t_site, s_site, horizons)
    yp, wp = np.nan_to_num(lab_p[:, k]), w_p[:, k]
    ys, ws = np.nan_to_num(lab_s[:, k]), w_s[:, k]
    keep_p = wp > 0
    Xp, ypk, wpk = X_pool[keep_p], yp[keep_p], wp[keep_p]

    def fit(site_rows: np.ndarray):
        rows = site_rows[ws[site_rows] > 0]
        X = pd.concat([Xp, X_site.iloc[rows]], ignore_index=True)
        return make_scorer(model_type, params, outcome, seed, n_jobs).fit(
            X, np.r_[ypk, ys[rows]], sample_weight=np.r_[wpk, ws[rows]])

    folds = local_folds(t_site, s_site, groups_site, headline_months, seed, n_folds)
    ids = fold_ids(len(t_site), folds)
    oof = np.full(len(t_site), np.nan)
    for train, val in folds:
        oof[val] = fit(train).raw_logit(X_site.iloc[val])
    z_refit = np.empty((len(t_site), len(horizons)))
    z_recal = np.empty_like(z_refit)
    for j in range(len(folds)):
        m = ids == j
        cal = HorizonCalibration.fit(oof[~m], lab_s[~m], w_s[~m], horizons)
        z_refit[m] = cal.logit(oof[m])
        z_recal[m] = recalibrated(~m)[m]
    loss_refit, loss_recal = row_loss(z_refit, lab_s, w_s), row_loss(z_recal, lab_s, w_s)
    total, z, p = paired_test(loss_recal, loss_refit, groups_site)
    scorer = fit(np.arange(len(t_site)))
    calibration = HorizonCalibration.fit(oof, lab_s, w_s, horizons)
    K = len(horizons)
    st = {"refit_loglik_gain_per_horizon": total / K, "refit_z": z, "refit_p_vs_recalibrated": p,
          "refit_heldout_nll_refit": float(loss_refit.sum() / K), "refit_heldout_nll_recalibrated": float(loss_recal.sum() / K),
          "refit_pooled_rows": float(keep_p.sum()), "refit_site_rows": float((ws > 0).sum()),
          "refit_pooled_events": float(((s_pool == 1) & (t_pool <= horizon_days(headline_months))).sum()),
          "refit_folds": float(len(folds))}
    return RefitResult(scorer, calibration, st)


def decide_with_pool(model_type: str, params: dict[str, Any], outcome: str, calibration: HorizonCalibration,
                     eta_site: np.ndarray, X_site: pd.DataFrame, t_site: np.ndarray, s_site: np.ndarray,
                     groups_site: np.ndarray, headline_months: float,
                     pool: tuple[pd.DataFrame, np.ndarray, np.ndarray] | None, pool_note: str = "",
                     seed: int = 0, n_jobs: int = 2) -> Decision:
    """The whole rule of ``training.recalibrate`` (closed test, then step 4) for one champion.

    ``calibration``/``eta_site``: the champion's calibration and its scores of the site's
    rows; ``pool``: (features, time, status) of the training export, or None when it is not
    at hand (``pool_note`` says why). Returns a ``training.recalibrate.Decision``."""
    d = decide(calibration, eta_site, t_site, s_site, headline_months, patients=groups_site)
    if d.events < MIN_EVENTS_REFIT:
        d.note += f"; (iii) not considered: {d.events} local events < {MIN_EVENTS_REFIT}"
        return d
    if pool is None:
        d.note += f"; (iii) not considered: {pool_note or 'no training export'}"
        return d
    X_pool, t_pool, s_pool = pool
    refit = pooled_refit(model_type, params, outcome, X_pool, t_pool, s_pool, X_site, t_site, s_site, groups_site,
                         calibration.horizons_months, headline_months,
                         crossfit_logits(d.choice, calibration, eta_site, t_site, s_site), seed=seed, n_jobs=n_jobs)
    return with_refit(d, refit)
