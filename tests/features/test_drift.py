"""Drift reference, drift table, Prometheus buckets and the site report.

Simulated cohorts stand in for a training site and a new site: two draws of the same
profile differ by sampling noise only, so a shift we add (HU - 20, missing DXA) must be
flagged and nothing else may be.
"""

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.drift import (
    MIN_BIN_ROWS,
    OTHER,
    PREDICTED_RISK_BUCKETS,
    _merge_small,
    build_reference,
    category_levels,
    drift_table,
    histogram_buckets,
    psi,
    reference_cumulative_shares,
)
from features.labels import horizon_days
from features.records import tables_to_records
from features.simulator import simulate
from training.site_report import render_site_report
from training.time_metrics import calibration_table, evaluate_at_horizons, net_benefit


@pytest.fixture(scope="module")
def training():
    tables, _ = simulate("xiong2021-pvp", 3000, 1)
    return tables_to_records(tables)


@pytest.fixture(scope="module")
def reference(training):
    return build_reference(training)


@pytest.fixture(scope="module")
def new_site():
    """Same population as training, another draw (sampling noise only)."""
    tables, _ = simulate("xiong2021-pvp", 2000, 2)
    return tables_to_records(tables)


# ---------------------------------------------------------------- statistics by hand

def test_psi_hand_example():
    # shares 0.5/0.5 -> 0.25/0.75: (0.25-0.5) ln(0.5) + (0.75-0.5) ln(1.5) = 0.27465
    assert psi([50, 50], [25, 75], pseudo_count=0) == pytest.approx(0.25 * np.log(2) + 0.25 * np.log(1.5))
    assert psi([10, 20, 30], [20, 40, 60], pseudo_count=0) == pytest.approx(0.0)
    assert np.isfinite(psi([10, 0], [0, 10]))  # empty bins are smoothed, not infinite


def test_small_bins_merge_with_smaller_neighbour():
    # counts 3 | 20 | 4 | 30: 3 joins 20 (edge 1 goes), then 4 joins 23 rather than 30 (edge 2 goes)
    assert _merge_small([1.0, 2.0, 3.0], np.array([3, 20, 4, 30]), 10) == [3.0]
    assert _merge_small([1.0], np.array([5, 4]), 10) == []


# ---------------------------------------------------------------- the drift table

def test_shifted_input_flagged_and_unshifted_not(reference, new_site):
    shifted = new_site.copy()
    shifted["hu_index_preop"] = shifted["hu_index_preop"] - 20  # HU 20 lower, nothing else changed
    table = drift_table(reference, shifted).set_index("input")
    hu = table.loc["hu_index_preop"]
    assert hu["rank"] == 1 and hu["psi"] >= 0.25 and hu["status"] == "major shift" and hu["p_value"] < 1e-6
    assert hu["wasserstein"] == pytest.approx(20, abs=4)  # binned lower bound, in HU
    assert hu["mean_now"] - hu["mean_ref"] == pytest.approx(-20, abs=3)
    assert table.loc["age_years", "status"] == "stable" and table.loc["age_years", "psi"] < 0.1
    others = table.drop(index="hu_index_preop")
    assert (others["status"] == "stable").all(), others[others["status"] != "stable"]
    assert not others["missing_shift"].any()


def test_same_population_is_stable(reference, new_site):
    table = drift_table(reference, new_site)
    assert (table["psi"] < 0.1).all() and not table["missing_shift"].any()
    assert table["rank"].tolist() == list(range(1, len(table) + 1))
    assert (np.diff(table["psi"]) <= 0).all()  # ranked by size


def test_missingness_change_flagged(reference, new_site):
    data = new_site.copy()
    rng = np.random.default_rng(0)
    gone = rng.random(len(data)) < 0.3  # DXA no longer recorded for ~30 %
    data.loc[gone, ["dxa_bmd_g_cm2", "dxa_t_score"]] = np.nan
    table = drift_table(reference, data).set_index("input")
    for name in ("dxa_bmd_g_cm2", "dxa_t_score"):
        row = table.loc[name]
        assert row["missing_shift"] and row["missing_now"] - row["missing_ref"] > 0.2
        assert row["status"] != "stable"  # the missing bin is part of PSI
    assert not table.drop(index=["dxa_bmd_g_cm2", "dxa_t_score"])["missing_shift"].any()


def test_level_never_seen_in_training_is_a_major_shift(reference, new_site):
    data = new_site.copy()
    data.loc[data.index[: len(data) // 3], "technique"] = "PKP"  # training (xiong2021-pvp) is all PVP
    row = drift_table(reference, data).set_index("input").loc["technique"]
    assert row["status"] == "major shift"


def test_reference_survives_json_and_gives_the_same_table(reference, new_site):
    loaded = json.loads(json.dumps(reference))
    pd.testing.assert_frame_equal(drift_table(loaded, new_site), drift_table(reference, new_site))


def test_bad_input_named(reference, new_site):
    bad = new_site.copy().astype({"age_years": object})
    bad.loc[7, "age_years"] = "seventy"
    with pytest.raises(ValueError, match=r"records: row 7, column 'age_years'.*seventy"):
        drift_table(reference, bad)
    with pytest.raises(ValueError, match=r"column 'hu_index_preop' is missing"):
        drift_table(reference, new_site.drop(columns="hu_index_preop"))
    with pytest.raises(ValueError, match=r"reference: field 'format'"):
        drift_table({"inputs": {}}, new_site)


def test_computed_features_and_predicted_risk(training, new_site):
    rng = np.random.default_rng(3)
    computed = pd.DataFrame({"sex_female": (training["sex"] == "F").astype(float).to_numpy(),
                             "age_years": training["age_years"].to_numpy(),  # a record field: skipped
                             "predicted_risk_24m": rng.beta(2, 30, len(training))})
    ref = build_reference(training, computed)
    assert ref["inputs"]["sex_female"]["kind"] == "categorical" and ref["inputs"]["sex_female"]["levels"] == ["0", "1"]
    assert ref["inputs"]["predicted_risk_24m"]["kind"] == "numeric" and ref["inputs"]["age_years"]["source"] == "record"
    now = pd.DataFrame({"sex_female": (new_site["sex"] == "F").astype(float).to_numpy(),
                        "predicted_risk_24m": rng.beta(2, 30, len(new_site)) * 1.6})  # risks 1.6x higher
    table = drift_table(ref, new_site, now).set_index("input")
    assert table.loc["predicted_risk_24m", "status"] == "major shift"
    assert table.loc["sex_female", "status"] == "stable"
    with pytest.raises(ValueError, match=r"computed: column 'sex_female' is missing"):
        drift_table(ref, new_site)


# ---------------------------------------------------------------- no patient data in the reference

def test_reference_holds_no_identifiers_dates_or_extremes(training, reference):
    text = json.dumps(reference)
    assert "procedure_id" not in reference["inputs"]
    for pid in training["procedure_id"]:
        assert pid not in text
    for col in ("surgery_date", "pain_onset_date"):
        assert set(reference["inputs"][col]) == {"kind", "source", "contract_kind", "unit", "missing_share"}
        for d in training[col].dropna().dt.strftime("%Y-%m-%d").unique():
            assert d not in text
    for name, entry in reference["inputs"].items():
        if entry["kind"] != "numeric" or training[name].nunique() < 50:
            continue
        stored = set(entry["edges"]) | set(entry["bin_means"]) | {entry["mean"], entry["sd"]}
        assert training[name].min() not in stored and training[name].max() not in stored, name


def test_every_stored_bin_has_at_least_ten_rows(training, reference):
    n = reference["n_rows"]
    for name, entry in reference["inputs"].items():
        present = n * (1 - entry["missing_share"])
        for share in entry.get("shares", []):
            assert share * present >= MIN_BIN_ROWS - 1e-9, name


def test_small_training_set_merges_bins_and_pools_rare_levels(training):
    small = training.head(25).copy()
    small["sex"] = ["M"] * 3 + ["F"] * 22  # 3 men: too few to be shown on their own
    ref = build_reference(small)
    hu = ref["inputs"]["height_cm"]
    assert len(hu["shares"]) == 2 and all(s * 25 >= 10 for s in hu["shares"])  # 10 deciles -> 2 bins of >= 10
    assert ref["inputs"]["sex"]["levels"] == ["F"]  # the 3 are merged into the smallest kept level
    mixed = training.head(40).copy()
    mixed["anti_osteoporosis_therapy"] = ["none"] * 20 + ["bisphosphonate"] * 10 + ["teriparatide"] * 6 + ["other"] * 4
    levels = build_reference(mixed)["inputs"]["anti_osteoporosis_therapy"]
    assert levels["levels"] == ["none", "bisphosphonate", OTHER]
    assert levels["shares"] == pytest.approx([0.5, 0.25, 0.25])


def test_input_rarely_recorded_in_training_keeps_only_its_missing_share(training, new_site):
    sparse = training.copy()
    sparse.loc[sparse.index[5:], "psoas_area_cm2_preop"] = np.nan  # 5 values: too few to describe
    ref = build_reference(sparse)
    entry = ref["inputs"]["psoas_area_cm2_preop"]
    assert entry["edges"] == [] and entry["shares"] == [] and entry["mean"] is None
    assert "psoas_area_cm2_preop" not in histogram_buckets(ref)
    row = drift_table(ref, new_site).set_index("input").loc["psoas_area_cm2_preop"]
    assert row["missing_shift"] and row["status"] == "major shift"  # now recorded for ~97 %


# ---------------------------------------------------------------- Prometheus

def test_histogram_buckets_match_prometheus(training, reference):
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.utils import floatToGoString

    buckets = histogram_buckets(reference)
    assert buckets["predicted_risk"] == list(PREDICTED_RISK_BUCKETS)
    assert buckets["hu_index_preop"] == reference["inputs"]["hu_index_preop"]["edges"]
    assert all(np.all(np.diff(b) > 0) for b in buckets.values())
    assert "sex" not in buckets and "procedure_id" not in buckets
    assert category_levels(reference)["technique"] == ["PVP", OTHER]  # bounded label values
    # The live histogram of the training rows reproduces the reference's cumulative shares.
    registry = CollectorRegistry()
    hist = Histogram("refracture_input_value", "x", ["input"], buckets=buckets["hu_index_preop"], registry=registry)
    for v in training["hu_index_preop"].dropna():
        hist.labels(input="hu_index_preop").observe(v)
    count = training["hu_index_preop"].notna().sum()
    live = {s.labels["le"]: s.value / count for m in registry.collect() for s in m.samples if s.name.endswith("_bucket")}
    ref_cum = reference_cumulative_shares(reference)["hu_index_preop"]
    assert set(live) == set(ref_cum) == {floatToGoString(b) for b in buckets["hu_index_preop"]} | {"+Inf"}
    for le, share in ref_cum.items():
        assert live[le] == pytest.approx(share, abs=1e-12)


# ---------------------------------------------------------------- the report

def _cohort(n, seed, scale):
    """Competing exponential event/death with uniform censoring; risk = scale x true CIF."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    le, ld = np.exp(np.log(1 / 9000) + 0.8 * x), np.full(n, 1 / 3000)
    te, td, tc = rng.exponential(1 / le), rng.exponential(1 / ld), rng.uniform(200, 1200, n)
    t = np.ceil(np.minimum.reduce([te, td, tc]))
    s = np.where(te <= np.minimum(td, tc), 1, np.where(td <= tc, 2, 0))
    return t, s, lambda h: np.clip(scale * le / (le + ld) * (1 - np.exp(-(le + ld) * h)), 0, 1)


@pytest.fixture(scope="module")
def performance():
    horizons = [horizon_days(12), horizon_days(24)]
    metrics, calibration, decision = [], [], []
    for cohort, seed, scale in [("Site B", 1, 1.7), ("training site", 2, 1.0)]:
        t, s, cif = _cohort(1500, seed, scale)
        risks = {h: cif(h) for h in horizons}
        metrics.append(evaluate_at_horizons(t, s, risks, n_boot=30, seed=0, patients=None).assign(outcome="cemented_refracture", cohort=cohort))
        for h in horizons:
            calibration.append(calibration_table(t, s, risks[h], h, n_boot=30, patients=None)
                               .assign(outcome="cemented_refracture", cohort=cohort, horizon=h))
        decision.append(net_benefit(t, s, risks[horizons[-1]], horizons[-1], np.linspace(0.01, 0.3, 15))
                        .assign(outcome="cemented_refracture", cohort=cohort, horizon=horizons[-1]))
    return pd.concat(metrics), pd.concat(calibration), pd.concat(decision)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _report(reference, new_site, performance):
    shifted = new_site.copy()
    shifted["hu_index_preop"] = shifted["hu_index_preop"] - 20
    metrics, calibration, decision = performance
    return render_site_report(drift_table(reference, shifted), reference, shifted, site="Site B",
                              training_site="xiong2021-pvp", metrics=metrics, calibration=calibration,
                              decision=decision, model="refracture-cemented_refracture v1", top_inputs=2)


def test_report_is_self_contained_and_shows_the_figures(reference, new_site, performance):
    report = _report(reference, new_site, performance)
    parsed = _Tags()
    parsed.feed(report.html)
    links = [v for _, attrs in parsed.tags for k, v in attrs.items() if k in ("src", "href")]
    assert links and all(v.startswith("data:image/png;base64,") for v in links)
    assert not any("http" in v for v in links)
    assert not {t for t, _ in parsed.tags} & {"script", "link", "iframe", "object"}
    assert set(report.figures) == {"calibration_cemented_refracture.png", "decision_curve_cemented_refracture_24m.png",
                                   "shift_hu_index_preop.png"}
    assert sum(t == "img" for t, _ in parsed.tags) == len(report.figures)
    text = " ".join(parsed.text)
    assert "by 24 months" in text and "over-predicts" in text  # scale 1.7: O/E about 0.6
    assert "associations" in text and "PSI < 0.25" in text


def test_report_is_deterministic(reference, new_site, performance):
    assert _report(reference, new_site, performance).html == _report(reference, new_site, performance).html


def test_report_names_a_missing_column(reference, new_site, performance):
    metrics, _, _ = performance
    with pytest.raises(ValueError, match="metrics: missing column.*cohort"):
        render_site_report(drift_table(reference, new_site), reference, new_site, site="B", training_site="A",
                           metrics=metrics.drop(columns="cohort"))


# ---------------------------------------------------------------- alert rules (docs/prometheus)

RULES = Path(__file__).resolve().parents[2] / "docs" / "prometheus"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_alert_rules_are_valid_and_fire_on_the_simulated_shift():
    """The documented rules parse, and their unit test (HU shifted, DXA missing, risk 1.6x
    the reference fire; age, HU missingness and adjacent risk do not) passes."""
    for args in (["check", "rules", "refracture-drift.rules.yml"], ["test", "rules", "refracture-drift.rules.test.yml"]):
        run = subprocess.run(["promtool", *args], cwd=RULES, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr


def test_alert_rules_use_the_documented_metric_names():
    """The rules read exactly the series docs/monitoring.md asks the service to export."""
    import re

    rules = (RULES / "refracture-drift.rules.yml").read_text()
    used = set(re.findall(r"\b(refracture_[a-z_]+?)(?:_bucket|_count|_sum)?\b", rules))
    docs = (RULES.parent / "monitoring.md").read_text()
    assert used and all(f"`{name}`" in docs for name in used), used


def test_drift_only_report_on_a_small_sample_warns_about_chance(reference, new_site):
    small = new_site.head(200)
    report = render_site_report(drift_table(reference, small), reference, small, site="Site C",
                                training_site="xiong2021-pvp", top_inputs=3)
    parsed = _Tags()
    parsed.feed(report.html)
    text = " ".join(parsed.text)
    assert "With 200 procedures, PSI values up to about 0.1 can arise by chance" in text
    assert "data drift only" in text and not any(k.startswith("calibration") for k in report.figures)
