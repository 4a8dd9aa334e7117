"""The recalibration tests' size: a correct model is rejected at the stated 5 %, on
clustered, censored data with death competing (the full 500 datasets of the PKP profile
are in bench/bench_recal_tests.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from training.recalibrate import best_shift, calibration_tests, closed_test, local_targets
from training.resampling import patient_codes

HORIZONS = (3.0, 6.0, 12.0, 24.0)
DAYS = np.array(HORIZONS) * 365.25 / 12


def _site(rng: np.random.Generator, n_patients: int = 800):
    """A site whose patients have 1-3 procedures that share the patient's risk factor, its
    death and censoring, and a patient-level fracture process (as the simulator's remote
    fracture), each procedure also with its own. Exponential hazards (per day): the true
    cumulative incidence at every horizon is known. Returns (true log-odds (n, K), time,
    status, patient ids)."""
    levels = rng.choice([1, 2, 3], size=n_patients, p=[0.6, 0.3, 0.1])
    pat = np.repeat(np.arange(n_patients), levels)
    x = rng.normal(size=n_patients)[pat] + 0.5 * rng.normal(size=len(pat))
    lam_shared = (0.06 * np.exp(0.6 * rng.normal(size=n_patients)) / 365.25)[pat]
    lam_own = 0.06 * np.exp(0.9 * x) / 365.25
    lam_death = (0.10 * np.exp(0.4 * rng.normal(size=n_patients)) / 365.25)[pat]
    t_event = np.minimum(rng.exponential(1.0, n_patients)[pat] / lam_shared, rng.exponential(1 / lam_own))
    t_death = rng.exponential(1.0, n_patients)[pat] / lam_death
    t_cens = rng.uniform(300, 1100, n_patients)[pat]
    t = np.ceil(np.minimum.reduce([t_event, t_death, t_cens]))
    status = np.select([t_event <= np.minimum(t_death, t_cens), t_death <= t_cens], [1, 2], 0)
    lam = lam_shared + lam_own
    cif = lam[:, None] / (lam + lam_death)[:, None] * (1 - np.exp(-(lam + lam_death)[:, None] * DAYS[None, :]))
    return np.log(cif) - np.log1p(-cif), t, status, pat


def _tests(z0, t, s, codes):
    labels, w = local_targets(t, s, HORIZONS)
    return calibration_tests(z0, best_shift(z0, labels, w), z0[:, -1], labels, w, codes)


def test_a_correct_model_is_rejected_at_the_stated_rate_and_a_wrong_one_far_more():
    rng = np.random.default_rng(2022)
    n_sets, alpha = 200, 0.05
    p_values = {"patients": [], "procedures": []}
    power = []
    for _ in range(n_sets):
        z, t, s, pat = _site(rng)
        for name, codes in (("patients", patient_codes(pat, len(t))), ("procedures", np.arange(len(t)))):
            p_values[name].append(_tests(z, t, s, codes))
        power.append(_tests(z - 0.5, t, s, patient_codes(pat, len(t))))
    rejected = {k: sum(d["p_ii_vs_none"] < alpha for d in v) for k, v in p_values.items()}
    # 200 null datasets: 10 rejections expected; 3..19 holds 99.5 % of the binomial law.
    assert stats.binom(n_sets, alpha).cdf(2) < 0.005 and stats.binom(n_sets, alpha).sf(19) < 0.005
    assert 3 <= rejected["patients"] <= 19, rejected
    assert 3 <= sum(d["p_i_vs_none"] < alpha for d in p_values["patients"]) <= 19
    # Treating a patient's procedures as independent is what the clustering fixes: it
    # rejects the correct model more often than a test of the right size could (beyond
    # the same 99.5 % binomial range).
    assert rejected["procedures"] > 19 and rejected["procedures"] > rejected["patients"], rejected
    # The null p-values are uniform (Kolmogorov-Smirnov) ...
    assert stats.kstest([d["p_ii_vs_none"] for d in p_values["patients"]], "uniform").pvalue > 0.001
    # ... and a model 0.5 logit below the truth is found nearly always.
    assert np.mean([d["p_ii_vs_none"] < alpha for d in power]) > 0.8
    # The rule (closed testing) updates a correct model no more often than its first test rejects.
    events = [200] * n_sets
    updates = sum(closed_test(d, e)[0] != "none" for d, e in zip(p_values["patients"], events))
    assert updates <= rejected["patients"]


def test_the_score_test_ignores_what_a_nuisance_shift_explains():
    rng = np.random.default_rng(3)
    z, t, s, pat = _site(rng, 3000)
    codes = patient_codes(pat, len(t))
    shifted = _tests(z - 0.8, t, s, codes)
    # A pure shift: (i) vs none is overwhelming, (ii) vs (i) (slope, spacing) is not.
    assert shifted["p_i_vs_none"] < 1e-6 and shifted["p_ii_vs_i"] > 0.01
    assert shifted["df_ii_vs_none"] == 5 and shifted["df_ii_vs_i"] == 4 and shifted["df_i_vs_none"] == 1
    # The Satterthwaite degrees of freedom: the stacked horizons carry less than one
    # independent term each, and one term is one term.
    assert 1 <= shifted["nu_ii_vs_none"] < 5 and 1 <= shifted["nu_ii_vs_i"] < 4
    assert shifted["nu_i_vs_none"] == pytest.approx(1.0)
    steep = _tests(1.6 * z + 1.5, t, s, codes)  # too extreme: the slope is wrong
    assert steep["p_ii_vs_i"] < 1e-3


@pytest.mark.parametrize("n_patients", [40])
def test_a_small_site_gives_finite_statistics(n_patients):
    z, t, s, pat = _site(np.random.default_rng(1), n_patients)
    out = _tests(z, t, s, patient_codes(pat, len(t)))
    assert all(np.isfinite(v) for v in out.values())
    assert all(0 <= out[f"p_{k}"] <= 1 for k in ("ii_vs_none", "ii_vs_i", "i_vs_none"))
