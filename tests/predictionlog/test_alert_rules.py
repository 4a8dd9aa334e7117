"""The realized-calibration alert rules (docs/prometheus/refracture-realized.rules.yml): valid,
unit-tested by promtool, reading the documented gauges, and deciding as ``refracture
performance`` does."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from training.realized import MIN_EVENTS_ALERT, MIN_MATURED_ALERT, OE_BAND, SLOPE_ALERT_BELOW, calibration_alerts

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


def test_the_rules_and_the_command_use_one_band():
    text = RULE_FILE.read_text()
    assert f"refracture_realized_observed_expected{{role=\"champion\"}} < {OE_BAND[0]:g}" in text
    assert f"refracture_realized_observed_expected{{role=\"champion\"}} > {OE_BAND[1]:g}" in text
    assert text.count(f"refracture_realized_matured{{role=\"champion\"}} >= {MIN_MATURED_ALERT}") == 3
    assert text.count(f"refracture_realized_events{{role=\"champion\"}} >= {MIN_EVENTS_ALERT}") == 3
    assert f"_ci_high{{role=\"champion\"}} < {SLOPE_ALERT_BELOW:g}" in text


def test_the_command_decides_as_the_rules_on_their_unit_test():
    """The scenario of refracture-realized.rules.test.yml, through ``calibration_alerts``."""
    nan = float("nan")
    rows = pd.DataFrame([
        # outcome, horizon, role, O/E, low, high, slope high, matured, events
        ("adjacent_fracture", 24, "champion", 0.7, 0.55, 0.9, 0.7, 300, 40),
        ("cemented_refracture", 24, "champion", 0.7, nan, 1.1, 1.3, 300, 25),
        ("remote_fracture", 24, "champion", 0.6, nan, 0.9, nan, 50, 8),
        ("adjacent_fracture", 12, "champion", 1.4, 1.1, 1.8, nan, 200, 30),
        ("remote_fracture", 12, "champion", 0.5, nan, 0.8, nan, 400, 6),
    ], columns=["outcome", "horizon_months", "role", "observed_expected", "observed_expected_ci_low",
                "observed_expected_ci_high", "calibration_slope_ci_high", "matured", "events"])
    rows = rows.assign(model_version="1", calibration_slope=nan, calibration_slope_ci_low=nan)
    got = {(a.outcome, a.horizon_months, a.alert) for a in calibration_alerts(rows).itertuples()}
    assert got == {("adjacent_fracture", 24, "over_prediction"), ("adjacent_fracture", 24, "slope_low"),
                   ("adjacent_fracture", 12, "under_prediction")}
