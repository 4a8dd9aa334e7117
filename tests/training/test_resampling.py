"""The patient-level (cluster) bootstrap: whole patients are resampled, one-procedure
patients give the procedure-level bootstrap exactly, and clustered data get wider intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from training.evaluation import replicates
from training.resampling import patient_codes, patient_counts
from training.time_metrics import evaluate_at_horizons

H = 365.0


def test_a_hand_made_cohort_is_resampled_by_whole_patients():
    patients = np.array(["ann", "ann", "bob", "cy", "cy", "cy"])
    codes = patient_codes(patients, 6)
    assert codes.tolist() == [0, 0, 1, 2, 2, 2]
    W = patient_counts(np.random.default_rng(0), codes, 2000)
    # Every procedure of a patient has the patient's count ...
    assert np.all(W[:, 0] == W[:, 1]) and np.all(W[:, 3] == W[:, 4]) and np.all(W[:, 3] == W[:, 5])
    # ... and each replicate draws 3 patients (not 6 procedures): its size is 3 patients' rows.
    per_patient = W[:, [0, 2, 3]]
    assert np.all(per_patient.sum(axis=1) == 3)
    assert set(W.sum(axis=1)) <= {3, 4, 5, 6, 7, 8, 9} and len(set(W.sum(axis=1))) > 3
    # Each patient is drawn once per replicate on average (multinomial, 3 draws of 1/3).
    assert per_patient.mean(axis=0) == pytest.approx([1, 1, 1], abs=0.08)
    assert per_patient.var(axis=0) == pytest.approx([2 / 3] * 3, abs=0.08)


def test_patient_ids_are_checked():
    with pytest.raises(ValueError, match="one id per row"):
        patient_codes(np.array(["a", "b"]), 3)
    with pytest.raises(ValueError, match="without a patient id"):
        patient_codes(np.array(["a", None, "b"], dtype=object), 3)
    assert patient_codes(None, 4).tolist() == [0, 1, 2, 3]


def _cohort(n_patients: int, seed: int, levels: np.ndarray | None = None):
    """Patients with a risk score; time to event (exponential, hazard rising with the score),
    competing death and administrative censoring, all shared by a patient's procedures
    (``levels`` per patient, default 1). Returns (time, status, risk at H, patient ids)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n_patients)
    lam_e, lam_d = 0.15 * np.exp(0.8 * x) / 365.0, 0.08 / 365.0
    t_e, t_d = rng.exponential(1 / lam_e), rng.exponential(1 / lam_d, n_patients)
    t_c = rng.uniform(200, 900, n_patients)
    t = np.round(np.minimum.reduce([t_e, t_d, t_c]))
    s = np.select([t_e <= np.minimum(t_d, t_c), t_d <= t_c], [1, 2], 0)
    risk = lam_e / (lam_e + lam_d) * (1 - np.exp(-(lam_e + lam_d) * H))
    ids = np.array([f"p{i:05d}" for i in range(n_patients)])
    levels = np.ones(n_patients, int) if levels is None else levels
    rep = np.repeat(np.arange(n_patients), levels)
    return t[rep], s[rep], risk[rep], ids[rep]


def test_one_procedure_per_patient_gives_the_procedure_level_bootstrap_exactly():
    t, s, risk, ids = _cohort(1500, seed=1)
    shuffled = np.random.default_rng(2).permutation(ids)  # ids in no particular order
    by_rows = evaluate_at_horizons(t, s, {H: risk}, n_boot=60, seed=3, patients=None)
    by_patients = evaluate_at_horizons(t, s, {H: risk}, n_boot=60, seed=3, patients=shuffled)
    pd.testing.assert_frame_equal(by_rows, by_patients)
    y = ((s == 1) & (t <= H)).astype(float)
    a = replicates(y, risk, 50, 4, patients=None)[1]["auroc"]
    b = replicates(y, risk, 50, 4, patients=shuffled)[1]["auroc"]
    np.testing.assert_array_equal(a, b)


def test_replicates_are_the_metrics_of_the_expanded_patient_resamples():
    rng = np.random.default_rng(5)
    t, s, risk, ids = _cohort(400, seed=5, levels=rng.integers(1, 4, 400))
    y = ((s == 1) & (t <= H)).astype(float)
    _, reps = replicates(y, risk, 20, 6, patients=ids)
    W = patient_counts(np.random.default_rng(6), patient_codes(ids, len(y)), 20)
    for b in range(20):
        rows = np.repeat(np.arange(len(y)), W[b].astype(int))
        drawn = pd.unique(ids[rows])
        assert all(np.isin(np.flatnonzero(ids == p), rows).all() for p in drawn[:20])  # whole patients
        assert reps["auroc"][b] == pytest.approx(roc_auc_score(y[rows], risk[rows]), abs=1e-12)
        assert reps["prevalence"][b] == pytest.approx(y[rows].mean(), abs=1e-12)


def test_clustered_procedures_get_the_wider_intervals_their_patients_warrant():
    """Each patient's procedure three times over (identical follow-up, as a death or a
    patient-level fracture process makes it): resampling patients gives exactly the
    interval of the one-procedure cohort; resampling procedures one about 1/sqrt(3) as wide."""
    once = _cohort(800, seed=7)
    thrice = _cohort(800, seed=7, levels=np.full(800, 3))
    ref = evaluate_at_horizons(*once[:2], {H: once[2]}, n_boot=300, seed=8, patients=once[3]).iloc[0]
    by_patients = evaluate_at_horizons(*thrice[:2], {H: thrice[2]}, n_boot=300, seed=8, patients=thrice[3]).iloc[0]
    by_rows = evaluate_at_horizons(*thrice[:2], {H: thrice[2]}, n_boot=300, seed=8, patients=None).iloc[0]
    for m in ("td_auroc", "observed_expected", "calibration_slope"):
        for end in ("_ci_low", "_ci_high"):
            assert by_patients[m + end] == pytest.approx(ref[m + end], rel=1e-4), m + end
        ratio = ((by_patients[m + "_ci_high"] - by_patients[m + "_ci_low"])
                 / (by_rows[m + "_ci_high"] - by_rows[m + "_ci_low"]))
        assert 1.4 < ratio < 2.2, (m, ratio)  # sqrt(3) = 1.73
