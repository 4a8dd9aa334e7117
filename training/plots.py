"""Figures logged with each run: ROC, calibration, decision curve, SHAP beeswarm and bar.

Each function returns a matplotlib Figure (Agg canvas, no global pyplot state except for
the SHAP plots, which shap draws with pyplot and which are closed after use).
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import shap
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

Curves = dict[str, tuple[np.ndarray, np.ndarray]]  # label -> (y, p)


def _figure(width: float = 6.0, height: float = 5.0) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def roc_figure(curves: Curves, title: str) -> Figure:
    """ROC curves of several predictions on the same outcome, AUROC in the legend."""
    fig, ax = _figure()
    for label, (y, p) in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=1.5, ls="--" if label.startswith("oracle") else "-",
                label=f"{label} (AUROC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="1 − specificity", ylabel="Sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def calibration_figure(curves: Curves, title: str, bins: int = 10) -> Figure:
    """Observed event rate vs mean predicted risk in equal-count bins (deciles)."""
    fig, ax = _figure()
    top = 0.0
    for label, (y, p) in curves.items():
        order = np.argsort(p)
        groups = np.array_split(order, bins)
        pred = np.array([p[g].mean() for g in groups if len(g)])
        obs = np.array([y[g].mean() for g in groups if len(g)])
        top = max(top, pred.max(), obs.max())
        ax.plot(pred, obs, marker="o", ms=3, lw=1.2, ls="--" if label.startswith("oracle") else "-", label=label)
    top = min(1.0, top * 1.1 + 0.01)
    ax.plot([0, top], [0, top], color="grey", lw=0.8, ls=":", label="perfect calibration")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="Predicted risk (decile mean)", ylabel="Observed event rate", title=title)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def decision_curve_figure(curves: Curves, title: str, thresholds: np.ndarray | None = None) -> Figure:
    """Net benefit vs threshold probability (Vickers 2006), with treat-all and treat-none."""
    t = np.linspace(0.01, 0.40, 40) if thresholds is None else thresholds
    fig, ax = _figure(6.5, 5)
    y0 = next(iter(curves.values()))[0]
    prev = y0.mean()
    treat_all = prev - (1 - prev) * t / (1 - t)
    for label, (y, p) in curves.items():
        nb = [(np.sum((p >= k) & (y == 1)) - np.sum((p >= k) & (y == 0)) * k / (1 - k)) / len(y) for k in t]
        ax.plot(t, nb, lw=1.4, ls="--" if label.startswith("oracle") else "-", label=label)
    ax.plot(t, treat_all, color="black", lw=0.8, label="treat all")
    ax.axhline(0, color="grey", lw=0.8, label="treat none")
    ax.axvspan(0.05, 0.30, color="0.93", zorder=0)
    ax.set(ylim=(min(-0.01, -0.2 * prev), max(prev * 1.1, 0.01)), xlabel="Threshold probability",
           ylabel="Net benefit", title=title)
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
