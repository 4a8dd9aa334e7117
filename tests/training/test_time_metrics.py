"""Horizon metrics with death as a competing event: hand-computed examples, identities
with the uncensored answer, and simulated cohorts whose true risk is known."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from training.competing_risks import aalen_johansen, censoring_survival, ipcw_weights
from training.resampling import patient_codes, patient_counts
from training.time_metrics import (
    _bootstrap_ipcw,
    _Ranked,
    brier_ipcw,
    calibration_slope_intercept,
    calibration_table,
    evaluate_at_horizons,
    net_benefit,
    net_benefit_replicates,
    observed_expected,
    td_auroc,
)

# times 1..5 with: event, censored, death, event, censored (as in test_competing_risks)
TIME = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
STATUS = np.array([1, 0, 2, 1, 0])
RISK = np.array([0.9, 0.5, 0.3, 0.2, 0.2])
H = 4.5


def simulate(n: int, seed: int, censoring_max_days: float = 900.0, whole_days: bool = True):
    """Exponential event (hazard rising with a covariate), death and uniform censoring.

    Returns (time, status, true cumulative incidence at h as a function, uncensored
    crude label at h as a function).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    rate_event = np.exp(np.log(1 / 1500) + 0.9 * x)
    rate_death = np.full(n, 1 / 2500)
    te, td = rng.exponential(1 / rate_event), rng.exponential(1 / rate_death)
    tc = rng.uniform(0, censoring_max_days, n)
    t = np.minimum.reduce([te, td, tc])
    t = np.ceil(t) if whole_days else t  # whole days: times tie as in the data
    s = np.where(np.minimum(te, td) <= tc, np.where(te < td, 1, 2), 0)
    total = rate_event + rate_death

    def truth(h):
        return rate_event / total * (1 - np.exp(-total * h))

    def label(h):  # the crude label without censoring
        return ((te < td) & ((np.ceil(te) if whole_days else te) <= h)).astype(float)

    return t, s, truth, label


def se_from_ci(row: pd.Series, name: str) -> float:
    return (row[f"{name}_ci_high"] - row[f"{name}_ci_low"]) / (2 * 1.96)


# ---------------------------------------------------------------- hand-computed


def test_td_auroc_by_hand():
    # weights at 4.5: [1, 0, 4/3, 4/3, 4/3]; cases rows 0 and 3, controls rows 2 (death) and 4.
    # pairs: 0>2: 1*4/3, 0>4: 1*4/3, 3<2: 0, 3=4 (tie): 1/2 * 4/3 * 4/3 -> 32/9 of (7/3 * 8/3).
    assert td_auroc(TIME, STATUS, RISK, H) == pytest.approx(4 / 7)


def test_brier_by_hand():
    expected = (1 * 0.1**2 + 4 / 3 * (0.3**2 + 0.8**2 + 0.2**2)) / 5
    assert brier_ipcw(TIME, STATUS, RISK, H) == pytest.approx(expected)


def test_observed_expected_by_hand():
    assert observed_expected(TIME, STATUS, RISK, H) == pytest.approx((0.2 + 4 / 15) / RISK.mean())


def test_given_censoring_function_is_used():
    G_own = censoring_survival(TIME, STATUS)
    assert td_auroc(TIME, STATUS, RISK, H, G=G_own) == td_auroc(TIME, STATUS, RISK, H)
    # No censoring assumed (G = 1): every known row weighs 1.
    G_none = lambda at, before=False: np.ones(np.shape(at))  # noqa: E731
    assert brier_ipcw(TIME, STATUS, RISK, H, G=G_none) == pytest.approx((0.01 + 0.09 + 0.64 + 0.04) / 5)


def test_net_benefit_by_hand_and_treat_all():
    nb = net_benefit(TIME, STATUS, RISK, H, [0.1, 0.25, 0.95])
    cif = 0.2 + 4 / 15
    np.testing.assert_allclose(nb["treat_all"], cif - (1 - cif) * np.array([1 / 9, 1 / 3, 19]))
    np.testing.assert_allclose(nb["treat_none"], 0)
    # pt = 0.1: everyone treated, so the model's curve is treat-all.
    assert nb["net_benefit"][0] == pytest.approx(nb["treat_all"][0])
    # pt = 0.25: rows 0, 1, 2 treated; AJ among them at 4.5: row 0 event at 1 -> 1/3.
    assert nb["treated"][1] == pytest.approx(0.6)
    assert nb["net_benefit"][1] == pytest.approx(0.6 * 1 / 3 - 0.6 * 2 / 3 * 1 / 3)
    assert nb["net_benefit"][2] == 0  # nobody above 95 %


# ---------------------------------------------------------------- identities


def test_td_auroc_without_censoring_or_death_is_ordinary_auroc():
    rng = np.random.default_rng(1)
    n = 2000
    t = rng.uniform(1, 100, n)
    s = np.ones(n, int)  # everyone has the event at some time, no censoring, no death
    risk = np.round(rng.uniform(size=n) * 0.5 + (t < 40) * 0.3, 1)  # rounded: many ties
    y = (t <= 40).astype(int)
    assert td_auroc(t, s, risk, 40) == pytest.approx(roc_auc_score(y, risk), abs=1e-12)


def test_td_auroc_deaths_are_controls_without_censoring():
    rng = np.random.default_rng(2)
    n = 2000
    t = rng.uniform(1, 100, n)
    s = rng.choice([1, 2], size=n)
    risk = (rng.uniform(size=n) + 0.3 * (s == 1)) / 1.3
    y = ((s == 1) & (t <= 50)).astype(int)
    assert td_auroc(t, s, risk, 50) == pytest.approx(roc_auc_score(y, risk), abs=1e-12)
    assert brier_ipcw(t, s, risk, 50) == pytest.approx(np.mean((y - risk) ** 2))


def test_bootstrap_weights_match_ipcw_on_the_expanded_resample():
    t, s, _, _ = simulate(3000, seed=3, whole_days=False)  # see _Censoring.G on ties
    W = np.random.default_rng(4).multinomial(len(t), np.full(len(t), 1 / len(t)), size=3).astype(float)
    got = _bootstrap_ipcw(t, s, 365.0, W)
    for b in range(3):
        rows = np.repeat(np.arange(len(t)), W[b].astype(int))
        expanded = np.bincount(rows, weights=ipcw_weights(t[rows], s[rows], 365.0), minlength=len(t))
        np.testing.assert_allclose(got[b], expanded, rtol=1e-12)


@pytest.mark.parametrize("clustered", [False, True])
def test_net_benefit_replicates_equal_net_benefit_on_the_expanded_resamples(clustered):
    t, s, truth, _ = simulate(1500, seed=8)  # whole days: tied times, as in the data
    risk = np.clip(truth(365.0) * np.random.default_rng(9).lognormal(0, 0.3, len(t)), 0, 0.9)
    thresholds = (0.02, 0.05, 0.1, 0.2, 0.99)
    # Clustered: 1,500 rows of about 900 patients (the replicates' sizes then vary).
    patients = np.random.default_rng(10).integers(0, 900, len(t)).astype(str) if clustered else None
    got, treat_all = net_benefit_replicates(t, s, risk, 365.0, thresholds, n_boot=4, seed=3, patients=patients)
    W = patient_counts(np.random.default_rng(3), patient_codes(patients, len(t)), 4)
    assert got.shape == (4, 5) and np.all(got[:, -1] == 0)  # nobody above 99 %: 0, as net_benefit
    assert (len(np.unique(W.sum(axis=1))) > 1) == clustered
    for b in range(4):
        rows = np.repeat(np.arange(len(t)), W[b].astype(int))
        expected = net_benefit(t[rows], s[rows], risk[rows], 365.0, thresholds)
        np.testing.assert_allclose(got[b], expected["net_benefit"].to_numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(treat_all[b], expected["treat_all"].to_numpy(), rtol=1e-9, atol=1e-12)
    assert np.ptp(got[:, 1]) > 0  # the replicates differ


def test_observed_risk_is_aalen_johansen_with_ties():
    t, s, truth, _ = simulate(3000, seed=5)
    out = evaluate_at_horizons(t, s, {180.0: truth(180.0), 365.0: truth(365.0)}, n_boot=0, patients=None)
    for h, row in zip((180.0, 365.0), out.itertuples()):
        assert row.observed_risk == pytest.approx(aalen_johansen(t, s, h), rel=1e-12)
        assert row.observed_expected == pytest.approx(observed_expected(t, s, truth(h), h), rel=1e-12)


def test_evaluate_point_estimates_equal_the_single_metrics():
    t, s, truth, _ = simulate(3000, seed=6)
    risk = np.clip(truth(365.0) * 1.3, 0, 1)
    row = evaluate_at_horizons(t, s, {365.0: risk}, n_boot=0, patients=None).iloc[0]
    assert row.td_auroc == pytest.approx(td_auroc(t, s, risk, 365.0), rel=1e-12)
    assert row.brier == pytest.approx(brier_ipcw(t, s, risk, 365.0), rel=1e-12)
    slope, intercept = calibration_slope_intercept(t, s, risk, 365.0)
    assert row.calibration_slope == pytest.approx(slope, rel=1e-9)
    assert row.calibration_intercept == pytest.approx(intercept, rel=1e-9)
    assert row.mean_predicted == pytest.approx(risk.mean())


def test_binned_bootstrap_logistic_matches_exact_refits():
    """The bootstrap refits the logistic on logit cells; compare with exact refits."""
    t, s, truth, _ = simulate(8000, seed=7)
    rng = np.random.default_rng(8)
    risk = np.clip(truth(365.0) * np.exp(rng.normal(0, 0.4, len(t))), 0, 1)  # miscalibrated
    W = rng.multinomial(len(t), np.full(len(t), 1 / len(t)), size=30).astype(float)
    known = (t >= 365.0) | (s != 0)
    y = ((s == 1) & (t <= 365.0))[known].astype(float)
    rank = _Ranked(y, risk[known])
    w1 = ipcw_weights(t, s, 365.0)[known][None, rank.order]
    start = tuple(float(v[0]) for v in rank.logistic(w1))
    cell_lp = rank.cell_lp(w1[0])
    binned_point = rank.logistic(w1, start, cell_lp)
    w = _bootstrap_ipcw(t, s, 365.0, W)[:, known][:, rank.order]
    exact = rank.logistic(w, start)
    approx = rank.logistic(w, start, cell_lp)
    for i, shift in ((0, start[0] - binned_point[0][0]), (2, start[2] - binned_point[2][0])):
        err = np.abs(approx[i] + shift - exact[i])
        assert err.max() < 0.1 * exact[i].std()


def test_oracle_against_itself_has_zero_difference_and_is_reproducible():
    t, s, truth, _ = simulate(2000, seed=9)
    risks = {182.0: truth(182.0), 365.0: truth(365.0)}
    a = evaluate_at_horizons(t, s, risks, n_boot=50, seed=1, truth=risks, patients=None)
    b = evaluate_at_horizons(t, s, risks, n_boot=50, seed=1, truth=risks, patients=None)
    pd.testing.assert_frame_equal(a, b)
    assert (a[["td_auroc_diff", "td_auroc_diff_ci_low", "td_auroc_diff_ci_high", "mean_abs_diff_truth"]] == 0).all().all()
    np.testing.assert_allclose(a["td_auroc"], a["oracle_td_auroc"])
    c = evaluate_at_horizons(t, s, risks, n_boot=50, seed=2, truth=risks, patients=None)
    assert not np.allclose(a["td_auroc_ci_low"], c["td_auroc_ci_low"])
    assert list(a["horizon"]) == [182.0, 365.0]
    assert (a["n"] == 2000).all() and (a["events"] == [((s == 1) & (t <= h)).sum() for h in (182, 365)]).all()


# ---------------------------------------------------------------- simulated truth


@pytest.fixture(scope="module")
def big_cohort():
    """40k rows, about 45 % censored before two years; estimates and bootstrap SEs."""
    t, s, truth, label = simulate(40_000, seed=11)
    horizons = (182.0, 730.0)
    rng = np.random.default_rng(12)
    risks = {h: np.clip(truth(h) * np.exp(rng.normal(0, 0.5, len(t))), 0, 1) for h in horizons}
    out = evaluate_at_horizons(t, s, risks, n_boot=200, seed=13, truth={h: truth(h) for h in horizons}, patients=None)
    return t, s, truth, label, risks, out


def test_ipcw_auroc_and_brier_match_the_uncensored_answer(big_cohort):
    """The IPCW estimates on censored data vs the same metrics on the uncensored labels of
    the same rows. Their difference is censoring noise, whose SE is below the bootstrap SE
    of the IPCW estimate (the uncensored metric has the sampling part in common), so
    4 bootstrap SEs bound a false failure at below 1e-4."""
    t, s, truth, label, risks, out = big_cohort
    assert (out["censored_before"] > 0.1 * len(t)).all()
    for h, row in zip((182.0, 730.0), out.itertuples()):
        row = out[out["horizon"] == h].iloc[0]
        y = label(h)
        for who, p in (("", risks[h]), ("oracle_", truth(h))):
            assert row[who + "td_auroc"] == pytest.approx(roc_auc_score(y, p), abs=4 * se_from_ci(row, who + "td_auroc"))
            assert row[who + "brier"] == pytest.approx(np.mean((y - p) ** 2), abs=4 * se_from_ci(row, who + "brier"))
        assert row["observed_risk"] == pytest.approx(y.mean(), abs=4 * se_from_ci(row, "observed_risk"))


def test_complete_case_brier_would_be_biased(big_cohort):
    """The check above has power: dropping early-censored rows misses the truth."""
    t, s, truth, label, _, out = big_cohort
    row = out[out["horizon"] == 730.0].iloc[0]
    y, p = label(730.0), truth(730.0)
    kept = (t >= 730.0) | (s != 0)
    complete_case = np.mean((((s == 1) & (t <= 730.0))[kept] - p[kept]) ** 2)
    assert abs(complete_case - np.mean((y - p) ** 2)) > 4 * se_from_ci(row, "oracle_brier")


def test_true_risk_is_calibrated_and_noisy_risk_is_not(big_cohort):
    _, _, _, _, _, out = big_cohort
    for row in out.to_dict("records"):
        assert row["oracle_calibration_slope"] == pytest.approx(1, abs=4 * se_from_ci(row, "oracle_calibration_slope"))
        assert row["oracle_calibration_intercept"] == pytest.approx(0, abs=4 * se_from_ci(row, "oracle_calibration_intercept"))
        assert row["oracle_observed_expected"] == pytest.approx(1, abs=4 * se_from_ci(row, "oracle_observed_expected"))
        # Multiplicative log-normal noise spreads the risks: slope well below 1, and the
        # oracle discriminates better on the same resamples.
        assert row["calibration_slope_ci_high"] < 0.9
        assert row["td_auroc_diff_ci_high"] < 0
        assert row["mean_abs_diff_truth_ci_low"] > 0


def test_calibration_table_on_true_risk(big_cohort):
    t, s, truth, _, _, _ = big_cohort
    p = truth(730.0)
    table = calibration_table(t, s, p, 730.0, bins=10, n_boot=200, seed=0, patients=None)
    assert len(table) == 10 and table["n"].sum() == len(t)
    assert table["n"].min() >= 0.09 * len(t)
    assert table["mean_predicted"].is_monotonic_increasing
    assert ((table["observed_ci_low"] <= table["observed"]) & (table["observed"] <= table["observed_ci_high"])).all()
    covered = (table["observed_ci_low"] <= table["mean_predicted"]) & (table["mean_predicted"] <= table["observed_ci_high"])
    assert covered.sum() >= 8  # 95 % intervals around a calibrated risk
    # Each bin's observed value is the Aalen-Johansen estimate of its rows.
    top = p >= np.quantile(p, 0.9)
    assert table["observed"].iloc[-1] == pytest.approx(aalen_johansen(t[top], s[top], 730.0))


def test_net_benefit_of_true_risk_beats_both_defaults(big_cohort):
    t, s, truth, _, _, _ = big_cohort
    nb = net_benefit(t, s, truth(730.0), 730.0, [0.1, 0.2, 0.3])
    cif = aalen_johansen(t, s, 730.0)
    np.testing.assert_allclose(nb["treat_all"], cif - (1 - cif) * nb["threshold"] / (1 - nb["threshold"]))
    assert (nb["net_benefit"] > np.maximum(nb["treat_all"], 0)).all()


def test_undefined_metrics_are_nan_not_numbers():
    no_event = evaluate_at_horizons(TIME, np.array([0, 0, 2, 0, 0]), {H: RISK}, n_boot=20, patients=None).iloc[0]
    assert np.isnan([no_event.td_auroc, no_event.calibration_slope, no_event.calibration_intercept]).all()
    assert no_event.observed_risk == 0 and no_event.brier > 0
    all_censored = evaluate_at_horizons(TIME, np.zeros(5, int), {10.0: RISK}, n_boot=20, patients=None).iloc[0]
    assert np.isnan([all_censored.brier, all_censored.observed_risk, all_censored.td_auroc]).all()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"status": np.array([1, 0, 3, 1, 0])}, "status: row 2 is 3"),
        ({"risk": np.array([0.9, 0.5, 1.3, 0.2, 0.2])}, "risk: row 2"),
        ({"risk": np.array([0.9, 0.5])}, "risk: expected 5 values"),
        ({"horizon": -1.0}, "horizon must be a positive"),
        ({"time": np.array([1.0, np.nan, 3, 4, 5])}, "time must be non-negative"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    args = {"time": TIME, "status": STATUS, "risk": RISK, "horizon": H} | kwargs
    with pytest.raises(ValueError, match=message):
        td_auroc(**args)


def test_truth_must_cover_the_same_horizons():
    with pytest.raises(ValueError, match="truth has horizons"):
        evaluate_at_horizons(TIME, STATUS, {H: RISK}, n_boot=0, truth={3.0: RISK}, patients=None)
    with pytest.raises(ValueError, match=r"truth\[4.5\]: row 0"):
        evaluate_at_horizons(TIME, STATUS, {H: RISK}, n_boot=0, truth={H: RISK + 0.5}, patients=None)


def test_cluster_resampling_widens_intervals_of_duplicated_rows_and_is_the_row_bootstrap_for_singletons():
    """Each patient counted 4 times: resampled as rows, the O/E interval is about half as
    wide as the patients' own (sqrt 4); resampled by patient, about as wide. One row per
    cluster gives the row bootstrap (the same draws)."""
    rng = np.random.default_rng(3)
    n, h = 800, 365.0
    p = rng.uniform(0.05, 0.4, n)
    t = np.where(rng.random(n) < p, rng.uniform(1, h, n), h + 30)
    s = (t <= h).astype(int)
    once = evaluate_at_horizons(t, s, {h: p}, n_boot=300, seed=1, patients=None)
    same = evaluate_at_horizons(t, s, {h: p}, n_boot=300, seed=1, patients=np.arange(n).astype(str))
    for k in ("observed_expected_ci_low", "observed_expected_ci_high", "td_auroc_ci_low"):  # float32 sums: 1e-7
        assert same[k].iat[0] == pytest.approx(once[k].iat[0], rel=1e-5), k
    T, S, P, ids = (np.repeat(x, 4) for x in (t, s, p, np.arange(n)))
    rows = evaluate_at_horizons(T, S, {h: P}, n_boot=300, seed=1, patients=None)
    patients = evaluate_at_horizons(T, S, {h: P}, n_boot=300, seed=1, patients=ids)

    def width(r):
        return r["observed_expected_ci_high"].iat[0] - r["observed_expected_ci_low"].iat[0]

    assert patients["observed_expected"].iat[0] == pytest.approx(once["observed_expected"].iat[0])
    assert 0.4 < width(rows) / width(once) < 0.65
    assert 0.8 < width(patients) / width(once) < 1.25
    with pytest.raises(ValueError, match="one id per row"):
        evaluate_at_horizons(t, s, {h: p}, n_boot=10, patients=np.arange(3))
