"""Held-out test split and cross-validation folds: stratified by the label, grouped by
patient (all levels of one patient fall on the same side), seeded.

The folds are those of scikit-learn's ``StratifiedGroupKFold(n_splits, shuffle=True,
random_state=seed)``, computed by ``_stratified_group_folds``: the same greedy assignment
with the same arithmetic, but each group's candidate folds scored in one array operation
instead of one ``np.std`` call per fold (scikit-learn's loop took 18 s per outcome at
10,000 procedures, more than fitting a logistic candidate; identical folds are checked
against scikit-learn in ``tests/training/test_split.py``).
"""

from __future__ import annotations

import numpy as np


def _stratified_group_folds(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    """Test positions of each fold of ``StratifiedGroupKFold(n_splits, shuffle=True,
    random_state=seed)`` (scikit-learn 1.x ``_iter_test_indices``): groups shuffled by
    ``RandomState(seed)``, taken by decreasing spread of their class counts (stable), each
    put in the fold whose per-class share spread (mean over classes of the SD over folds of
    count / class total) is smallest with it, ties (``np.isclose``) to the fold with fewer
    rows. Candidate folds are scored together: the standard deviation over axis 1 of the
    (fold x fold x class) array adds the folds in the same order as scikit-learn's per-fold
    ``np.std`` over axis 0, with the same operations, so the scores, and the choices, are
    the same to the bit."""
    _, y_inv, y_cnt = np.unique(y, return_inverse=True, return_counts=True)
    _, groups_inv, groups_cnt = np.unique(groups, return_inverse=True, return_counts=True)
    n_groups, n_classes = len(groups_cnt), len(y_cnt)
    per_group = np.zeros((n_groups, n_classes))
    np.add.at(per_group, (groups_inv, y_inv), 1)
    perm = np.arange(n_groups)
    np.random.RandomState(seed).shuffle(perm)
    per_group = per_group[perm]
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(n_groups)
    groups_inv = inv_perm[groups_inv]
    per_fold = np.zeros((n_splits, n_classes))
    fold_of = np.empty(n_groups, dtype=int)
    total = y_cnt.reshape(1, -1)
    diagonal = np.arange(n_splits)
    for g in np.argsort(-np.std(per_group, axis=1), kind="stable"):
        candidates = np.broadcast_to(per_fold, (n_splits, n_splits, n_classes)).copy()
        candidates[diagonal, diagonal] += per_group[g]
        shares = candidates / total
        # np.std(shares, axis=1).mean(axis=1), spelt out as numpy computes it (fewer calls).
        deviation = shares - np.add.reduce(shares, axis=1, keepdims=True) / n_splits
        spread = np.sqrt(np.add.reduce(deviation * deviation, axis=1) / n_splits)
        scores = (np.add.reduce(spread, axis=1) / n_classes).tolist()
        sizes = np.add.reduce(per_fold, axis=1).tolist()
        best, best_score, best_size = 0, np.inf, np.inf
        for i in range(n_splits):
            # np.isclose(scores[i], best_score) with its defaults (an infinite score is close only to itself).
            close = best_score != np.inf and abs(scores[i] - best_score) <= 1e-8 + 1e-5 * abs(best_score)
            if scores[i] < best_score or (close and sizes[i] < best_size):
                best, best_score, best_size = i, scores[i], sizes[i]
        per_fold[best] += per_group[g]
        fold_of[g] = best
    row_fold = fold_of[groups_inv]
    return [np.flatnonzero(row_fold == k) for k in range(n_splits)]


def _group_folds(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    y, groups = np.asarray(y), np.asarray(groups)
    if np.all(n_splits > np.unique(y, return_counts=True)[1]):
        raise ValueError(f"n_splits={n_splits} cannot be greater than the number of members in each class.")
    if n_splits > len(np.unique(groups)):
        raise ValueError(f"Cannot have number of splits n_splits={n_splits} greater than the number of groups: "
                         f"{len(np.unique(groups))}.")
    rows = np.arange(len(y))
    return [(np.setdiff1d(rows, test), test) for test in _stratified_group_folds(y, groups, n_splits, seed)]


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
