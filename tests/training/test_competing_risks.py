"""Censoring-aware absolute-risk estimates on hand-computed examples."""

import numpy as np
import pytest

from training.competing_risks import aalen_johansen, censoring_survival, crude_label, ipcw_weights

# times 1..5 with: event, censored, death, event, censored
TIME = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
STATUS = np.array([1, 0, 2, 1, 0])


def test_aalen_johansen_by_hand():
    # t=1: 1/5 = 0.2; t=3 death: S = 4/5 * 2/3 = 8/15; t=4: + 8/15 * 1/2 = 4/15.
    cif = aalen_johansen(TIME, STATUS, [0.5, 1, 3.5, 4, 10])
    np.testing.assert_allclose(cif, [0, 0.2, 0.2, 0.2 + 4 / 15, 0.2 + 4 / 15])
    np.testing.assert_allclose(aalen_johansen(TIME, STATUS, [4], cause=2), [4 / 5 * 1 / 3])


def test_censoring_survival_by_hand():
    G = censoring_survival(TIME, STATUS)
    np.testing.assert_allclose(G(np.array([1.9, 2.0, 4.9, 5.0])), [1, 3 / 4, 3 / 4, 0])
    np.testing.assert_allclose(G(np.array([2.0]), before=True), [1])


def test_ipcw_weighted_label_equals_aalen_johansen():
    w = ipcw_weights(TIME, STATUS, 4.5)
    np.testing.assert_allclose(w, [1, 0, 4 / 3, 4 / 3, 4 / 3])
    y = crude_label(TIME, STATUS, 4.5)
    assert np.isnan(y[1]) and list(y[[0, 2, 3, 4]]) == [1, 0, 1, 0]
    assert np.nansum(w * np.nan_to_num(y)) / len(y) == pytest.approx(aalen_johansen(TIME, STATUS, 4.5))


def test_death_competes_and_complete_case_is_biased():
    """On exponential event, death and censoring times with a known answer."""
    rng = np.random.default_rng(0)
    n = 200_000  # standard error of the estimates about 0.0013
    te, td, tc = rng.exponential(40, n), rng.exponential(30, n), rng.uniform(0, 60, n)
    t = np.minimum.reduce([te, td, tc])
    s = np.where(t == te, 1, np.where(t == td, 2, 0))
    le, ld = 1 / 40, 1 / 30
    truth = le / (le + ld) * (1 - np.exp(-(le + ld) * 24))
    assert aalen_johansen(t, s, 24) == pytest.approx(truth, abs=0.006)
    y = crude_label(t, s, 24)
    assert np.nanmean(y) > truth + 0.015  # dropping early-censored rows biases upward
    w = ipcw_weights(t, s, 24)
    assert np.sum(w * np.nan_to_num(y)) / n == pytest.approx(truth, abs=0.006)
