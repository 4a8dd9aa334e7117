"""Figures logged with each run: time-dependent ROC, calibration per horizon, decision curve,
risk over time, SHAP beeswarm and bar.

Each function returns a matplotlib Figure (Agg canvas, no global pyplot state except for
the SHAP plots, which shap draws with pyplot and which are closed after use).
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import shap
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

#: label -> (crude label at the horizon, predicted risk, IPCW weight); rows weighing 0 are ignored.
Curves = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def _figure(width: float = 6.0, height: float = 5.0) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _style(label: str) -> str:
    return "--" if label.startswith("oracle") else "-"


def roc_figure(curves: Curves, title: str) -> Figure:
    """Time-dependent ROC curves at one horizon (IPCW-weighted cases vs controls; Blanche
    2013 definition 2: deaths before the horizon are controls), AUROC in the legend."""
    fig, ax = _figure()
    for label, (y, p, w) in curves.items():
        keep = w > 0
        fpr, tpr, _ = roc_curve(y[keep], p[keep], sample_weight=w[keep])
        auc = roc_auc_score(y[keep], p[keep], sample_weight=w[keep])
        ax.plot(fpr, tpr, lw=1.5, ls=_style(label), label=f"{label} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="1 − specificity", ylabel="Sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def calibration_figure(tables: dict[str, pd.DataFrame], title: str) -> Figure:
    """Observed (Aalen-Johansen, 95 % CI) vs mean predicted risk by risk decile, one panel
    per horizon. ``tables``: label -> ``horizon_metrics.calibration_tables`` frame."""
    horizons = sorted({h for t in tables.values() for h in t["horizon_months"]})
    fig = Figure(figsize=(3.4 * len(horizons), 3.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(horizons), squeeze=False)[0]
    for ax, h in zip(axes, horizons):
        top = 0.0
        for label, table in tables.items():
            t = table[table["horizon_months"] == h]
            err = np.vstack([t["observed"] - t["observed_ci_low"], t["observed_ci_high"] - t["observed"]]).clip(0)
            ax.errorbar(t["mean_predicted"], t["observed"], yerr=err, marker="o", ms=3, lw=1.1, capsize=2,
                        ls=_style(label), label=label)
            top = max(top, float(t["mean_predicted"].max()), float(t["observed_ci_high"].max()))
        top = min(1.0, top * 1.1 + 0.005)
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls=":")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="Predicted risk (decile mean)", title=f"{h:g} months")
    axes[0].set_ylabel("Observed (Aalen-Johansen)")
    axes[0].legend(loc="upper left", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def decision_curve_figure(curves: dict[str, pd.DataFrame], title: str) -> Figure:
    """Net benefit vs threshold probability (Vickers 2008, death competing) with 95 % CIs,
    with treat-all and treat-none. ``curves``: label -> ``horizon_metrics.decision_curve``."""
    fig, ax = _figure(6.5, 5)
    first = next(iter(curves.values()))
    for label, c in curves.items():
        ax.plot(c["threshold"], c["net_benefit"], lw=1.4, ls=_style(label), marker="o", ms=3, label=label)
        ax.fill_between(c["threshold"], c["net_benefit_ci_low"], c["net_benefit_ci_high"], alpha=0.15)
    ax.plot(first["threshold"], first["treat_all"], color="black", lw=0.8, label="treat all")
    ax.axhline(0, color="grey", lw=0.8, label="treat none")
    low = float(min(c["net_benefit_ci_low"].min() for c in curves.values()))
    high = float(max(max(c["net_benefit_ci_high"].max(), c["treat_all"].max()) for c in curves.values()))
    ax.set(ylim=(min(-0.01, low), max(high * 1.1, 0.01)), xlabel="Threshold probability", ylabel="Net benefit",
           title=title)
    ax.legend(fontsize=8)
    return fig


def risk_over_time_figure(rows: dict[str, pd.DataFrame], title: str) -> Figure:
    """Mean predicted risk vs Aalen-Johansen observed risk at each horizon (calibration in
    the large over time). ``rows``: label -> per-horizon table with ``horizon_months``,
    ``mean_predicted`` and ``observed_risk`` (``horizon_metrics.evaluate_curve``)."""
    fig, ax = _figure()
    observed_done = False
    for label, t in rows.items():
        ax.plot(t["horizon_months"], t["mean_predicted"], marker="o", lw=1.4, ls=_style(label), label=f"{label}: mean predicted")
        if not observed_done:
            ax.plot(t["horizon_months"], t["observed_risk"], marker="s", color="black", lw=1.0,
                    label="observed (Aalen-Johansen)")
            observed_done = True
    ax.set(xlabel="Months after surgery", ylabel="Cumulative incidence", title=title, ylim=(0, None))
    ax.legend(fontsize=8)
    return fig


def _shap_explanation(expl, max_rows: int | None = None):
    return shap.Explanation(values=expl.values, base_values=np.full(len(expl.values), expl.base_value),
                            data=expl.feature_values.to_numpy(dtype="float64"), feature_names=expl.display_names)


def shap_beeswarm_figure(expl, title: str, max_display: int = 15):
    """SHAP beeswarm (log-odds contributions, colour = feature value; grey = missing)."""
    matplotlib.use("Agg")
    plt.figure(figsize=(8, 6))
    shap.plots.beeswarm(_shap_explanation(expl), max_display=max_display, show=False)
    fig = plt.gcf()
    fig.suptitle(title, fontsize=10)
    fig.axes[0].set_xlabel("SHAP value (contribution to calibrated log-odds)")
    return fig


def shap_bar_figure(expl, title: str, max_display: int = 15):
    """Mean |SHAP| per feature (log-odds)."""
    fig, ax = _figure(7.5, 6)
    mean_abs = np.abs(expl.values).mean(axis=0)
    order = np.argsort(mean_abs)[::-1][:max_display][::-1]
    ax.barh([expl.display_names[i] for i in order], mean_abs[order], color="#3b7dd8")
    ax.set(xlabel="mean |SHAP| (log-odds)", title=title)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    """Release a figure (pyplot-managed ones too)."""
    plt.close(fig)
