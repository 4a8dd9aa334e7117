"""The censoring model behind the training weights: marginal, or given the patient.

The crude labels are weighted 1 / G(min(T, t)-) (``training.competing_risks``). G is the
probability of still being under follow-up:

- ``km`` (the default): the Kaplan-Meier of censoring, one curve for everyone. Unbiased
  when censoring is independent of the outcome: the data cut, random loss to follow-up,
  and the follow-up of an export that ascertained deaths and fractures until death or the
  data cut (only the data cut censors there).
- ``cox``: a Cox model of the censoring hazard on the patient's clinical covariates
  (``CENSORING_COVARIATES``: age, sex, BMI, CKD, glucocorticoids, diabetes, earlier
  fractures, sarcopenia; Breslow baseline, statsmodels ``PHReg``), so that a patient the
  clinic loses more often (frail patients move to care homes) weighs for the patients
  like them who were lost. It assumes censoring independent of the outcome *given these
  covariates*; it cannot repair censoring driven by the coming death itself (a last
  visit before a registry death: there the export must state how far fractures were
  ascertained, ``features.ascertainment``).

``bench/bench_registry_deaths.py`` measures what each costs (``docs/estimand.md``). The
evaluation metrics (``training.time_metrics``) and the site updates keep the marginal G.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.duration.hazard_regression import PHReg

from training.competing_risks import CENSORED, _as_arrays, censoring_survival

CENSORING_MODELS = ("km", "cox")
#: Pre-operative clinical covariates of the Cox censoring model: what makes a patient seen
#: less often or lost (age, frailty, comorbidity), in both feature sets.
CENSORING_COVARIATES = ("age_years", "sex_female", "bmi_kg_m2", "chronic_kidney_disease", "glucocorticoids_long_term",
                        "type2_diabetes", "prior_vertebral_fractures_n", "sarcopenia")
#: Censorings are put this many days after events and deaths of the same time (the tie
#: rule of ``competing_risks.censoring_survival``: those leave the censoring risk set first).
_TIE_SHIFT_DAYS = 1e-6


class CovariateDesign:
    """The censoring covariates as a numeric matrix: missing values at the training median
    with a 0/1 missing indicator, standardised with the training rows' mean and SD;
    constant columns dropped. ``fit`` on the training rows, ``transform`` any rows."""

    def fit(self, X: pd.DataFrame) -> CovariateDesign:
        present = [c for c in CENSORING_COVARIATES if c in X.columns]
        Z = X[present].astype("float64")
        self.medians_ = Z.median()
        self.with_missing_ = [c for c in present if Z[c].isna().any() and Z[c].notna().any()]
        wide = self._wide(Z)
        self.mean_, self.sd_ = wide.mean(), wide.std()
        self.columns_ = [c for c in wide.columns if np.isfinite(self.sd_[c]) and self.sd_[c] > 0]
        return self

    def _wide(self, Z: pd.DataFrame) -> pd.DataFrame:
        cols = {f"{c}_missing": Z[c].isna().astype("float64") for c in self.with_missing_}
        cols.update({c: Z[c].fillna(self.medians_[c]) for c in self.medians_.index if pd.notna(self.medians_[c])})
        return pd.DataFrame(cols, index=Z.index)

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        wide = self._wide(X[list(self.medians_.index)].astype("float64"))
        return ((wide[self.columns_] - self.mean_[self.columns_]) / self.sd_[self.columns_]).to_numpy()


class CoxCensoring:
    """G(t | z) = exp(-H0(t) exp(z'beta)) from a Cox model of the censoring hazard."""

    def fit(self, time, status, X: pd.DataFrame, until: float | None = None) -> CoxCensoring:
        """``until``: the last time G is needed (the longest horizon): censoring after it is
        not modelled, so the data cut's mass censoring beyond the horizons (not
        proportional in anything) cannot flatten the covariates' effects."""
        t, s, _ = _as_arrays(time, status)
        self.design_ = CovariateDesign().fit(X)
        Z = self.design_.transform(X)
        censored = s == CENSORED
        if until is not None:
            censored = censored & (t <= until)
            t = np.minimum(t, until + 1.0)
        self.km_ = None
        if Z.shape[1] == 0 or not censored.any():  # nothing to model: the marginal Kaplan-Meier is G
            self.km_ = censoring_survival(t, np.where(censored, CENSORED, 1))
            return self
        shifted = t + _TIE_SHIFT_DAYS * censored
        res = PHReg(shifted, Z, status=censored.astype(int), ties="breslow").fit()
        self.beta_ = np.asarray(res.params, dtype="float64")
        self.times_, self.cumhaz_ = _breslow(shifted, censored, Z @ self.beta_)
        return self

    def survival_for(self, X: pd.DataFrame):
        """``G(at, before=False)`` for the rows of ``X``: ``at`` holds one time per row (the
        call ``competing_risks.ipcw_weights`` makes); ``before`` gives the left limit."""
        n = len(X)
        risk = None if self.km_ is not None else np.exp(self.design_.transform(X) @ self.beta_)

        def G(at, before: bool = False) -> np.ndarray:
            at_arr = np.asarray(at, dtype="float64")
            if at_arr.shape != (n,):
                raise ValueError(f"a covariate censoring survival needs one time per row ({n}), got {at_arr.shape}")
            if risk is None:
                return self.km_(at_arr, before=before)
            # G(at) counts the censorings at ``at`` (shifted just after it), G(at-) does not.
            idx = np.searchsorted(self.times_, at_arr if before else at_arr + _TIE_SHIFT_DAYS,
                                  side="left" if before else "right") - 1
            return np.exp(-np.where(idx >= 0, self.cumhaz_[np.maximum(idx, 0)], 0.0) * risk)

        return G


def _breslow(time: np.ndarray, event: np.ndarray, linear_predictor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breslow's baseline cumulative hazard at each distinct event time, the jump at that
    time included (statsmodels' ``baseline_cumulative_hazard`` reports it without)."""
    order = np.argsort(time, kind="stable")
    t, d, r = time[order], event[order].astype("float64"), np.exp(linear_predictor[order])
    at_risk = np.cumsum(r[::-1])[::-1]  # sum of exp(lp) over times >= t_i
    uniq, first = np.unique(t, return_index=True)
    deaths = np.add.reduceat(d, first)
    jumps = deaths / at_risk[first]
    keep = deaths > 0
    return uniq[keep], np.cumsum(jumps[keep])


def censoring_model(kind: str, time, status, X: pd.DataFrame, rows: np.ndarray, until: float | None = None):
    """G fitted on ``rows`` (the training part) of ``time``/``status``/``X``, for every row:
    the Kaplan-Meier (``km``) or the Cox model (``cox``, censoring modelled ``until`` the
    longest horizon) bound to the rows of ``X``."""
    if kind == "km":
        return censoring_survival(np.asarray(time)[rows], np.asarray(status)[rows])
    if kind == "cox":
        return CoxCensoring().fit(np.asarray(time)[rows], np.asarray(status)[rows], X.iloc[rows], until).survival_for(X)
    raise ValueError(f"censoring model must be one of {CENSORING_MODELS}, got {kind!r}")
