"""The site report: one self-contained HTML page on how the model does at a new hospital
and how its patients differ from the training data.

Built for a data scientist to send to a clinical lead: plain words, every risk with its
horizon, every shift described as an association. Self-contained: inline CSS, figures as
PNG ``data:`` URIs, no script and no outside request, so it opens offline and from an
email attachment.

Inputs are DataFrames (the CLI computes them and passes them in):

- ``drift``: ``features.drift.drift_table`` output, with the ``reference`` it came from
  and the site's ``records`` (for the distribution plots);
- ``metrics``: ``training.time_metrics.evaluate_at_horizons`` rows with two added columns,
  ``outcome`` and ``cohort`` (e.g. the site's name and the training site's);
- ``calibration``: ``calibration_table`` rows with ``outcome``, ``cohort``, ``horizon``;
- ``decision``: ``net_benefit`` rows with ``outcome``, ``cohort``, ``horizon``.

Horizons are in days (as ``time_metrics`` takes them) and shown in months. The
performance frames are optional (a drift-only report for unlabelled data).

Layering: this lives in ``training/`` beside ``report.py`` (Table 1, model card) and
``plots.py``: it reads ``features.drift`` and ``training.time_metrics`` outputs, so it sits
above both, and the CLI (``refracture site-report``) writes its files and logs the
figures to MLflow. It returns text and Figures; it writes nothing.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from features.catalog import FEATURES_BY_NAME
from features.drift import MISSING_SHIFT, PRESENCE_ONLY, PSI_MAJOR, PSI_MODERATE, current_shares
from features.labels import horizon_days
from features.records import RECORD_FIELDS_BY_FLAT
from training.site_figures import calibration_figure, decision_curve_figure, months, shift_figure

_METRIC_COLUMNS = ("horizon", "n", "events", "td_auroc", "observed_expected", "calibration_slope",
                   "calibration_intercept", "brier", "mean_predicted", "observed_risk")
_CALIBRATION_COLUMNS = ("outcome", "cohort", "horizon", "mean_predicted", "observed", "observed_ci_low", "observed_ci_high")
_DECISION_COLUMNS = ("outcome", "cohort", "horizon", "threshold", "net_benefit", "treat_all")
_DRIFT_COLUMNS = ("input", "kind", "unit", "psi", "status", "p_value", "wasserstein", "mean_ref", "mean_now",
                  "missing_ref", "missing_now", "missing_shift", "rank")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
.meta{color:#666}.summary{background:#f6f8fa;border-left:4px solid #2c6fbb;padding:.6em 1.2em}
.note{color:#555;font-size:.92em}table{border-collapse:collapse;margin:.8em 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:.3em .55em;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}tr.major td{background:#fdecea}tr.moderate td{background:#fff6e0}
img{max-width:100%;height:auto;margin:.5em 0}code{background:#f3f3f3;padding:0 .2em}
"""


@dataclass(frozen=True)
class SiteReport:
    """The report: ``html`` (one self-contained page) and the ``figures`` in it, keyed by a
    file name (``calibration_<outcome>.png``, ``decision_curve_<outcome>_<m>m.png``,
    ``shift_<input>.png``) for ``mlflow.log_figure``."""

    html: str
    figures: dict[str, Figure] = field(default_factory=dict)


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    # No metadata: the same inputs give the same bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    fig.png_bytes = buf.getvalue()  # the caller writes the same bytes to a file without drawing again
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    return f'<img src="{_png(fig)}" alt="{html.escape(alt)}">'


def _at(horizons: pd.Series, horizon: float) -> np.ndarray:
    """Rows at ``horizon`` days, within a day (730 and 730.5 are both 24 months)."""
    return np.isclose(horizons.to_numpy(dtype="float64"), horizon, rtol=0, atol=1.0)


def _e(x: object) -> str:
    return html.escape(str(x))


def _pct(x: float, digits: int = 1) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.{digits}f} %"


def _num(x: float, digits: int = 2) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _ci(row: pd.Series, key: str, digits: int = 2) -> str:
    lo, hi = row.get(f"{key}_ci_low", np.nan), row.get(f"{key}_ci_high", np.nan)
    ci = f" ({_num(lo, digits)} to {_num(hi, digits)})" if np.isfinite(lo) and np.isfinite(hi) else ""
    return _num(row[key], digits) + ci


def input_label(name: str) -> str:
    """Clinical words for an input name: the catalogue's label, else the contract name in
    words with its time point, e.g. 'hu index (pre-op)'."""
    spec = FEATURES_BY_NAME.get(name)
    if spec is not None:
        return spec.label
    field_ = RECORD_FIELDS_BY_FLAT.get(name)
    if field_ is not None and field_.timepoint:
        return f"{field_.spec.name.replace('_', ' ')} ({field_.timepoint.replace('op', '-op')})"
    return name.replace("_", " ")


def _definition(name: str) -> str:
    field_ = RECORD_FIELDS_BY_FLAT.get(name)
    if field_ is not None:
        return field_.spec.definition
    spec = FEATURES_BY_NAME.get(name)
    return spec.definition if spec is not None else ""


# ---------------------------------------------------------------- plain-words sentences

def _calibration_sentence(row: pd.Series, outcome: str, cohort: str) -> str:
    """What the observed/expected ratio and slope at one horizon say, in words."""
    when = months(row["horizon"])
    words = outcome.replace("_", " ")
    text = (f"<b>{_e(words)}</b> by {when} at {_e(cohort)}: the model predicted {_pct(row['mean_predicted'])} on "
            f"average; {_pct(row['observed_risk'])} happened (deaths counted as a competing event).")
    lo, hi = row.get("observed_expected_ci_low", np.nan), row.get("observed_expected_ci_high", np.nan)
    if np.isfinite(hi) and hi < 1:
        text += f" Observed/expected {_ci(row, 'observed_expected')}: the model <b>over-predicts</b> here."
    elif np.isfinite(lo) and lo > 1:
        text += f" Observed/expected {_ci(row, 'observed_expected')}: the model <b>under-predicts</b> here."
    else:
        text += f" Observed/expected {_ci(row, 'observed_expected')}: consistent with no overall over- or under-prediction."
    lo, hi = row.get("calibration_slope_ci_low", np.nan), row.get("calibration_slope_ci_high", np.nan)
    if np.isfinite(hi) and hi < 1:
        text += (f" Calibration slope {_ci(row, 'calibration_slope')}: predictions are <b>too extreme</b> here "
                 "(high risks too high, low risks too low).")
    elif np.isfinite(lo) and lo > 1:
        text += f" Calibration slope {_ci(row, 'calibration_slope')}: predictions are too modest here."
    return text


def _drift_sentence(drift: pd.DataFrame, site: str, training_site: str) -> str:
    major = drift[drift["status"] == "major shift"]
    moderate = drift[drift["status"] == "moderate shift"]
    missing = drift[drift["missing_shift"]]
    text = (f"Of {len(drift)} inputs, {len(major)} differ a lot between {_e(site)} and the {_e(training_site)} "
            f"training data (PSI ≥ {PSI_MAJOR:g}) and {len(moderate)} moderately "
            f"({PSI_MODERATE:g} ≤ PSI &lt; {PSI_MAJOR:g}); {len(missing)} are missing more or less often "
            f"(by ≥ {100 * MISSING_SHIFT:.0f} percentage points).")
    n_now = int(drift["n_now"].iloc[0]) if len(drift) else 0
    if n_now < 500:  # PSI x n is chi-square under no shift: small samples give PSI ~0.05-0.1 by chance
        text += (f" With {n_now} procedures, PSI values up to about {PSI_MODERATE:g} can arise by chance; "
                 "read them with the p-values.")
    top = [r for _, r in major.head(3).iterrows()] or [r for _, r in moderate.head(3).iterrows()]
    parts = []
    for r in top:
        if r["kind"] == "numeric" and np.isfinite(r["mean_now"]):
            parts.append(f"{_e(input_label(r['input']))} (mean {r['mean_ref']:.3g} → {r['mean_now']:.3g} {_e(r['unit'])})")
        else:
            parts.append(_e(input_label(r["input"])))
    if parts:
        text += " The largest: " + "; ".join(parts) + "."
    return text


# ---------------------------------------------------------------- sections

def _performance_table(metrics: pd.DataFrame, outcome: str, cohorts: list[str]) -> str:
    head = ("<tr><th class=l>Horizon</th><th class=l>Cohort</th><th>Procedures</th><th>Events</th>"
            "<th>Predicted (mean)</th><th>Observed</th><th>Observed / expected</th><th>Calibration slope</th>"
            "<th>Calibration intercept</th><th>AUROC</th><th>Brier</th></tr>")
    body = []
    rows = metrics[metrics["outcome"] == outcome]
    for h in sorted(rows["horizon"].unique()):
        for cohort in cohorts:
            part = rows[(rows["horizon"] == h) & (rows["cohort"] == cohort)]
            for _, r in part.iterrows():
                body.append(f"<tr><td class=l>{months(h)}</td><td class=l>{_e(cohort)}</td><td>{int(r['n'])}</td>"
                            f"<td>{int(r['events'])}</td><td>{_pct(r['mean_predicted'])}</td><td>{_pct(r['observed_risk'])}</td>"
                            f"<td>{_ci(r, 'observed_expected')}</td><td>{_ci(r, 'calibration_slope')}</td>"
                            f"<td>{_ci(r, 'calibration_intercept')}</td><td>{_ci(r, 'td_auroc', 3)}</td>"
                            f"<td>{_ci(r, 'brier', 4)}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _performance_section(metrics, calibration, decision, cohorts, decision_horizon, figures) -> str:
    out = ["<h2>How well the model predicts here</h2>",
           "<p class=note>Each risk is the probability of the fracture <i>by</i> the stated time after the "
           "operation, with death counted as a competing event. Observed risks are Aalen-Johansen estimates, "
           "which use every patient for as long as they were followed. Brackets are 95 % bootstrap "
           "intervals. <b>Observed/expected</b> below 1 means the model predicts more fractures than occur; "
           "a <b>calibration slope</b> below 1 means its predictions are too extreme; <b>AUROC</b> (0.5 = chance, "
           "1 = perfect) measures how well it ranks patients who fracture above those who do not; the <b>Brier</b> "
           "score is the mean squared error of the predicted risk (lower is better).</p>"]
    for outcome in metrics["outcome"].unique():
        out.append(f"<h3>{_e(outcome.replace('_', ' ').capitalize())}</h3>")
        rows = metrics[(metrics["outcome"] == outcome) & _at(metrics["horizon"], decision_horizon)]
        sentences = [_calibration_sentence(r, outcome, r["cohort"]) for _, r in rows.iterrows()]
        if sentences:
            out.append("<ul>" + "".join(f"<li>{s}</li>" for s in sentences) + "</ul>")
        out.append(_performance_table(metrics, outcome, cohorts))
        if calibration is not None and (calibration["outcome"] == outcome).any():
            fig = calibration_figure(calibration, outcome, cohorts)
            figures[f"calibration_{outcome}.png"] = fig
            out.append(_img(fig, f"Calibration of {outcome} per horizon"))
            out.append("<p class=note>Each point is a tenth of the procedures grouped by predicted risk; on the "
                       "dotted line, what the model predicts is what happened. Bars: 95 % intervals.</p>")
        if decision is not None and ((decision["outcome"] == outcome)
                                     & _at(decision["horizon"], decision_horizon)).any():
            fig = decision_curve_figure(decision, outcome, cohorts, decision_horizon)
            figures[f"decision_curve_{outcome}_{months(decision_horizon).split()[0]}m.png"] = fig
            out.append(_img(fig, f"Decision curve of {outcome}"))
            out.append(f"<p class=note>Net benefit by {months(decision_horizon)}: above both the treat-all line and "
                       "zero, acting on the model's risk at that threshold (e.g. closer follow-up or "
                       "anti-osteoporosis treatment) does more good than acting on everyone or no one, "
                       "weighing a missed fracture against an unnecessary intervention at the threshold's odds.</p>")
    return "".join(out)


def _subgroup_section(subgroups: pd.DataFrame, horizon_months: float) -> str:
    out = [f"<h2>Subgroups (by {horizon_months:g} months)</h2><p class=note>Levels with fewer than 10 events "
           "show no metrics: too few to estimate them.</p>"]
    for outcome in subgroups["outcome"].unique():
        rows = subgroups[subgroups["outcome"] == outcome]
        body = []
        for _, r in rows.iterrows():
            has = "td_auroc" in r and pd.notna(r.get("td_auroc"))
            cell = (lambda k, d=2: _ci(r, k, d)) if has else (lambda k, d=2: "–")
            body.append(f"<tr><td class=l>{_e(r['cohort'])}</td><td class=l>{_e(r['subgroup'])}</td>"
                        f"<td class=l>{_e(r['level'])}</td><td>{int(r['n'])}</td><td>{int(r['events'])}</td>"
                        f"<td>{cell('observed_expected')}</td><td>{cell('calibration_slope')}</td>"
                        f"<td>{cell('td_auroc', 3)}</td></tr>")
        out.append(f"<h3>{_e(outcome.replace('_', ' ').capitalize())}</h3><table><tr><th class=l>Cohort</th>"
                   "<th class=l>Subgroup</th><th class=l>Level</th><th>Procedures</th><th>Events</th>"
                   "<th>Observed / expected</th><th>Calibration slope</th><th>AUROC</th></tr>"
                   + "".join(body) + "</table>")
    return "".join(out)


def _drift_table_html(drift: pd.DataFrame) -> str:
    head = ("<tr><th>Rank</th><th class=l>Input</th><th class=l>What it is</th><th>PSI</th><th class=l>Reading</th>"
            "<th>p (G-test)</th><th>Shift (unit)</th><th>Mean: training → here</th>"
            "<th>Missing: training → here</th></tr>")
    body = []
    for _, r in drift.iterrows():
        cls = {"major shift": " class=major", "moderate shift": " class=moderate"}.get(r["status"], "")
        unit = f" {_e(r['unit'])}" if r["unit"] else ""
        shift = f"{r['wasserstein']:.3g}{unit}" if np.isfinite(r["wasserstein"]) else "–"
        mean = f"{r['mean_ref']:.3g} → {r['mean_now']:.3g}{unit}" if np.isfinite(r["mean_now"]) else "–"
        p = "–" if not np.isfinite(r["p_value"]) else ("&lt; 0.001" if r["p_value"] < 0.001 else f"{r['p_value']:.3f}")
        miss = f"{_pct(r['missing_ref'])} → {_pct(r['missing_now'])}" + (" ⚠" if r["missing_shift"] else "")
        body.append(f"<tr{cls}><td>{int(r['rank'])}</td><td class=l><code>{_e(r['input'])}</code><br>"
                    f"{_e(input_label(r['input']))}</td><td class=l>{_e(_definition(r['input']))}</td>"
                    f"<td>{r['psi']:.3f}</td><td class=l>{_e(r['status'])}</td><td>{p}</td><td>{shift}</td>"
                    f"<td>{mean}</td><td>{miss}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _drift_section(drift, reference, records, computed, site, training_site, top_inputs, figures) -> str:
    out = ["<h2>How the patients and measurements here differ from the training data</h2>",
           f"<p>{_drift_sentence(drift, site, training_site)}</p>",
           "<p class=note>These differences describe who is treated here and how they are measured, compared "
           "with the training data. They are associations: a shifted input can help explain why the model "
           "performs differently here, but this report does not show that any one input caused it, nor that "
           "changing a patient's value would change their risk.</p>"]
    shifted = drift[(drift["status"] != "stable") | drift["missing_shift"]]
    shifted = shifted[~shifted["kind"].isin(PRESENCE_ONLY)].head(top_inputs)
    if shifted.empty:
        out.append("<p>No input moved beyond the stable range; no distribution plots are shown.</p>")
    for _, r in shifted.iterrows():
        labels, ref, now = current_shares(reference, r["input"], records, computed)
        fig = shift_figure(input_label(r["input"]), r["unit"], labels, ref, now, r["missing_ref"], r["missing_now"],
                           site, training_site)
        figures[f"shift_{r['input']}.png"] = fig
        out.append(_img(fig, f"Distribution of {r['input']} here vs training"))
    out.append("<h3>Every input, largest shift first</h3>")
    out.append(_drift_table_html(drift))
    out.append(f"<p class=note><b>PSI</b> (population stability index) compares the share of procedures in "
               f"each tenth of the training data's range (and the share missing): below {PSI_MODERATE:g} no "
               f"meaningful shift, {PSI_MODERATE:g}–{PSI_MAJOR:g} moderate, {PSI_MAJOR:g} or more major (Siddiqi "
               "2006). <b>p (G-test)</b> says whether the difference is larger than chance for these numbers of "
               "procedures. <b>Shift</b> is how far, in the input's unit, the values moved on average "
               "(Wasserstein distance on the training bins; a lower bound). Missing shares that moved by "
               f"{100 * MISSING_SHIFT:.0f} percentage points or more are marked ⚠.</p>")
    return "".join(out)


def render_site_report(drift: pd.DataFrame, reference: dict, records: pd.DataFrame, *, site: str,
                       training_site: str, metrics: pd.DataFrame | None = None,
                       calibration: pd.DataFrame | None = None, decision: pd.DataFrame | None = None,
                       computed: pd.DataFrame | None = None, model: str = "", generated_on: str = "",
                       decision_horizon_months: float = 24.0, top_inputs: int = 6,
                       subgroups: pd.DataFrame | None = None, followup: list[str] | None = None) -> SiteReport:
    """Render the site report (see the module docstring for the inputs).

    ``site``/``training_site``: names shown to the reader; the performance frames'
    ``cohort`` values are shown as given, cohorts ordered as they first appear in
    ``metrics``, and the first one (put the site first) is the one the summary describes. ``model``: e.g. 'refracture-cemented_refracture v3'. ``generated_on``: a
    date text from the caller (nothing here reads the clock, so the same inputs give the
    same bytes). ``decision_horizon_months``: the horizon of the summary sentences and
    decision curves. ``top_inputs``: most shifted inputs plotted. ``subgroups``: optional
    rows ``outcome``, ``cohort``, ``subgroup``, ``level``, ``n``, ``events`` and the
    headline metrics with CIs (``training.site_eval.evaluate_outcome``). ``followup``:
    sentences on how far the export ascertained deaths and fractures (the labels follow
    it: ``features.ascertainment``), shown under the title.

    Returns a ``SiteReport`` (HTML text and the Figures in it).
    """
    _require(drift, _DRIFT_COLUMNS, "drift")
    if metrics is not None:
        _require(metrics, _METRIC_COLUMNS + ("outcome", "cohort"), "metrics")
    if calibration is not None:
        _require(calibration, _CALIBRATION_COLUMNS, "calibration")
    if decision is not None:
        _require(decision, _DECISION_COLUMNS, "decision")
    figures: dict[str, Figure] = {}
    h = horizon_days(decision_horizon_months)
    parts = [f"<h1>Refracture risk model at {_e(site)}: local validation and data drift</h1>",
             f"<p class=meta>Model: {_e(model or 'not stated')} · trained on: {_e(training_site)} · "
             f"procedures compared: {int(drift['n_now'].iloc[0]) if 'n_now' in drift and len(drift) else 0}"
             + (f" · report of {_e(generated_on)}" if generated_on else "") + "</p>"]
    if followup:
        parts.append("<p class=meta>Follow-up: " + " ".join(_e(f) for f in followup) + "</p>")
    summary = [_drift_sentence(drift, site, training_site)]
    if metrics is not None:
        cohorts = list(dict.fromkeys(metrics["cohort"]))
        at_h = metrics[_at(metrics["horizon"], h) & (metrics["cohort"] == cohorts[0])]
        summary += [_calibration_sentence(r, r["outcome"], r["cohort"]) for _, r in at_h.iterrows()]
    parts.append("<div class=summary><h2>Summary</h2><ul>" + "".join(f"<li>{s}</li>" for s in summary) + "</ul></div>")
    if metrics is not None:
        parts.append(_performance_section(metrics, calibration, decision, cohorts, h, figures))
    else:
        parts.append("<p class=note>No outcomes were given, so this report shows data drift only.</p>")
    if subgroups is not None and len(subgroups):
        parts.append(_subgroup_section(subgroups, decision_horizon_months))
    parts.append(_drift_section(drift, reference, records, computed, site, training_site, top_inputs, figures))
    parts.append("<h2>About this report</h2><p class=note>It holds summaries only (shares, means, model "
                 "metrics), never a patient's record. The training reference stores, per input, the share of "
                 "procedures in bins of at least 10 patients. Risks are predictions for groups of similar "
                 "patients; how they relate to an input is an association, not a cause.</p>")
    return SiteReport(html_page(f"Site report: {site}", parts), figures)


def html_page(title: str, parts: list[str]) -> str:
    """One self-contained page in the reports' style: ``title`` (plain text) and the
    ``parts`` (HTML) in order."""
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title><style>{_CSS}</style>"
            "</head><body>" + "".join(parts) + "</body></html>")
