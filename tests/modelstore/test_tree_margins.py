"""``modelstore.tree_margins.BlockMargins``: the C-API path gives bit for bit the sums of
XGBoost's public ``inplace_predict`` (zero base margin, 25-tree blocks), whatever the input
layout, and survives copying and pickling."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import xgboost as xgb

from modelstore.tree_margins import BlockMargins


@pytest.fixture(scope="module")
def weighted_booster():
    """A booster whose base score is not 0.5 (weighted, unbalanced labels), with NaNs."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2000, 12))
    X[rng.random(X.shape) < 0.15] = np.nan
    y = (np.nan_to_num(X[:, 0]) + rng.normal(size=2000) > 1.2).astype(int)
    w = rng.uniform(0.5, 3.0, size=2000)
    model = xgb.XGBClassifier(n_estimators=110, max_depth=4, learning_rate=0.1, n_jobs=1, random_state=3)
    booster = model.fit(X, y, sample_weight=w).get_booster()
    return booster, X.astype("float32")


def test_c_api_sums_equal_inplace_predict_bit_for_bit(weighted_booster):
    booster, X = weighted_booster
    margins = BlockMargins(booster, 25)
    assert margins._c is not None, "the C-API path was not taken: this test would compare the fallback with itself"
    assert margins.blocks == [(0, 25), (25, 50), (50, 75), (75, 100), (100, 110)]
    for rows in (X[:1], X[:7], X):
        np.testing.assert_array_equal(margins(rows), margins.reference(rows))
    # And they are XGBoost's margins: with the base margin, the one-call margin to float32 rounding.
    base = float(booster.inplace_predict(X[:1], predict_type="margin", iteration_range=(0, 1))[0]
                 - booster.inplace_predict(X[:1], predict_type="margin", iteration_range=(0, 1),
                                           base_margin=np.zeros(1, "float32"))[0])
    assert abs(base) > 1e-3  # the base score is not 0.5, so the zero-base copy matters
    one_call = booster.inplace_predict(X, predict_type="margin", missing=np.nan).astype("float64")
    np.testing.assert_allclose(base + margins(X), one_call, rtol=0, atol=1e-5)


def test_any_input_layout_gives_the_same_sums(weighted_booster):
    booster, X = weighted_booster
    margins = BlockMargins(booster, 25)
    expected = margins.reference(X[::3])
    np.testing.assert_array_equal(margins(X[::3]), expected)  # a strided view
    np.testing.assert_array_equal(margins(np.asfortranarray(X[::3])), expected)
    np.testing.assert_array_equal(margins(X[::3].astype("float64")), expected)
    assert margins(X[:0]).shape == (0,)


def test_copies_and_pickles_rebuild_the_c_path(weighted_booster):
    booster, X = weighted_booster
    margins = BlockMargins(booster, 25)
    for clone in (copy.deepcopy(margins), pickle.loads(pickle.dumps(margins))):
        assert clone._c is not None
        np.testing.assert_array_equal(clone(X[:50]), margins(X[:50]))


def test_threads_are_set_on_the_booster_and_on_the_copy_that_predicts(weighted_booster):
    import json

    booster, X = weighted_booster
    margins = BlockMargins(booster.copy(), 25)
    before = margins(X[:20])
    for n in (1, 2):
        margins.set_threads(n)
        assert json.loads(margins._zero_base.save_config())["learner"]["generic_param"]["nthread"] == str(n)
        np.testing.assert_array_equal(margins(X[:20]), before)
