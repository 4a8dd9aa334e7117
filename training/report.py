"""Human-readable tables: the cohort "Table 1" and the performance tables of the model card.

Pure functions of DataFrames that return text/DataFrames; ``training.card`` assembles the
card and ``training.run_log`` logs them to MLflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from features.catalog import FEATURES_BY_NAME, display_name


def _fmt_cont(x: pd.Series) -> str:
    x = x.dropna()
    return "–" if x.empty else f"{x.mean():.2f} ± {x.std(ddof=1) if len(x) > 1 else 0:.2f}"


def _fmt_count(x: pd.Series) -> str:
    x = x.dropna()
    return "–" if x.empty else f"{x.median():g} [{x.quantile(0.25):g}–{x.quantile(0.75):g}]"


def _fmt_bin(x: pd.Series) -> str:
    x = x.dropna()
    return "–" if x.empty else f"{int(x.sum())} ({100 * x.mean():.1f} %)"


def _p_value(kind: str, a: pd.Series, b: pd.Series) -> float:
    a, b = a.dropna(), b.dropna()
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if kind == "binary":
        table = np.array([[a.sum(), len(a) - a.sum()], [b.sum(), len(b) - b.sum()]])
        if (table.sum(axis=0) == 0).any():
            return float("nan")
        if table.min() < 5:
            return float(stats.fisher_exact(table)[1])
        return float(stats.chi2_contingency(table)[1])
    if kind == "count":
        return float(stats.mannwhitneyu(a, b).pvalue)
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def table_one(frame: pd.DataFrame, outcome: str, feature_names: list[str], horizon_months: float) -> pd.DataFrame:
    """Baseline characteristics by outcome group, as clinical papers print them.

    ``frame`` is the training set (``features.assemble.build_training_set``). Columns:
    all procedures, event within the horizon, no event, censored before the horizon
    (excluded from training), p-value event vs no event (Welch t-test for continuous,
    Mann-Whitney for counts, chi-square or Fisher for binary), and missing n (%).
    Continuous: mean ± SD; counts: median [IQR]; binary: n (%).
    """
    label = frame[outcome]
    groups = {
        f"All (n={len(frame)})": frame,
        f"Event ≤ {horizon_months:g} mo (n={int((label == 1).sum())})": frame[label == 1],
        f"No event (n={int((label == 0).sum())})": frame[label == 0],
        f"Censored (n={int(label.isna().sum())})": frame[label.isna()],
    }
    rows = []
    for name in feature_names:
        spec = FEATURES_BY_NAME.get(name)
        kind = spec.kind if spec else "continuous"
        fmt = {"binary": _fmt_bin, "count": _fmt_count}.get(kind, _fmt_cont)
        suffix = {"binary": ", n (%)", "count": ", median [IQR]"}.get(kind, ", mean ± SD")
        row: dict[str, Any] = {"Characteristic": display_name(name) + suffix}
        for title, part in groups.items():
            row[title] = fmt(part[name])
        p = _p_value(kind, frame.loc[label == 1, name], frame.loc[label == 0, name])
        row["p (event vs none)"] = "–" if not np.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")
        miss = frame[name].isna()
        row["Missing, n (%)"] = f"{int(miss.sum())} ({100 * miss.mean():.1f} %)"
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A DataFrame as a GitHub-flavoured markdown table (no extra dependency)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if not np.isfinite(v) else format(v, floatfmt)
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def _ci(m: dict[str, float], key: str, fmt: str = ".3f") -> str:
    v = m.get(key, float("nan"))
    lo, hi = m.get(f"{key}_ci_low", float("nan")), m.get(f"{key}_ci_high", float("nan"))
    if not np.isfinite(v):
        return "–"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return format(v, fmt)
    return f"{v:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"


#: Rows of the per-horizon performance table: (label, column of ``evaluate_curve``).
PERFORMANCE_ROWS = (
    ("Time-dependent AUROC", "td_auroc"), ("Brier score (IPCW)", "brier"),
    ("Calibration slope (ideal 1)", "calibration_slope"), ("Calibration intercept (ideal 0)", "calibration_intercept"),
    ("Observed / expected (ideal 1)", "observed_expected"), ("Mean predicted risk", "mean_predicted"),
    ("Observed risk (Aalen-Johansen)", "observed_risk"),
)


def _row_ci(row: pd.Series, key: str, fmt: str = ".3f") -> str:
    return _ci({key: row.get(key, np.nan), f"{key}_ci_low": row.get(f"{key}_ci_low", np.nan),
                f"{key}_ci_high": row.get(f"{key}_ci_high", np.nan)}, key, fmt)


def horizon_performance_table(table: pd.DataFrame) -> str:
    """Markdown: one row per metric, model and (when known) oracle at every horizon, with CIs."""
    oracle = any(c.startswith("oracle_") for c in table.columns)
    rows = []
    for label, key in PERFORMANCE_ROWS:
        fmt = ".4f" if key in ("brier", "mean_predicted", "observed_risk") else ".3f"
        for who, prefix in (("model", ""), ("oracle", "oracle_")) if oracle else (("model", ""),):
            if f"{prefix}{key}" not in table.columns:
                continue
            rows.append({"Metric": f"{label}" + (f" ({who})" if oracle else ""),
                         **{f"{h:g} months": _row_ci(r, f"{prefix}{key}", fmt)
                            for h, (_, r) in zip(table["horizon_months"], table.iterrows())}})
    if "mean_abs_diff_truth" in table.columns:
        rows.append({"Metric": "Mean |predicted − true risk|",
                     **{f"{h:g} months": _row_ci(r, "mean_abs_diff_truth", ".4f")
                        for h, (_, r) in zip(table["horizon_months"], table.iterrows())}})
    return markdown_table(pd.DataFrame(rows))


def net_benefit_table(curves: dict[str, pd.DataFrame]) -> str:
    """Markdown: net benefit (95 % CI) per threshold for each model, with treat-all."""
    first = next(iter(curves.values()))
    rows = []
    for i, t in enumerate(first["threshold"]):
        row = {"Threshold": f"Net benefit at {int(round(t * 100))} %",
               "treat all": _row_ci(first.iloc[i], "treat_all", ".4f")}
        for name, c in curves.items():
            row[name] = _row_ci(c.iloc[i], "net_benefit", ".4f")
        rows.append(row)
    return markdown_table(pd.DataFrame(rows))
