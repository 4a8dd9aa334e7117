"""The realized-calibration alert rules (docs/prometheus/refracture-realized.rules.yml): valid,
unit-tested by promtool, reading the documented gauges, and deciding as ``refracture
performance`` does (the calibration charts' peak against their threshold; the slope)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from serving.monitoring.prediction_log import CHART_GAUGES
from training.calibration_cusum import chart_alerts
from training.realized import MIN_EVENTS_ALERT, MIN_MATURED_ALERT, SLOPE_ALERT_BELOW, calibration_alerts

RULES = Path(__file__).resolve().parents[2] / "docs" / "prometheus"
RULE_FILE = RULES / "refracture-realized.rules.yml"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_the_rules_are_valid_and_fire_exactly_where_expected():
    for args in (["check", "rules", RULE_FILE.name], ["test", "rules", "refracture-realized.rules.test.yml"]):
        run = subprocess.run(["promtool", *args], cwd=RULES, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr


def test_the_rules_read_documented_gauges():
    used = set(re.findall(r"\b(refracture_realized_[a-z_]+)\b", RULE_FILE.read_text()))
    docs = (RULES.parent / "monitoring.md").read_text()
    assert used and all(f"`{name}`" in docs for name in used), used


def test_the_rules_alert_on_the_champions_charts_and_the_service_exports_them():
    text = RULE_FILE.read_text()
    for direction in ("over_prediction", "under_prediction"):
        sel = f'{{role="champion",direction="{direction}"}}'
        assert f"refracture_realized_cusum_peak{sel}\n            >= refracture_realized_cusum_threshold{sel}" in text
    exported = {f"refracture_realized_cusum{'' if k == 'statistic' else '_' + k}" for k in CHART_GAUGES}
    used = set(re.findall(r"\b(refracture_realized_cusum[a-z_]*)\b", text))
    assert used and used <= exported, used - exported
    # the O/E band is no alert any more (it raised false alarms in 30 % of calibrated deployments)
    assert "refracture_realized_observed_expected{role" not in text.split("groups:")[1]
    assert text.count(f"refracture_realized_matured{{role=\"champion\"}} >= {MIN_MATURED_ALERT}") == 1
    assert text.count(f"refracture_realized_events{{role=\"champion\"}} >= {MIN_EVENTS_ALERT}") == 1
    assert f"_ci_high{{role=\"champion\"}} < {SLOPE_ALERT_BELOW:g}" in text


def test_the_command_decides_as_the_rules_on_their_unit_test():
    """The scenario of refracture-realized.rules.test.yml, through ``chart_alerts`` and
    (the slope) ``calibration_alerts``."""
    charts = pd.DataFrame([
        # outcome, role, direction, statistic, peak, threshold
        ("adjacent_fracture", "champion", "over_prediction", 5.1, 8.2, 6.95),
        ("adjacent_fracture", "champion", "under_prediction", 0.0, 7.3, 7.4),
        ("remote_fracture", "champion", "under_prediction", 9.0, 9.0, 7.4),
        ("cemented_refracture", "champion", "over_prediction", 2.0, 2.0, 6.95),
        ("adjacent_fracture", "challenger", "over_prediction", 20.0, 20.0, 6.95),
    ], columns=["outcome", "role", "direction", "statistic", "peak", "threshold"])
    got = {(c.outcome, c.direction) for c in chart_alerts(charts).itertuples()}
    assert got == {("adjacent_fracture", "over_prediction"), ("remote_fracture", "under_prediction")}
    nan = float("nan")
    rows = pd.DataFrame([
        # outcome, horizon, role, slope high, matured, events
        ("adjacent_fracture", 24, "champion", 0.7, 300, 40),
        ("cemented_refracture", 24, "champion", 0.7, 300, 8),
    ], columns=["outcome", "horizon_months", "role", "calibration_slope_ci_high", "matured", "events"])
    rows = rows.assign(model_version="1", calibration_slope=nan, calibration_slope_ci_low=nan, observed_expected=1.0,
                       observed_expected_ci_low=0.8, observed_expected_ci_high=1.2)
    got = {(a.outcome, a.horizon_months, a.alert) for a in calibration_alerts(rows).itertuples()}
    assert got == {("adjacent_fracture", 24, "slope_low")}
