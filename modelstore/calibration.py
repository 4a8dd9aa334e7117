"""Calibration: from one score per record to a calibrated risk curve over the horizons.

Each candidate gives a score ``eta(x)`` (its raw log-odds of the event by the headline
horizon). ``HorizonCalibration`` maps it to the cumulative incidence at every horizon t:

    logit F(t | x) = a_t + b * eta(x),   b > 0,   a_t non-decreasing in t.

Why this form:

- **curves never fall**: with one slope ``b`` and intercepts that do not decrease, F(t|x)
  is non-decreasing in t for every record, by construction;
- **each horizon is calibrated**: ``a_t`` is the calibration-in-the-large at t, ``b`` the
  common calibration slope (Platt scaling, stacked over horizons);
- **SHAP stays exact**: at every horizon the map is affine in the log-odds, so
  contributions are multiplied by ``b`` and the base becomes ``a_t + b * E[eta]``;
- **monotone constraints keep their direction** because ``b > 0``;
- three to five parameters need few events.

It is fitted by maximum likelihood of the binary crude labels at all horizons stacked,
each row weighted by its inverse probability of censoring at that horizon
(``training.competing_risks.ipcw_weights``; rows censored before a horizon weigh 0 there),
on out-of-fold scores of the training part (each row scored by a model that did not see
it), never on the test set. The proportional-odds assumption behind one common slope is
checked at each horizon by the evaluation (calibration slope per horizon).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

#: Lower bound of the common slope: strictly positive keeps the clinical direction of
#: every monotone constraint.
MIN_SLOPE = 1e-6


def fit_logistic_1d(x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> tuple[float, float]:
    """Weighted maximum-likelihood ``(slope, intercept)`` of ``P(y=1) = expit(slope * x + intercept)``
    (Platt scaling). Rows with weight 0 are ignored."""
    cal = HorizonCalibration.fit(np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64")[:, None],
                                 np.ones((len(x), 1)) if weight is None else np.asarray(weight, dtype="float64")[:, None],
                                 (0.0,), min_slope=-np.inf)
    return cal.slope, cal.intercepts[0]


@dataclass(frozen=True)
class HorizonCalibration:
    """``logit F(t) = intercepts[k] + slope * eta`` for ``horizons_months[k]`` (ascending)."""

    horizons_months: tuple[float, ...]
    intercepts: tuple[float, ...]
    slope: float

    @classmethod
    def fit(cls, eta: np.ndarray, labels: np.ndarray, weights: np.ndarray, horizons_months,
            min_slope: float = MIN_SLOPE) -> "HorizonCalibration":
        """Fit on scores ``eta`` (n,), crude labels ``labels`` (n, K; NaN where unknown) and
        IPCW ``weights`` (n, K; 0 where unknown) at ``horizons_months`` (K, ascending).

        Convex weighted likelihood over (b, a_1, d_2..d_K) with a_k = a_1 + d_2 + ... + d_k,
        d >= 0 and b >= ``min_slope``: box constraints, solved by L-BFGS-B.
        """
        eta = np.asarray(eta, dtype="float64")
        w = np.where(np.isfinite(labels), np.asarray(weights, dtype="float64"), 0.0)
        y = np.nan_to_num(np.asarray(labels, dtype="float64"))
        K = w.shape[1]
        if list(horizons_months) != sorted(horizons_months):
            raise ValueError(f"horizons must be ascending, got {horizons_months}")
        total = w.sum()
        if total <= 0:
            raise ValueError("no row with a known label and positive weight")
        rate = np.clip((w * y).sum(axis=0) / np.maximum(w.sum(axis=0), 1e-12), 1e-6, 1 - 1e-6)
        start_a = np.maximum.accumulate(np.log(rate) - np.log1p(-rate) - eta.mean())
        theta0 = np.r_[1.0 if min_slope <= 1.0 else min_slope, start_a[0], np.diff(start_a)]
        up = np.tril(np.ones((K, K)))  # a = up @ [a_1, d_2..d_K]

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            b, a = theta[0], up @ theta[1:]
            z = a[None, :] + b * eta[:, None]
            nll = np.sum(w * (np.logaddexp(0.0, z) - y * z)) / total
            g = w * (1.0 / (1.0 + np.exp(-z)) - y) / total
            grad_a = g.sum(axis=0)
            return nll, np.r_[np.sum(g * eta[:, None]), up.T @ grad_a]

        bounds = [(None if not np.isfinite(min_slope) else min_slope, None), (None, None)] + [(0.0, None)] * (K - 1)
        res = minimize(loss, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 500, "ftol": 1e-13, "gtol": 1e-9})
        a = up @ res.x[1:]
        return cls(tuple(float(h) for h in horizons_months), tuple(float(v) for v in a), float(res.x[0]))

    def logit(self, eta: np.ndarray) -> np.ndarray:
        """Calibrated log-odds (n, K), one column per horizon."""
        return np.asarray(self.intercepts)[None, :] + self.slope * np.asarray(eta, dtype="float64")[:, None]

    def index(self, horizon_months: float) -> int:
        """Position of ``horizon_months`` among the fitted horizons (ValueError if absent)."""
        for k, h in enumerate(self.horizons_months):
            if abs(h - float(horizon_months)) < 1e-9:
                return k
        raise ValueError(f"no calibration for {horizon_months:g} months; this model has "
                         f"{', '.join(f'{h:g}' for h in self.horizons_months)} months")

    def to_dict(self) -> dict:
        return {"horizons_months": list(self.horizons_months), "intercepts": list(self.intercepts), "slope": self.slope}

    @classmethod
    def from_dict(cls, d: dict) -> "HorizonCalibration":
        return cls(tuple(float(h) for h in d["horizons_months"]), tuple(float(v) for v in d["intercepts"]), float(d["slope"]))
