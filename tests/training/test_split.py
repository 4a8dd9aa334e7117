"""The grouped, stratified folds are scikit-learn's ``StratifiedGroupKFold`` folds, computed
faster (``training.split``): the same test positions on random problems with ties of every
kind (small integer class counts make many candidate folds score alike), and the same
refusals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from training.split import _group_folds, cv_folds, train_test_split_grouped


def _sklearn(y, groups, n_splits, seed):
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in splitter.split(np.zeros(len(y)), y, groups)]


@pytest.mark.parametrize("case", range(60))
def test_folds_equal_scikit_learns(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(20, 600))
    n_groups = int(rng.integers(6, max(7, n // int(rng.integers(1, 4)))))
    groups = np.array([f"P{g:05d}" for g in rng.integers(0, n_groups, n)])
    n_classes = int(rng.integers(2, 4))
    y = rng.choice(n_classes, size=n, p=rng.dirichlet(np.ones(n_classes) * 0.7))
    if np.bincount(y).min() < 1 or len(np.unique(y)) < 2:
        y[:2] = [0, 1]
    n_splits = int(rng.integers(2, 6))
    seed = int(rng.integers(0, 1000))
    if n_splits > len(np.unique(groups)):
        return
    ours, theirs = _group_folds(y, groups, n_splits, seed), _sklearn(y, groups, n_splits, seed)
    assert len(ours) == len(theirs)
    for (tr_a, te_a), (tr_b, te_b) in zip(ours, theirs):
        assert np.array_equal(te_a, te_b) and np.array_equal(tr_a, tr_b)


def test_the_public_splits_are_scikit_learns_on_a_cohort_sized_problem():
    rng = np.random.default_rng(7)
    patients = np.repeat(np.arange(3000), rng.integers(1, 4, 3000))
    y = rng.choice(3, size=len(patients), p=[0.06, 0.84, 0.10])
    groups = patients.astype(str)
    train, test = train_test_split_grouped(y, groups, 0.2, seed=3)
    assert np.array_equal(test, _sklearn(y, groups, 5, 3)[0][1]) and np.array_equal(train, _sklearn(y, groups, 5, 3)[0][0])
    for (a, b), (c, d) in zip(cv_folds(y, groups, 4, seed=0), _sklearn(y, groups, 4, 0)):
        assert np.array_equal(a, c) and np.array_equal(b, d)


def test_refusals_follow_scikit_learn():
    with pytest.raises(ValueError, match="greater than the number of groups"):
        _group_folds(np.array([0, 1, 0, 1, 0, 1]), np.array(["a", "a", "b", "b", "a", "b"]), 3, 0)
    with pytest.raises(ValueError, match="number of members in each class"):
        _group_folds(np.array([0, 1, 0, 0]), np.array(["a", "b", "c", "d"]), 4, 0)
