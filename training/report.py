"""Human-readable reports: the cohort "Table 1" and the model card (TRIPOD+AI items).

Pure functions of DataFrames and dicts that return text/DataFrames; the pipeline logs
them to MLflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.catalog import FEATURES_BY_NAME, display_name
from training.evaluation import THRESHOLDS


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
    from scipy import stats

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


PERFORMANCE_ROWS = (
    ("AUROC", "auroc"), ("AUPRC", "auprc"), ("Brier score", "brier"), ("Log loss", "log_loss"),
    ("Calibration intercept (ideal 0)", "calibration_intercept"), ("Calibration slope (ideal 1)", "calibration_slope"),
    ("ECE (10 equal-count bins)", "ece"),
)


def performance_table(columns: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per metric, one column per model (value with 95 % CI)."""
    rows = []
    for label, key in PERFORMANCE_ROWS:
        rows.append({"Metric": label, **{name: _ci(m, key) for name, m in columns.items()}})
    for t in THRESHOLDS:
        k = f"{int(round(t * 100)):02d}"
        first = next(iter(columns.values()))
        rows.append({"Metric": f"Net benefit at {int(round(t * 100))} % (treat all: {first.get(f'treat_all_{k}', float('nan')):.4f})",
                     **{name: _ci(m, f"net_benefit_{k}", ".4f") for name, m in columns.items()}})
    return markdown_table(pd.DataFrame(rows))


def model_card(ctx: dict[str, Any]) -> str:
    """The model card (markdown) for a trained champion candidate; items follow TRIPOD+AI
    (BMJ 2024) as listed in the project's clinical evidence §6. ``ctx`` keys are filled
    by ``training.pipeline``."""
    m = ctx["metrics"]
    o = ctx["outcome"]
    h = ctx["horizon_months"]
    lines = [
        f"# Model card: `{o}` within {h:g} months ({ctx['model_type']}, feature set `{ctx['feature_set']}`)",
        "",
        f"Generated by `refracture train` on {ctx['created']}. Run `{ctx['parent_run_id']}`, candidate run "
        f"`{ctx['run_id']}`. Data fingerprint `{ctx['data_fingerprint'][:16]}`, schema {ctx['schema_version']}, "
        f"simulator profile: {ctx['profile']}. Git commit: {ctx['git_commit']}.",
        "",
        "## Outcome and horizon (TRIPOD+AI 8a)",
        f"Probability of **{o.replace('_', ' ')}** within **{h:g} months** after vertebral augmentation "
        "(PVP/PKP). Labels come from the export's `events` table (`features.labels`): "
        "cemented refracture = a new fracture of the treated level; adjacent = the level directly above or below; "
        "remote = two or more levels away. Procedures whose follow-up ended before the horizon without the event "
        f"are censored and excluded from training and evaluation ({ctx['n_censored']} here); this assumes censoring "
        "is unrelated to risk.",
        "",
        "## Development and evaluation data (16, 20c)",
        f"- Procedures labelled at the horizon: {ctx['n_labelled']} ({ctx['n_events']} events, "
        f"{100 * ctx['n_events'] / max(ctx['n_labelled'], 1):.1f} %).",
        f"- Development (training) part: {ctx['n_train']} procedures, {ctx['n_train_events']} events. "
        f"Held-out test part: {ctx['n_test']} procedures, {ctx['n_test_events']} events "
        f"({100 * ctx['test_size']:.0f} %, stratified by outcome and grouped by patient with seed {ctx['seed']}; "
        "no patient contributes to both).",
        "- Both parts come from the same export (same site, same period): the test estimates are internal "
        "validation. Published single-centre models lost much of their AUROC (0.52–0.74) and calibration "
        "when moved to another centre (Dai 2024): expect the same and recalibrate before use elsewhere.",
        "- Table 1 (`table1.md`) describes the cohort by outcome group.",
        "",
        "## Heterogeneity across centres (23b)",
        "Not assessed: the data are " + ("simulated" if ctx["profile"] not in ("none", "") else "from a single export")
        + " (one site). No centre-level performance can be reported.",
        "",
        "## How predictions are computed (12g, 22)",
        f"- Inputs: the flat raw record of one treated level (patient, procedure, pre-op and immediate post-op "
        f"imaging: see `features.records`). The feature pipeline (`features.assemble.features_from_records`) "
        f"computes {len(ctx['feature_names'])} features of the `{ctx['feature_set']}` set; training used the same functions.",
        f"- Model: {ctx['model_description']}",
        f"- Hyperparameters (chosen by {ctx['search_description']}): `{ctx['params']}`.",
        "- Explanations: " + ctx["explain_method"] + ". Contributions are in calibrated log-odds and add up "
        "to the reported risk's log-odds (base value + sum of contributions).",
        "",
        "## Recalibration (12f)",
        f"Platt scaling of the log-odds (`calibrated = {ctx['platt_slope']:.4f} × raw + {ctx['platt_intercept']:.4f}`), "
        "fitted on out-of-fold predictions of the development part (each procedure scored by a model that did not "
        "see it), never on the test set. Platt rather than temperature scaling because it also corrects the intercept "
        "(calibration-in-the-large) for a rare outcome; rather than isotonic regression because an affine map of the "
        "log-odds keeps SHAP contributions additive. A new site should refit these two numbers on its own data.",
        "",
        "## Class imbalance (13)",
        f"The outcome is rare ({100 * ctx['n_events'] / max(ctx['n_labelled'], 1):.1f} %). No resampling and no "
        "class weights: both would distort the probabilities the product reports. Splits are stratified; AUPRC and "
        "calibration are reported next to AUROC.",
        "",
        "## Performance on the held-out test set (12e, 23a)",
        "Point estimate (95 % bootstrap CI, "
        f"{ctx['n_boot']} resamples, seed {ctx['seed']}).",
        "",
        performance_table(ctx["performance_columns"]),
        "",
        ctx.get("oracle_note", ""),
        "",
        "### All candidates (test set)",
        markdown_table(ctx["candidate_table"]),
        "",
        f"Selection rule: {ctx['selection_rule']}",
        "",
        ctx["selection_note"],
        "",
        "## Subgroups (14, 23a)",
        "Same metrics by sex, age band, region (thoracolumbar junction T10–L2 vs other) and technique (PVP vs "
        f"PKP) on the test set; metrics are omitted where a subgroup has fewer than 5 events or non-events. "
        "95 % bootstrap CIs are in `subgroups.csv` (oracle: `subgroups_oracle.csv`); small subgroups have wide CIs.",
        "",
        markdown_table(ctx["subgroup_table"]),
        "",
        "## Output, thresholds and risk bands (15)",
        f"The output is a calibrated probability: \"X % risk of {o.replace('_', ' ')} within {h:g} months\", with "
        "the per-feature contributions. The model sets no treatment threshold. Decision-curve net benefit is reported "
        "for thresholds 5–30 %; a suggested reading is < 5 % low, 5–15 % intermediate, > 15 % high risk, to be "
        "agreed locally.",
        "",
        "## Missing or poor-quality inputs in use (27a)",
        ctx["missing_description"],
        "Out-of-range values are refused by the service (`features.records.check_records`); each prediction lists the "
        "inputs that were missing and how they were handled (`RefractureModel.missing_inputs`).",
        "",
        "## How users interact with the model (27b)",
        "Clinicians or the hospital system send one record per treated level to the service (`serving/`), which "
        "returns the probability within the horizon, the main contributions in clinical words with units, and the "
        "list of missing inputs. The model supports, never replaces, the decision on follow-up imaging, bracing or "
        "anti-osteoporosis treatment.",
        "",
        "## Monotone constraints (XGBoost)",
        ctx["constraints_description"],
    ]
    return "\n".join(lines) + "\n"
