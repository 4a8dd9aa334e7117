"""Held-out test split and cross-validation folds: stratified by the label, grouped by
patient (all levels of one patient fall on the same side), seeded."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def _group_folds(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in splitter.split(np.zeros(len(y)), y, groups)]


def train_test_split_grouped(y: np.ndarray, groups: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, test) of a held-out test split of about ``test_size`` of the rows.

    Uses the first fold of ``StratifiedGroupKFold(round(1 / test_size))`` so the test set
    keeps the event rate and no patient is on both sides.
    """
    if not 0.05 <= test_size <= 0.5:
        raise ValueError(f"test_size must be in [0.05, 0.5], got {test_size}")
    n_splits = max(2, int(round(1.0 / test_size)))
    train, test = _group_folds(np.asarray(y), np.asarray(groups), n_splits, seed)[0]
    return np.sort(train), np.sort(test)


def cv_folds(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` (train, validation) position pairs, stratified and grouped by patient."""
    return _group_folds(np.asarray(y), np.asarray(groups), n_splits, seed)


def fold_ids(n: int, folds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Fold number of each row (as a validation row)."""
    out = np.full(n, -1, dtype=int)
    for k, (_, val) in enumerate(folds):
        out[val] = k
    return out
