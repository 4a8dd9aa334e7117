"""Calibration: Platt scaling of the log-odds, fitted on out-of-fold predictions.

Why Platt (``logit' = a * logit + b``) rather than temperature scaling (``b = 0``) or
isotonic regression:

- it is a monotone *affine* map of the log-odds, so SHAP contributions stay additive on
  the calibrated scale (contributions scale by ``a``, the base becomes ``a * base + b``);
  isotonic regression would break that;
- unlike temperature scaling it also corrects the intercept: random forests and
  penalised models are typically both over/under-confident (slope) and shifted
  (calibration-in-the-large), e.g. when the event is rare;
- two parameters need few events; it is fitted on out-of-fold raw scores of the
  training part (each row scored by a model that did not see it), never on the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def fit_logistic_1d(x: np.ndarray, y: np.ndarray, offset: np.ndarray | None = None,
                    slope: bool = True, max_iter: int = 50) -> tuple[float, float]:
    """Maximum-likelihood ``(slope, intercept)`` of ``P(y=1) = expit(slope * x + intercept + offset)``.

    With ``slope=False`` only the intercept is fitted (slope fixed at 1 is then reported,
    as ``x`` is expected to enter through ``offset``). Newton-Raphson in float64; a tiny
    ridge (1e-8) keeps it finite under separation.
    """
    x = np.asarray(x, dtype="float64")
    y = np.asarray(y, dtype="float64")
    off = np.zeros_like(x) if offset is None else np.asarray(offset, dtype="float64")
    design = np.column_stack([x, np.ones_like(x)]) if slope else np.ones((len(x), 1))
    ridge = 1e-8

    def loglik(beta: np.ndarray) -> float:
        eta = design @ beta + off
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)) - 0.5 * ridge * beta @ beta)

    # Start from the null model (intercept = observed log-odds) and take Newton steps with
    # step halving: plain Newton can diverge when the start is far from the optimum.
    beta = np.zeros(design.shape[1])
    ybar = np.clip(y.mean(), 1e-6, 1 - 1e-6)
    beta[-1] = np.log(ybar / (1 - ybar)) - (off.mean() if offset is not None else 0.0)
    current = loglik(beta)
    for _ in range(max_iter):
        eta = design @ beta + off
        p = 1.0 / (1.0 + np.exp(-eta))
        w = p * (1 - p)
        grad = design.T @ (y - p) - ridge * beta
        hess = (design * w[:, None]).T @ design + ridge * np.eye(design.shape[1])
        step = np.linalg.solve(hess, grad)
        for _ in range(30):
            candidate = loglik(beta + step)
            if candidate >= current - 1e-12:
                break
            step = step / 2
        beta = beta + step
        current = loglik(beta)
        if np.max(np.abs(step)) < 1e-10:
            break
    if slope:
        return float(beta[0]), float(beta[1])
    return 1.0, float(beta[0])


@dataclass(frozen=True)
class Platt:
    """Affine recalibration of log-odds: ``calibrated = slope * raw + intercept``."""

    slope: float = 1.0
    intercept: float = 0.0

    @classmethod
    def fit(cls, raw_logit: np.ndarray, y: np.ndarray) -> "Platt":
        """Fit on out-of-fold raw log-odds ``raw_logit`` and 0/1 labels ``y``."""
        a, b = fit_logistic_1d(raw_logit, y)
        return cls(slope=a, intercept=b)

    def __call__(self, raw_logit: np.ndarray) -> np.ndarray:
        return self.slope * np.asarray(raw_logit, dtype="float64") + self.intercept
