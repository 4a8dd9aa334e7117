"""Figures of the site report: calibration per horizon, decision curve, input shifts.

Each function takes the DataFrames the report is built from (``training.time_metrics``
outputs stacked with ``outcome``/``cohort``/``horizon`` columns, ``features.drift``
outputs) and returns a matplotlib Figure on its own Agg canvas (no pyplot global state).
Nothing here reads or writes files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from features.labels import DAYS_PER_MONTH

#: One colour per cohort, in the order the cohorts appear (site first by convention).
COLOURS = ("#c0392b", "#2c6fbb", "#7f8c8d", "#8e44ad")


def months(horizon_days: float) -> str:
    """A horizon in days as months for people, e.g. 730.5 -> '24 months'."""
    m = float(horizon_days) / DAYS_PER_MONTH
    return f"{m:.0f} months" if abs(m - round(m)) < 0.05 else f"{m:.1f} months"


def _figure(n_panels: int = 1, width: float = 4.2, height: float = 4.0) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * n_panels, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]
    return fig, axes


def calibration_figure(calibration: pd.DataFrame, outcome: str, cohorts: list[str]) -> Figure:
    """Observed (Aalen-Johansen, 95 % patient-bootstrap CI) vs mean predicted risk per risk decile,
    one panel per horizon, one series per cohort, for one outcome. Risks in %."""
    rows = calibration[calibration["outcome"] == outcome]
    horizons = sorted(rows["horizon"].unique())
    fig, axes = _figure(max(len(horizons), 1))
    for ax, h in zip(axes, horizons):
        top = 0.0
        for colour, cohort in zip(COLOURS, cohorts):
            part = rows[(rows["horizon"] == h) & (rows["cohort"] == cohort)].sort_values("mean_predicted")
            if part.empty:
                continue
            x, y = 100 * part["mean_predicted"].to_numpy(), 100 * part["observed"].to_numpy()
            err = np.vstack([y - 100 * part["observed_ci_low"].to_numpy(), 100 * part["observed_ci_high"].to_numpy() - y])
            ax.errorbar(x, y, yerr=np.clip(np.nan_to_num(err), 0, None), marker="o", ms=3.5, lw=1.2, capsize=2,
                        color=colour, label=cohort)
            top = max(top, np.nanmax(x), np.nanmax(100 * part["observed_ci_high"].to_numpy(), initial=0.0))
        top = top * 1.05 + 0.5
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls=":", label="perfect calibration")
        ax.set(xlim=(0, top), ylim=(0, top), title=f"by {months(h)}", xlabel="Predicted risk, decile mean (%)",
               ylabel="Observed risk (%)")
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(f"{outcome.replace('_', ' ')}: predicted vs observed risk", fontsize=10)
    return fig


def decision_curve_figure(decision: pd.DataFrame, outcome: str, cohorts: list[str], horizon: float) -> Figure:
    """Net benefit of treating when the predicted risk is at least the threshold, per
    cohort, with each cohort's treat-all line and treat-none, at ``horizon`` (days)."""
    # Within a day: 730 and 730.5 days are both 24 months.
    rows = decision[(decision["outcome"] == outcome) & np.isclose(decision["horizon"], horizon, rtol=0, atol=1.0)]
    fig, (ax,) = _figure(1, 6.0, 4.2)
    low, top = 0.0, 0.0
    for colour, cohort in zip(COLOURS, cohorts):
        part = rows[rows["cohort"] == cohort].sort_values("threshold")
        if part.empty:
            continue
        t = 100 * part["threshold"].to_numpy()
        ax.plot(t, part["net_benefit"], color=colour, lw=1.6, label=f"model, {cohort}")
        ax.plot(t, part["treat_all"], color=colour, lw=0.9, ls="--", label=f"treat all, {cohort}")
        low = min(low, float(part["net_benefit"].min()))
        top = max(top, float(part["net_benefit"].max()), float(part["treat_all"].max()))
    ax.axhline(0, color="black", lw=0.8, label="treat none")
    if not rows.empty:  # treat-all plunges below zero at high thresholds: keep the model in view
        ax.set_ylim(low - 0.002, max(top, 0.005) * 1.15 + 0.001)
    ax.set(xlabel="Threshold risk for acting (%)", ylabel="Net benefit (true positives per patient)",
           title=f"{outcome.replace('_', ' ')}: decision curve by {months(horizon)}")
    ax.legend(fontsize=7, loc="upper right")
    return fig


def shift_figure(name: str, unit: str, labels: list[str], ref: np.ndarray, now: np.ndarray,
                 missing_ref: float, missing_now: float, site: str, training_site: str) -> Figure:
    """Share of rows per reference bin (and missing), training reference vs site, for one
    input. ``ref``/``now``: shares of present values per bin (``features.drift.current_shares``)."""
    ref_all = np.r_[np.asarray(ref) * (1 - missing_ref), missing_ref] * 100
    now_all = np.r_[np.asarray(now) * (1 - missing_now), missing_now] * 100
    ticks = list(labels) + ["missing"]
    fig, (ax,) = _figure(1, max(4.5, 0.55 * len(ticks) + 1.5), 3.4)
    x = np.arange(len(ticks))
    ax.bar(x - 0.2, ref_all, width=0.4, color=COLOURS[1], label=f"{training_site} (training reference)")
    ax.bar(x + 0.2, now_all, width=0.4, color=COLOURS[0], label=site)
    ax.set_ylim(0, max(ref_all.max(initial=0), now_all.max(initial=0)) * 1.3 + 1)  # room for the legend
    ax.set_xticks(x, ticks, rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="Share of procedures (%)", title=f"{name}" + (f" [{unit}]" if unit else ""))
    ax.legend(fontsize=7)
    return fig
