"""The realized-performance report: one self-contained HTML page on how the served models
did on the patients they scored, for a hospital's model-governance board.

Built like the site report (``training.site_report``: same page style, the same
performance tables, calibration and decision-curve figures, inline PNGs, no script, no
outside request), from ``training.realized.Realized``. It returns text and Figures and
writes nothing; ``refracture performance`` writes the files and logs the MLflow run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from features.labels import horizon_days
from training.realized import Realized
from training.site_report import SiteReport, _calibration_sentence, _ci, _e, _pct, _performance_section, html_page


def _latest_matured(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per outcome and version, the row of the longest horizon with matured predictions."""
    rows = metrics.sort_values("horizon").groupby(["outcome", "cohort"], sort=False).tail(1)
    return rows.sort_values(["outcome", "cohort"])


def _month_table(by_month: pd.DataFrame, outcome: str, horizon_months: float) -> str:
    rows = by_month[(by_month["outcome"] == outcome) & np.isclose(by_month["horizon_months"], horizon_months)]
    if rows.empty:
        return ""
    body = []
    for _, r in rows.sort_values(["model_version", "role", "month"]).iterrows():
        body.append(f"<tr><td class=l>{_e(r['month'])}</td><td class=l>v{_e(r['model_version'])} ({_e(r['role'])})</td>"
                    f"<td>{int(r['n'])}</td><td>{int(r['events'])}</td><td>{_pct(r['mean_predicted'])}</td>"
                    f"<td>{_pct(r['observed_risk'])}</td><td>{_ci(r, 'observed_expected')}</td>"
                    f"<td>{_ci(r, 'calibration_slope')}</td><td>{_ci(r, 'td_auroc', 3)}</td></tr>")
    return (f"<h4>By month of prediction, {horizon_months:g}-month risk</h4><table><tr><th class=l>Month</th>"
            "<th class=l>Version</th><th>Matured</th><th>Events</th><th>Predicted (mean)</th><th>Observed</th>"
            "<th>Observed / expected</th><th>Calibration slope</th><th>AUROC</th></tr>" + "".join(body) + "</table>")


def _paired_section(paired: pd.DataFrame) -> str:
    if paired.empty:
        return ("<h2>Champion and challenger on the same patients</h2><p>No challenger was scored in shadow on "
                "predictions whose outcome has matured: there is no paired comparison yet.</p>")
    body = []
    for _, r in paired.sort_values(["outcome", "horizon_months"]).iterrows():
        cell = lambda who, k, d=2: _ci(pd.Series({k: r[f"{who}_{k}"], f"{k}_ci_low": r[f"{who}_{k}_ci_low"],  # noqa: E731
                                                   f"{k}_ci_high": r[f"{who}_{k}_ci_high"]}), k, d)
        body.append(f"<tr><td class=l>{_e(r['outcome'].replace('_', ' '))}</td><td>{r['horizon_months']:g} months</td>"
                    f"<td>v{_e(r['champion_version'])} / v{_e(r['challenger_version'])}</td><td>{int(r['matured'])}</td>"
                    f"<td>{int(r['events'])}</td><td>{cell('champion', 'observed_expected')}</td>"
                    f"<td>{cell('challenger', 'observed_expected')}</td><td>{cell('champion', 'calibration_slope')}</td>"
                    f"<td>{cell('challenger', 'calibration_slope')}</td><td>{cell('champion', 'td_auroc', 3)}</td>"
                    f"<td>{cell('challenger', 'td_auroc', 3)}</td><td>{_ci(r, 'td_auroc_diff', 3)}</td></tr>")
    return ("<h2>Champion and challenger on the same patients</h2><p class=note>The challenger was scored in "
            "shadow on the same requests (its answer was logged, never shown). Both are judged on the same "
            "matured predictions and the same bootstrap resamples, so the difference in AUROC has a paired "
            "interval: an interval that excludes 0 is a difference larger than chance.</p><table><tr>"
            "<th class=l>Outcome</th><th>Horizon</th><th>Champion / challenger</th><th>Matured</th><th>Events</th>"
            "<th>O/E champion</th><th>O/E challenger</th><th>Slope champion</th><th>Slope challenger</th>"
            "<th>AUROC champion</th><th>AUROC challenger</th><th>AUROC difference</th></tr>"
            + "".join(body) + "</table>")


def render_realized_report(realized: Realized, *, site: str, generated_on: str = "",
                           headline_months: float = 24.0) -> SiteReport:
    """The page (module docstring). ``site``: the hospital's name shown to the reader;
    ``generated_on``: a date text from the caller (nothing here reads the clock)."""
    figures: dict[str, Figure] = {}
    m = realized.metrics
    parts = [f"<h1>Refracture risk models at {_e(site)}: what was predicted, and what happened</h1>",
             "<p class=meta>Realized performance on the patients the service scored, once their outcomes "
             "arrived in a later export" + (f" · report of {_e(generated_on)}" if generated_on else "") + "</p>"]
    if m.empty:
        parts.append("<div class=summary><p>No logged prediction has a linked, matured outcome yet: link a later "
                     "export with <code>refracture outcomes --raw DIR</code> once the first horizon (3 months) "
                     "has passed for some of the patients scored.</p></div>")
    else:
        latest = _latest_matured(m)
        sentences = [_calibration_sentence(r, r["outcome"], r["cohort"]) for _, r in latest.iterrows()]
        if not np.isclose(latest["horizon"], horizon_days(headline_months), atol=1).all():
            sentences.append(f"Some predictions have not reached {headline_months:g} months yet: the figures above are "
                             "at the longest horizon reached so far.")
        parts.append("<div class=summary><h2>Summary</h2><ul>" + "".join(f"<li>{s}</li>" for s in sentences)
                     + "</ul></div>")
        cohorts = list(dict.fromkeys(m.sort_values(["role", "model_version"])["cohort"]))
        parts.append(_performance_section(m, realized.calibration if len(realized.calibration) else None,
                                          realized.decision if len(realized.decision) else None, cohorts,
                                          horizon_days(headline_months), figures))
        parts.append("<p class=note>Only <b>matured</b> predictions count at a horizon: those whose export was cut at "
                     "least that long after the surgery. Each procedure counts once per model version (its first "
                     "prediction). Events among younger predictions are kept for later, or they would make the "
                     "model look as if it under-predicted.</p>")
        parts.append("<h2>Over time</h2><p class=note>A drift in observed/expected from month to month is what a "
                     "change at the site (patients referred, technique, imaging) looks like. A month with few events "
                     "has a wide interval: read the trend, not a single month.</p>")
        for outcome in m["outcome"].unique():
            horizon = float(m[m["outcome"] == outcome]["horizon_months"].max())
            table = _month_table(realized.by_month, outcome, horizon)
            if table:
                parts.append(f"<h3>{_e(outcome.replace('_', ' ').capitalize())}</h3>{table}")
    parts.append(_paired_section(realized.paired))
    parts.append("<h2>How to read and act on this</h2><ul>"
                 "<li><b>Observed/expected</b> with an interval that excludes 1 means the model's risks are off on "
                 "average at this site: check the data path first (units, a new scanner, a new referral source), "
                 "then <code>refracture recalibrate</code> on the linked export gives a challenger.</li>"
                 "<li><b>Calibration slope</b> below 1 means the risks are too extreme: high risks too high, low "
                 "risks too low.</li>"
                 "<li>A challenger replaces the champion only by a person's decision: <code>refracture promote</code> "
                 "shows this comparison before it moves the alias.</li></ul>"
                 "<p class=note>It holds summaries only (counts, means, model metrics), never a patient's record. "
                 "Risks are predictions for groups of similar patients, not causes.</p>")
    return SiteReport(html_page(f"Realized performance: {site}", parts), figures)

