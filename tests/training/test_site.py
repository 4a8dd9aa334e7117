"""Issue 13: a new site. Closed-testing recalibration (fast, on a simulated score), the
contract's errors through ``site-report``/``recalibrate``, and (slow: trains) the whole
path: site-report with the stored drift reference, recalibrate with lineage tags, the
challenger's report."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.labels import OUTCOMES, horizon_days
from modelstore.calibration import HorizonCalibration
from refracture.cli import app
from training.data import horizon_targets
from training.competing_risks import censoring_survival
from training.recalibrate import MIN_EVENTS_INTERCEPT, MIN_EVENTS_REFIT, decide
from training.time_metrics import calibration_slope_intercept, observed_expected

runner = CliRunner()

HORIZONS = (3.0, 6.0, 12.0, 24.0)


def _cohort(rng: np.random.Generator, n: int, base_per_year: float, effect: float):
    """A score eta ~ N(0, 1); event hazard base * exp(effect * eta), death 0.15/year
    competing, administrative censoring uniform over 0-30 months. Returns (eta, time, status)."""
    eta = rng.normal(size=n)
    t_event = rng.exponential(365.25 / (base_per_year * np.exp(effect * eta)))
    t_death = rng.exponential(365.25 / 0.15, n)
    t_cens = rng.uniform(0, horizon_days(30), n)
    t = np.minimum.reduce([t_event, t_death, t_cens])
    status = np.select([t == t_event, t == t_death], [1, 2], 0)
    return eta, t, status


def _fit(eta, t, s) -> HorizonCalibration:
    labels, weights = horizon_targets(t, s, HORIZONS, censoring_survival(t, s))
    return HorizonCalibration.fit(eta, labels, weights, HORIZONS)


def _headline(cal: HorizonCalibration, eta) -> np.ndarray:
    return 1 / (1 + np.exp(-cal.logit(eta)[:, -1]))


def test_recalibration_fixes_calibration_on_held_out_data_of_the_site():
    rng = np.random.default_rng(13)
    parent = _fit(*_cohort(rng, 20_000, 0.05, 1.0))        # training site
    local = _cohort(rng, 3_000, 0.10, 0.5)                 # new site: twice the rate, half the effect
    held_eta, held_t, held_s = _cohort(rng, 20_000, 0.10, 0.5)
    h = horizon_days(24)
    oe0 = observed_expected(held_t, held_s, _headline(parent, held_eta), h)
    slope0, _ = calibration_slope_intercept(held_t, held_s, _headline(parent, held_eta), h)
    assert oe0 > 1.3 and slope0 < 0.7  # the site is miscalibrated before anything is done

    d = decide(parent, *local, headline_months=24)
    assert d.choice == "intercept_slope" and d.stats["p_ii_vs_i"] < 0.05
    p = _headline(d.calibration, held_eta)
    oe = observed_expected(held_t, held_s, p, h)
    slope, _ = calibration_slope_intercept(held_t, held_s, p, h)
    # ~3,000 local procedures give ~400 events by 24 months: SE of log O/E ~ 1/sqrt(400) = 0.05
    # and of the slope ~0.07; 0.15 is about 2-3 SE of the local fit (the 20k held-out rows add little).
    assert abs(oe - 1) < 0.15, oe
    assert abs(slope - 1) < 0.2, slope
    # Curves never fall and the slope stays positive (monotone constraints keep their direction).
    assert np.all(np.diff(d.calibration.intercepts) >= 0) and d.calibration.slope > 0


def test_intercept_only_keeps_the_order_and_few_events_change_nothing():
    rng = np.random.default_rng(7)
    parent = _fit(*_cohort(rng, 20_000, 0.05, 1.0))
    small = _cohort(rng, 120, 0.05, 1.0)
    d = decide(parent, *small, headline_months=24)
    assert d.events < MIN_EVENTS_INTERCEPT and d.choice == "none" and d.calibration == parent
    # A pure shift in rate with the same effect and too few events to estimate a slope: intercept only.
    shifted = _cohort(rng, 700, 0.12, 1.0)
    d = decide(parent, *shifted, headline_months=24)
    assert d.choice == "intercept", d.note
    diffs = np.array(d.calibration.intercepts) - np.array(parent.intercepts)
    assert np.allclose(diffs, diffs[0]) and diffs[0] > 0 and d.calibration.slope == parent.slope
    tags = d.tags()
    assert {"recalibration_decision", "local_n_procedures", "local_n_events", "recalibration_p_i_vs_none"} <= set(tags)


@pytest.mark.parametrize("command", [["site-report", "--out", "REPORT"], ["recalibrate", "--site", "x"]])
def test_a_failing_export_gets_exactly_the_errors_of_validate(raw_dir, tmp_path, command):
    procedures = pd.read_csv(raw_dir / "procedures.csv")
    procedures.loc[0, "technique"] = "glue"
    procedures.to_csv(raw_dir / "procedures.csv", index=False)
    expected = runner.invoke(app, ["validate", "--raw", str(raw_dir)])
    assert expected.exit_code == 1 and "technique" in expected.output
    args = [str(tmp_path / "report") if a == "REPORT" else a for a in command]
    got = runner.invoke(app, [args[0], "--raw", str(raw_dir), *args[1:], "--store", str(tmp_path / "mlflow")])
    assert got.exit_code == 1
    assert got.output == expected.output
    assert not (tmp_path / "report").exists()


# ---------------------------------------------------------------- the whole path (trains)

@pytest.fixture(scope="module")
def site_store(tmp_path_factory):
    """A champion per outcome trained on xiong2021-pvp (tiny budget) and two site-c exports."""
    from features.io import write_raw
    from features.simulator import load_profile, simulate
    from training.config import TrainConfig
    from training.pipeline import run

    base = tmp_path_factory.mktemp("site")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tables, _ = simulate(load_profile("xiong2021-pvp"), 3000, 3)
        write_raw(tables, base / "train")
        for name, seed in (("site", 4), ("fresh", 5)):
            tables, _ = simulate(load_profile("site-c-older-frail-pkp"), 3000, seed)
            write_raw(tables, base / name)
        # The site states its follow-up (as synth writes it); the training export does not.
        from features.ascertainment import metadata_text
        from features.simulator.export import export_metadata
        (base / "site" / "export.yaml").write_text(metadata_text(export_metadata(load_profile("site-c-older-frail-pkp"))))
        cfg = TrainConfig(raw_dir=base / "train", search_trials=0, candidates=("logistic",), n_bootstrap=50,
                          cv_folds=2, n_jobs=1, shap_rows=30, feature_set="preop", store_dir=base / "mlflow",
                          outcomes=OUTCOMES)  # site reports cover the outcomes, not the death context
        results = run(cfg)
        assert all(r.alias == "champion" for r in results)
        yield base


@pytest.mark.slow
def test_site_report_recalibrate_and_challenger_report(site_store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = ["--store", str(site_store / "mlflow")]
    out = site_store / "report"
    r = runner.invoke(app, ["site-report", "--raw", str(site_store / "site"), "--out", str(out), "--site", "site-c",
                            "--bootstrap", "30", *store])
    assert r.exit_code == 0, r.output
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "site-c" in html and "training site" in html and "Subgroups" in html
    drift = pd.read_csv(out / "drift.csv").set_index("input")
    # site-c is older, with lower HU and more kyphoplasty; sex is not part of its shift.
    assert drift.loc["technique", "psi"] >= 0.25 and drift.loc["hu_index_preop", "psi"] >= 0.10
    assert drift.loc["sex", "psi"] < 0.10
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["outcome"]) == {"cemented_refracture", "adjacent_fracture", "remote_fracture"}
    assert metrics["cohort"].str.startswith("training").any()
    assert {"td_auroc_ci_low", "observed_expected_ci_high"} <= set(metrics.columns)
    subgroups = pd.read_csv(out / "subgroups.csv")
    assert set(subgroups["subgroup"]) == {"sex", "age_band", "region", "technique"}
    runs = mlflow.search_runs(experiment_names=["refracture-site-reports"])
    assert len(runs) == 1 and runs["tags.site"].iloc[0] == "site-c"
    # The follow-up the labels used: shown, and recorded with the run (export.yaml of the site).
    assert "Follow-up: deaths ascertained until the last contact; fractures ascertained until the last contact " \
           "(export.yaml)." in html
    assert (runs["tags.ascertainment_source"].iloc[0], runs["tags.data_cut"].iloc[0]) == ("export.yaml", "2025-01-31")

    r = runner.invoke(app, ["recalibrate", "--raw", str(site_store / "site"), "--site", "site-c", *store])
    assert r.exit_code == 0, r.output
    client = mlflow.MlflowClient()
    new = [mv for rm in client.search_registered_models() for mv in client.search_model_versions(f"name='{rm.name}'")
           if (mv.tags or {}).get("site") == "site-c"]
    assert new, r.output  # at least one outcome needed an update at this site
    for mv in new:
        tags = mv.tags
        assert str(tags["parent_version"]) == "1" and int(tags["local_n_procedures"]) == 3000
        assert int(tags["local_n_events"]) > 0
        assert tags["recalibration_decision"] in ("intercept", "intercept_slope", "refit_pooled")
        assert tags["recalibration_method"].startswith(("(i)", "(ii)", "(iii)"))
        assert "recalibration_p_ii_vs_none" in tags and tags["drift_reference"].startswith("runs:/")
        assert (tags["site_ascertainment_source"], tags["site_fractures_ascertained_until"]) == ("export.yaml", "last_contact")
        assert (tags["ascertainment_source"], tags["deaths_ascertained_until"]) == ("default", "last_contact")  # training's
        if int(tags["local_n_events"]) >= MIN_EVENTS_REFIT:  # (iii) was fitted and tested against the closed test's choice
            assert "recalibration_refit_p_vs_recalibrated" in tags, tags["recalibration_note"]
        else:
            assert "(iii) not considered" in tags["recalibration_note"]
        assert str(client.get_registered_model(mv.name).aliases["challenger"]) == str(mv.version)
        assert str(client.get_registered_model(mv.name).aliases["champion"]) == "1"  # promotion stays by hand
        model = mlflow.pyfunc.load_model(f"models:/{mv.name}/{mv.version}").unwrap_python_model()
        from features.io import read_raw
        from features.records import tables_to_records
        from features.validate import validate_raw
        recs = tables_to_records(validate_raw(read_raw(site_store / "fresh"))).head(50)
        curve = model.predict_curve(recs).to_numpy()
        assert np.all(np.diff(curve, axis=1) >= -1e-12)
        expl = model.explain(recs.head(5), 24)
        assert np.allclose(expl.logit(),
                           model.logit_from_features(model.features(recs.head(5)), 24), atol=1e-6)

    r = runner.invoke(app, ["site-report", "--raw", str(site_store / "fresh"), "--out", str(site_store / "report2"),
                            "--alias", "challenger", "--bootstrap", "30", *store])
    assert r.exit_code == 0, r.output
    cohorts = set(pd.read_csv(site_store / "report2" / "metrics.csv")["cohort"])
    assert any("parent v1" in c for c in cohorts), cohorts  # what the recalibration changed, on the same rows
    assert json.dumps(sorted(set(pd.read_csv(site_store / "report2" / "metrics.csv")["outcome"]))) == \
        json.dumps(sorted(mv.name.removeprefix("refracture-") for mv in new))


def _borderline(folder: Path) -> int:
    """Procedures whose fractured vertebra reads at or above its neighbours' mean before surgery."""
    imaging = pd.read_csv(folder / "imaging.csv")
    pre = imaging[imaging["timepoint"] == "preop"]
    return int((pre["vertebral_height_mm"] >= pre[["upper_adjacent_height_mm", "lower_adjacent_height_mm"]].mean(axis=1)).sum())


@pytest.mark.slow
def test_site_report_runs_on_borderline_measurements_and_around_broken_rows(site_store, monkeypatch, tmp_path):
    """Issue 22: the exports the champions were trained on and reported at carry realistic
    measurement error (fractured heights at or above the neighbours'), and a site export with
    a few broken rows stops the report unless --exclude-invalid leaves exactly those
    procedures out, the report logged with its count and fingerprint."""
    import hashlib
    import shutil

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _borderline(site_store / "train") > 0 and _borderline(site_store / "site") > 0
    assert runner.invoke(app, ["validate", "--raw", str(site_store / "site")]).exit_code == 0

    broken = tmp_path / "broken"
    shutil.copytree(site_store / "fresh", broken)
    procedures = pd.read_csv(broken / "procedures.csv", dtype=str, keep_default_na=False)
    imaging = pd.read_csv(broken / "imaging.csv", dtype=str, keep_default_na=False)
    two_levels = procedures[procedures["n_levels_treated"] == "2"]["patient_id"].iloc[0]
    patients = pd.read_csv(broken / "patients.csv", dtype=str, keep_default_na=False)
    patients.loc[patients["patient_id"] == two_levels, "weight_kg"] = "900"
    slip = procedures["procedure_id"].iloc[0]  # its upper neighbour written in cm before surgery
    pre = (imaging["procedure_id"] == slip) & (imaging["timepoint"] == "preop")
    imaging.loc[pre, "upper_adjacent_height_mm"] = str(round(float(imaging.loc[pre, "upper_adjacent_height_mm"].iloc[0]) / 10, 2))
    patients.to_csv(broken / "patients.csv", index=False)
    imaging.to_csv(broken / "imaging.csv", index=False)
    expected = {slip, *procedures.loc[procedures["patient_id"] == two_levels, "procedure_id"]}

    store = ["--store", str(site_store / "mlflow")]
    out = tmp_path / "report"
    r = runner.invoke(app, ["site-report", "--raw", str(broken), "--out", str(out), "--bootstrap", "0", *store])
    assert r.exit_code == 1 and "--exclude-invalid" in " ".join(r.output.split()) and not out.exists()
    r = runner.invoke(app, ["site-report", "--raw", str(broken), "--out", str(out), "--bootstrap", "0",
                            "--site", "broken-site", "--exclude-invalid", *store])
    assert r.exit_code == 0, r.output
    report = pd.read_csv(out / "exclusions.csv", dtype=str, keep_default_na=False)
    errors = report[report["severity"] == "error"]
    assert set(";".join(errors["excluded_procedures"]).split(";")) == expected
    assert "looks like cm" in errors.loc[errors["table"] == "imaging", "message"].iloc[0]
    runs = mlflow.search_runs(experiment_names=["refracture-site-reports"], filter_string="tags.site = 'broken-site'")
    assert runs["tags.excluded_procedures"].iloc[0] == str(len(expected))
    assert runs["tags.exclusion_report_sha256"].iloc[0] == hashlib.sha256((out / "exclusions.csv").read_bytes()).hexdigest()
    metrics = pd.read_csv(out / "metrics.csv")
    site_rows = metrics[~metrics["cohort"].str.startswith("training")]
    assert site_rows["n"].max() == 3000 - len(expected)


# ---------------------------------------------------------------- /metrics

def _reference():
    from features.drift import build_reference
    from features.io import read_raw  # noqa: F401 - the simulator's tables as serving sees them
    from features.records import tables_to_records
    from features.simulator import load_profile, simulate
    from features.validate import validate_raw

    tables, _ = simulate(load_profile("xiong2021-pvp"), 600, 11)
    records = tables_to_records(validate_raw(tables))
    return build_reference(records), records


def test_metrics_expose_input_histograms_without_identifiers():
    from prometheus_client import CollectorRegistry, generate_latest

    from features.records import inspect_records
    from serving.monitoring.drift_metrics import DriftMetrics

    reference, records = _reference()
    registry = CollectorRegistry()
    drift = DriftMetrics(reference, ["cemented_refracture"], registry=registry)
    batch = records.head(40).copy()
    batch.loc[batch.index[:7], "dxa_bmd_g_cm2"] = None
    batch.loc[batch.index[0], "technique"] = "PKP"
    typed = inspect_records(batch).typed
    scored = [{"record": i, "procedure_id": pid, "outcomes": {"cemented_refracture": {
        "probability": 0.07, "horizon_months": 24.0, "curve": {"12": 0.04, "24": 0.07}}}}
        for i, pid in enumerate(batch["procedure_id"])]
    drift.observe(typed, scored)
    text = generate_latest(registry).decode()
    n_hu = float((~np.isnan(typed["hu_index_preop"])).sum())
    assert f'refracture_input_value_count{{input="hu_index_preop"}} {n_hu}' in text
    assert 'refracture_input_value_bucket{input="age_years",le="+Inf"}' in text
    assert 'refracture_input_missing_total{input="dxa_bmd_g_cm2"}' in text
    assert 'refracture_records_scored_total 40.0' in text
    assert 'refracture_predicted_risk_count{horizon_months="12",outcome="cemented_refracture"} 40.0' in text
    assert 'refracture_input_reference_share{input="hu_index_preop",le="+Inf"} 1.0' in text
    assert 'refracture_input_level_total{input="technique",level="(other)"} 1.0' in text \
        or 'level="PKP"' in text
    # No identifier, date or record value in any label.
    labels = [line.split("{", 1)[1].split("}", 1)[0] for line in text.splitlines() if "{" in line and not line.startswith("#")]
    for pid in batch["procedure_id"].astype(str):
        assert pid not in text
    # Dates are counted as missing or not, never binned.
    assert "refracture_input_value_count{input=\"surgery_date\"}" not in text
    allowed_le = {str(b) for b in sum(([repr(float(x)) for x in v] for v in
                                       __import__("features.drift", fromlist=["x"]).histogram_buckets(reference).values()), [])}
    for lab in labels:
        for part in lab.split(","):
            key, value = part.split("=", 1)
            value = value.strip('"')
            assert key in {"input", "le", "level", "outcome", "horizon_months"}
            if key == "le":
                assert value in allowed_le | {"+Inf"}, value


def test_metrics_merge_per_input_buckets_under_bentoml_multiprocess_mode(tmp_path):
    """Under BentoML the histograms live in Prometheus' multiprocess files: every input's
    own buckets come out under the one name ``refracture_input_value``."""
    import subprocess
    import sys
    import os

    code = (
        "import numpy as np\n"
        "from tests.training.test_site import _reference\n"
        "from features.records import inspect_records\n"
        "from serving.monitoring.drift_metrics import DriftMetrics\n"
        "ref, rec = _reference()\n"
        "d = DriftMetrics(ref, ['adjacent_fracture'])\n"
        "d.observe(inspect_records(rec.head(20)).typed, [{'outcomes': {'adjacent_fracture': {'probability': 0.1, 'horizon_months': 24.0}}}] * 20)\n"
        "from prometheus_client import CollectorRegistry, generate_latest\n"
        "from prometheus_client.multiprocess import MultiProcessCollector\n"
        "r = CollectorRegistry(); MultiProcessCollector(r); print(generate_latest(r).decode())\n")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert 'refracture_input_value_bucket{input="hu_index_preop",le="+Inf"} 20.0' in text
    assert 'refracture_input_value_bucket{input="age_years",le="+Inf"} 20.0' in text
    assert 'refracture_predicted_risk_count{horizon_months="24",outcome="adjacent_fracture"} 20.0' in text


def test_bulk_histogram_update_matches_observe_one_by_one():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from serving.monitoring.drift_metrics import _add_buckets, _bucket_counts

    x = np.array([0.5, 1.0, 1.0, 2.0, 3.5, 10.0, -4.0, 7.0])
    texts = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        h = Histogram("v", "x", ["input"], buckets=[1.0, 2.0, 7.0], registry=registry).labels(input="a")
        if bulk:
            _add_buckets(h, _bucket_counts(np.asarray(h._upper_bounds), x), float(x.sum()))
        else:
            for v in x:
                h.observe(v)
        texts.append("\n".join(line for line in generate_latest(registry).decode().splitlines()
                               if "_created" not in line))  # creation time differs
    assert texts[0] == texts[1] and 'v_bucket{input="a",le="7.0"} 7.0' in texts[0]
