"""The model card (markdown) of a selected model; sections follow TRIPOD+AI (BMJ 2024) as
listed in the project's clinical evidence §6. A pure function of the run's own numbers
(``CardInputs``); ``docs/model-card-template.md`` describes it section by section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from features.catalog import display_name
from modelstore.candidates import monotone_constraints
from training.config import TrainConfig
from training.data import OutcomeData, Prepared
from features.labels import DEATH_TARGET
from modelstore.estimand import ESTIMAND, ESTIMAND_SENTENCE, DEATH_ESTIMAND, DEATH_ESTIMAND_SENTENCE
from modelstore.explain import XGB_METHOD_TEXT
from modelstore.risk_bands import describe_bands
from training.fitting import CandidateResult
from training.report import horizon_performance_table, markdown_table, net_benefit_table
from training.search import trial_budget

DESCRIPTIONS = {
    "logistic": "logistic regression (clinical baseline): training-median imputation with missing-value indicators, "
                "winsorised (0.5/99.5 %) standardised features, a squared term for cement volume (U-shaped effect), "
                "negligible ridge (C = 1e4); scikit-learn pipeline.",
    "elastic_net": "elastic-net penalised logistic regression on the same encoding as the baseline (saga solver).",
    "random_forest": "random forest (scikit-learn) on the raw features; missing values handled natively by the trees. "
                     "The forest's probability is converted to log-odds (clipped at 1e-4) before calibration.",
    "xgboost": "gradient-boosted trees (XGBoost, hist) with monotone constraints where a direction is known (listed "
               "below with their sources); missing "
               "values handled natively (learned default direction per split).",
}

ESTIMATOR_JUSTIFICATION = (
    "One score model per outcome, trained on the crude binary label at the headline horizon with "
    "inverse-probability-of-censoring weights (every procedure whose status at the horizon is known counts, "
    "weighted 1 / G(t-); G is the Kaplan-Meier of remaining under follow-up, fitted on the training part), then a "
    "horizon calibration `logit F(t|x) = a_t + b × score(x)` with one common slope b > 0 and intercepts a_t "
    "non-decreasing in t, fitted by IPCW-weighted likelihood stacked over the horizons on cross-fitted out-of-fold "
    "scores. Chosen over per-horizon classifiers (curves could cross: a 6-month risk above the 12-month risk), a "
    "discrete-time competing-risks model or a survival learner (Fine-Gray or cause-specific hazards with XGBoost's "
    "survival objectives: no native cumulative-incidence output, and SHAP would no longer be exact on the reported "
    "scale) because it keeps every requirement by construction: curves never fall (common b, ordered a_t), each "
    "horizon is calibrated (a_t), SHAP is exactly additive on the log-odds at each horizon (an affine map: "
    "contributions × b, base a_t + b × E[score]), and the monotone constraints keep their direction (b > 0). Its "
    "assumption, that the score ranks patients the same way at every horizon (proportional odds), is checked by "
    "the calibration slope per horizon below. The weights assume censoring independent of the outcome, given "
    "nothing (a marginal G) or, with `--censoring-model cox`, given the patient's clinical covariates: true of the "
    "data cut and of random loss; a follow-up that ends at the last visit before a registry death is not, which "
    "is why the export states how far fractures were ascertained (`docs/estimand.md`)."
)
CENSORING_TEXT = {
    "km": "one Kaplan-Meier of remaining under follow-up for every patient (censoring independent of the patient)",
    "cox": "a Cox model of censoring on age, sex, BMI, CKD, glucocorticoids, diabetes, earlier fractures and "
           "sarcopenia (censoring independent of the outcome given them)",
}


def target_section(o: str, h: float, horizons: str, allc: dict[str, int]) -> list[str]:
    """The card's "Outcome and horizon" lines: the crude cumulative incidence of a fracture
    outcome (death competing), or for ``death`` (the context model) all-cause mortality."""
    if o == DEATH_TARGET:
        return [
            f"**{DEATH_ESTIMAND_SENTENCE}**",
            "",
            f"Estimand: {DEATH_ESTIMAND} (the probability of **death from any cause** by {horizons} months after "
            f"vertebral augmentation, PVP/PKP); headline horizon {h:g} months. Served as context beside the fracture "
            "risks, not for decision. Labels: the export's `death_date` and `last_followup_date` (`features.labels`: "
            "`death_time_days`, `death_status` 1 died, 0 censored alive); there is no competing event, so the "
            "estimand is 1 − Kaplan-Meier survival, estimated with the same censoring weights as the fractures. "
            "Features: the pre-operative set only (the immediate post-operative imaging says nothing about survival "
            f"that the patient's record does not). At {h:g} months: {allc['events']} deaths, {allc['censored_before']} "
            f"censored alive before the horizon among {allc['n']} procedures.",
        ]
    return [
        f"**{ESTIMAND_SENTENCE}**",
        "",
        f"Estimand: {ESTIMAND} (the crude cumulative incidence of **{o.replace('_', ' ')}** at {horizons} months "
        f"after vertebral augmentation, PVP/PKP); headline horizon {h:g} months. Labels come from the export's "
        "`events` table (`features.labels`): cemented refracture = a new fracture of the treated level; adjacent = "
        "the level directly above or below; remote = two or more levels away. Every procedure is used with its "
        "follow-up time and its status (event, death first, censored); a procedure censored before a horizon counts "
        "at that horizon only through the censoring weights of the others, so the estimate is not biased upward as "
        f"the old complete-case rule was. At {h:g} months: {allc['events']} events, {allc['deaths_first']} deaths "
        f"first, {allc['censored_before']} censored before the horizon among {allc['n']} procedures.",
    ]


def constraints_description(outcome: str, feature_names: list[str]) -> str:
    """Markdown list of the XGBoost monotone constraints in use for ``outcome``."""
    cons = monotone_constraints(outcome, feature_names)
    up = [display_name(n) for n, c in zip(feature_names, cons) if c > 0]
    down = [display_name(n) for n, c in zip(feature_names, cons) if c < 0]
    if outcome == DEATH_TARGET:
        why = ("Directions for death are general geriatric epidemiology and, beyond age and sex, assumptions "
               "(clinical-evidence.md covers fractures, not mortality). Sources per constraint: ")
    else:
        why = ("Unconstrained on purpose: cement volume and fill ratios (U-shaped, clinical-evidence §3), level, "
               "angles, technique, approach, and the number of levels treated for adjacent and remote fractures "
               "(Yassavoly 2025: multiple treated levels did not raise them). Sources per constraint: ")
    return ("Risk may only rise with: " + (", ".join(up) or "–") + ".\n\nRisk may only fall with: " + (", ".join(down) or "–")
            + ".\n\n" + why
            + "`modelstore/candidates.py` (`MONOTONE`). The horizon calibration multiplies the score by b > 0, so the "
            "directions hold at every horizon. The random forest and linear models are unconstrained.")


def missing_description(model_type: str, X: pd.DataFrame) -> str:
    """Missingness of the inputs in the development data and how the model handles it."""
    miss = X.isna().mean().sort_values(ascending=False)
    miss = miss[miss > 0]
    listing = ", ".join(f"{display_name(n)} {100 * v:.0f} %" for n, v in miss.head(12).items()) or "none"
    how = {
        "logistic": "replaced by the training median, with a 0/1 'not measured' indicator per feature so the model "
                    "learns the risk of an unmeasured value",
        "elastic_net": "replaced by the training median, with a 0/1 'not measured' indicator per feature",
        "random_forest": "kept missing; each tree split learned in training which side missing values go to",
        "xgboost": "kept missing; each split has a default direction for missing values learned in training",
    }[model_type]
    return (f"Missing values are kept as hospitals present them (e.g. no HU when no CT was taken); no row is dropped. "
            f"This model: {how}. Missing in the development data: {listing}. Missingness patterns at a new site "
            "that differ from these (e.g. no CT at all) are a source of miscalibration.")


def search_description(model_type: str, cfg: TrainConfig) -> str:
    """How the hyperparameters were chosen, in words."""
    trials = trial_budget(model_type, cfg.search_trials)
    if trials == 0:
        return "no search (fixed defaults)"
    return (f"{trials} optuna TPE trials (seed {cfg.seed}), {cfg.cv_folds}-fold grouped stratified CV on the "
            "development part, objective: calibrated IPCW-weighted CV log loss at the headline horizon")


@dataclass
class CardInputs:
    """Everything the card states, from the run: config, data, the selected candidate, the
    comparison tables and the decisions."""

    cfg: TrainConfig
    prep: Prepared
    data: OutcomeData
    best: CandidateResult
    parent_run_id: str
    candidate_table: pd.DataFrame
    decision_curves: dict[str, pd.DataFrame]
    subgroup_table: pd.DataFrame
    selection_note: str
    selection_rule: str
    schema_version: str


def exclusion_lines(prep: Prepared) -> list[str]:
    """What the contract's check left out of, and questioned in, the export (``features.exclusion``)."""
    report = prep.validation
    if report is None or not report.violations:
        return ["- The export passed the data contract with no error and no warning."]
    out = []
    if report.excluded:
        out.append(f"- {len(report.excluded)} of {report.n_procedures} procedures were left out for errors in their rows "
                   f"(`--exclude-invalid`; `validation/exclusions.csv`, SHA-256 `{report.fingerprint[:16]}…`).")
    if report.warnings:
        out.append(f"- {len(report.warnings)} implausible but possible values (warnings) were used as they are; "
                   "`validation/exclusions.csv` lists them.")
    return out


def model_card(c: CardInputs) -> str:
    """The model card in markdown (module docstring)."""
    cfg, data, best, model = c.cfg, c.data, c.best, c.best.model
    o, h = data.outcome, cfg.horizon_months
    horizons = ", ".join(f"{x:g}" for x in data.horizons_months)
    allc, trc, tec = data.counts(), data.counts(data.train), data.counts(data.test)
    cal = model.calibration
    intercepts = ", ".join(f"a({x:g}) = {a:.4f}" for x, a in zip(cal.horizons_months, cal.intercepts))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    oracle = "oracle_td_auroc" in best.test_table.columns
    rate = 100 * allc["events"] / max(allc["n"] - allc["censored_before"], 1)  # % with the event, known status
    lines = [
        f"# Model card: `{o}` risk by {horizons} months ({best.model_type}, feature set `{data.feature_set}`)",
        "",
        f"Generated by `refracture train` on {created}. Run `{c.parent_run_id}`, candidate run `{best.run_id}`. "
        f"Data fingerprint `{c.prep.fingerprint[:16]}`, schema {c.schema_version}, simulator profile: {c.prep.profile}. "
        f"Git commit: {c.prep.git_commit}.",
        "",
        "## Outcome and horizon (TRIPOD+AI 8a)",
        *target_section(o, h, horizons, allc),
        "",
        "## Development and evaluation data (16, 20c)",
        f"- Development (training) part: {trc['n']} procedures, {trc['events']} events by {h:g} months, "
        f"{trc['censored_before']} censored earlier. Held-out test part: {tec['n']} procedures, {tec['events']} "
        f"events ({100 * cfg.test_size:.0f} %, grouped by patient and stratified by status at {h:g} months, seed "
        f"{cfg.seed}; no patient contributes to both).",
        "- Both parts come from the same export (same site, same period): the test estimates are internal "
        "validation. Published single-centre models lost much of their AUROC (0.52–0.74) and calibration "
        "when moved to another centre (Dai 2024): expect the same and recalibrate before use elsewhere.",
        "- Table 1 (`table1.md`) describes the cohort by outcome group.",
        *exclusion_lines(c.prep),
        f"- Follow-up (`export.yaml`, `features.ascertainment`): {c.prep.ascertainment.describe()}."
        + "".join(f" Note: {n}." for n in c.prep.followup_notes)
        + f" Censoring weights: {CENSORING_TEXT[cfg.censoring_model]} (`training.censoring`).",
        "",
        "## Heterogeneity across centres (23b)",
        "Not assessed: the data are " + ("simulated" if c.prep.profile not in ("none", "") else "from a single export")
        + " (one site). No centre-level performance can be reported.",
        "",
        "## How predictions are computed (12g, 22)",
        f"- Inputs: the flat raw record of one treated level (patient, procedure, pre-op and immediate post-op "
        f"imaging: see `features.records`). The feature pipeline (`features.assemble.features_from_records`) "
        f"computes {len(model.feature_names)} features of the `{data.feature_set}` set; training used the same functions.",
        f"- Score model: {DESCRIPTIONS[best.model_type]}",
        f"- Hyperparameters (chosen by {search_description(best.model_type, cfg)}): `{json.dumps(best.params)}`.",
        "- Explanations: " + model.explanation_text + ". Contributions are in calibrated log-odds at the explained "
        "horizon (24 months unless asked) and add up to that horizon's log-odds (base value + sum of contributions).",
        *([f"- Explanation method of this version: `{model.explanation_method}` (chosen with `refracture train "
           "--shap-method`). Path-dependent TreeSHAP credits each feature with the change of the *conditional* "
           "expectation of the score given the features already known (estimated from the training cover of each "
           "tree branch); interventional TreeSHAP with the change of the *marginal* expectation over a background "
           "of training patients, each feature set independently of the others. They agree where features are "
           "independent; with correlated features (e.g. the HU values of neighbouring levels) path-dependent can "
           "move credit towards the feature the trees split on. Path-dependent is ~30x faster; its float32 sums "
           "are checked against the model's log-odds within 1e-5 (else the explanation is recomputed "
           "interventionally). See `bench/README.md` (explanations) for the measurements. The other method: "
           + XGB_METHOD_TEXT["interventional" if model.explanation_method == "path_dependent" else "path_dependent"] + "."]
          if best.model_type == "xgboost" else []),
        "",
        "## Why this estimator",
        ESTIMATOR_JUSTIFICATION,
        "",
        "## Recalibration (12f)",
        f"Horizon calibration `logit F(t|x) = a(t) + b × score(x)`: b = {cal.slope:.4f}; {intercepts}. Fitted on "
        "out-of-fold scores of the development part (each procedure scored by a model that did not see it), "
        "IPCW-weighted and stacked over the horizons, never on the test set. An affine map of the log-odds at each "
        "horizon keeps SHAP contributions additive; a new site should refit these numbers on its own data.",
        "",
        "## Class imbalance (13)",
        (f"Deaths: {rate:.1f} % by {h:g} months." if o == DEATH_TARGET else
         f"The outcome is rare ({rate:.1f} % by {h:g} months).")
        + " No resampling and no class weights: both would distort the probabilities the product reports (the "
        "censoring weights correct a bias, they do not rebalance classes). AUROC is reported with calibration.",
        "",
        "## Performance on the held-out test set (12e, 23a)",
        f"Point estimate (95 % bootstrap CI, {cfg.n_bootstrap} resamples, seed {cfg.seed}; censoring weights refitted "
        "per resample). Time-dependent AUROC: cases have the event by the horizon, controls are all others whose "
        "status is known (deaths first included). Observed risk: Aalen-Johansen."
        + (" Oracle = the simulator's true cumulative incidence on the same test rows." if oracle else ""),
        "",
        horizon_performance_table(best.test_table),
        "",
        f"IPCW log loss at {h:g} months: {best.test_metrics['log_loss']:.4f}. Calibration by risk decile at every "
        "horizon: `calibration_by_decile.csv` and `plots/calibration_all.png`.",
        "",
        f"### Decision curve at {h:g} months (net benefit, 95 % CI)",
        net_benefit_table(c.decision_curves),
        "",
        "### All candidates (test set, headline horizon)",
        markdown_table(c.candidate_table),
        "",
        f"Selection rule: {c.selection_rule}",
        "",
        c.selection_note,
        "",
        "## Subgroups (14, 23a)",
        "Same metrics (IPCW-weighted, headline horizon) by sex, age band, region (thoracolumbar junction T10–L2 vs "
        "other) and technique (PVP vs PKP) on the test set; metrics are omitted where a subgroup has fewer than 5 "
        "events or non-events. 95 % bootstrap CIs are in `subgroups.csv`; small subgroups have wide CIs.",
        "",
        markdown_table(c.subgroup_table),
        "",
        "## Output, thresholds and risk bands (15)",
        f"The output is a calibrated risk curve: \"X % risk of {o.replace('_', ' ')} by 3, 6, 12 and 24 months\" "
        f"(columns `p_3m` ... `p_24m`), the {h:g}-month value being the headline, with the per-feature contributions. "
        "The model sets no treatment threshold. Decision-curve net benefit is reported for thresholds 5–30 %. "
        + (f"The service shows the {h:g}-month probability of death as context beside the fracture risks "
           "(`context.death`), with no risk band and no explanation." if o == DEATH_TARGET else
           f"The service's risk bands at the headline horizon are {describe_bands(o)} (`modelstore/risk_bands.py`, the "
           "one table the service, batch scoring and this card read), to be agreed locally."),
        "",
        "## Missing or poor-quality inputs in use (27a)",
        missing_description(best.model_type, data.X.iloc[data.train]),
        "Values the contract calls errors (out of range, impossible, unit slips) are refused by the service "
        "(`features.records.check_records`); implausible but possible values (warnings) are scored. Each prediction "
        "lists the inputs that were missing and how they were handled (`RefractureModel.missing_inputs`).",
        "",
        "## How users interact with the model (27b)",
        "Clinicians or the hospital system send one record per treated level to the service (`serving/`), which "
        "returns the risk by the horizon, the main contributions in clinical words with units, and the list of "
        "missing inputs. The model supports, never replaces, the decision on follow-up imaging, bracing or "
        "anti-osteoporosis treatment.",
        "",
        "## Monotone constraints (XGBoost)",
        constraints_description(o, model.feature_names),
    ]
    return "\n".join(lines) + "\n"


def candidate_table(results: dict[str, CandidateResult], oracle: dict[str, float] | None) -> pd.DataFrame:
    """One row per candidate (and the oracle): CV and test metrics at the headline horizon."""
    rows = []
    for k, r in results.items():
        m = r.test_metrics
        rows.append({"candidate": k, "CV log loss": r.cv_metrics["log_loss"], "CV AUROC": r.cv_metrics["auroc"],
                     "CV slope": r.cv_metrics["calibration_slope"], "test td-AUROC": m["auroc"],
                     "test log loss": m["log_loss"], "test Brier": m["brier"], "test slope": m["calibration_slope"],
                     "test O/E": m["observed_expected"], "fit s": r.seconds})
    if oracle:
        rows.append({"candidate": "oracle (true risk)", "CV log loss": np.nan, "CV AUROC": np.nan, "CV slope": np.nan,
                     "test td-AUROC": oracle["auroc"], "test log loss": oracle["log_loss"], "test Brier": oracle["brier"],
                     "test slope": oracle["calibration_slope"], "test O/E": oracle["observed_expected"], "fit s": np.nan})
    return pd.DataFrame(rows)
