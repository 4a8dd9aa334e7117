"""Model selection and the registry decision, on the training part only, so the test-set
numbers stay an honest estimate of the selected model.

1. each candidate's out-of-fold scores are calibrated by *cross-fitted* horizon
   calibration (fold k calibrated on the other folds), giving honest cross-validated (CV)
   IPCW-weighted log loss, AUROC (bootstrap CI over training patients) and calibration slope at the headline
   horizon (``training.fitting``);
2. eligible: CV calibration slope within ``SLOPE_RANGE`` and CV AUROC at or above the
   lower 95 % CI bound of the best CV AUROC (not clearly worse at discrimination);
3. the eligible candidate with the lowest CV log loss is selected (none eligible: lowest
   CV log loss overall, flagged);
4. it becomes ``champion`` if its test log loss (IPCW, headline horizon) is lower than the
   current champion's re-scored on this run's test set, otherwise ``challenger``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from training import registry
from modelstore.artifact import load_model
from training.data import OutcomeData
from training.evaluation import weighted_log_loss
from training.fitting import CandidateResult

logger = logging.getLogger(__name__)

#: Cross-validated calibration slopes accepted as "calibrated enough" to be selected.
SLOPE_RANGE = (0.8, 1.2)
SELECTION_RULE = (
    "among candidates whose cross-validated calibration slope (training part, cross-fitted horizon calibration, "
    f"IPCW-weighted, headline horizon) lies in [{SLOPE_RANGE[0]}, {SLOPE_RANGE[1]}] and whose cross-validated "
    "AUROC is at least the lower 95 % CI bound of the best cross-validated AUROC, the one with the lowest "
    "cross-validated IPCW-weighted log loss; it takes the `champion` alias only if its test log loss is lower than "
    "the current champion's re-scored on the same test set, otherwise `challenger`."
)


def select(results: dict[str, CandidateResult]) -> tuple[str, str]:
    """Apply the selection rule (module docstring) to CV metrics. Returns (model_type, note)."""
    best_auroc = max(results.values(), key=lambda r: r.cv_metrics["auroc"])
    floor = best_auroc.cv_metrics.get("auroc_ci_low", best_auroc.cv_metrics["auroc"])
    eligible = {k: r for k, r in results.items()
                if SLOPE_RANGE[0] <= r.cv_metrics["calibration_slope"] <= SLOPE_RANGE[1] and r.cv_metrics["auroc"] >= floor}
    pool = eligible or results
    chosen = min(pool, key=lambda k: pool[k].cv_metrics["log_loss"])
    if eligible:
        note = (f"Selected `{chosen}`: lowest cross-validated log loss ({results[chosen].cv_metrics['log_loss']:.4f}) among "
                f"{', '.join(f'`{k}`' for k in eligible)} (eligible: CV calibration slope in [{SLOPE_RANGE[0]}, "
                f"{SLOPE_RANGE[1]}] and CV AUROC ≥ {floor:.3f}, the lower CI bound of `{best_auroc.model_type}`'s "
                f"{best_auroc.cv_metrics['auroc']:.3f}).")
    else:
        note = (f"**No candidate met the eligibility criteria**; `{chosen}` has the lowest cross-validated log loss "
                "overall. Treat its calibration with caution.")
    return chosen, note


@dataclass
class AliasDecision:
    """Which alias the new version takes and why (``reason`` goes to the registry)."""

    alias: str
    reason: str
    old_version: str | None
    old_log_loss: float


def rescore_champion(outcome: str, records_test: pd.DataFrame, data: OutcomeData) -> tuple[str | None, float, str]:
    """(version, IPCW test log loss at the headline horizon, note) of the current champion
    re-scored on this run's test rows."""
    mv = registry.current_version(outcome, registry.CHAMPION)
    if mv is None:
        return None, float("nan"), "no current champion"
    try:
        old = load_model(f"models:/{registry.model_name(outcome)}/{mv.version}")
        y, w = data.headline(data.test)
        loss = weighted_log_loss(y, old.predict_proba(records_test), w)
        note = f"current champion v{mv.version} ({old.model_type}, {old.feature_set}, {old.horizon_months:g} months)"
        return str(mv.version), loss, note
    except Exception as exc:  # noqa: BLE001 - a champion that cannot be scored is reported, then replaced
        logger.warning("current champion v%s of %s could not be re-scored: %s", mv.version, outcome, exc)
        return str(mv.version), float("nan"), f"current champion v{mv.version} could not be re-scored ({type(exc).__name__})"


def decide_alias(best: CandidateResult, chosen: str, outcome: str, records_test: pd.DataFrame, data: OutcomeData,
                 compare: bool) -> AliasDecision:
    """Champion if the selected model beats the current champion on this test set (or there
    is none, or it cannot be scored), else challenger. ``compare=False``: no registry read."""
    old_version, old_loss, old_note = rescore_champion(outcome, records_test, data) if compare else (None, float("nan"), "")
    new_loss = best.test_metrics["log_loss"]
    alias = registry.CHAMPION if registry.beats(new_loss, old_loss) else registry.CHALLENGER
    if old_version is None:
        reason = f"first version: selected {chosen} (test log loss {new_loss:.4f})"
    elif np.isfinite(old_loss):
        reason = (f"test log loss {new_loss:.4f} vs {old_loss:.4f} for {old_note} on the same {len(data.test)} test "
                  f"procedures; {'beats' if alias == registry.CHAMPION else 'does not beat'} it")
    else:
        reason = f"{old_note}; selected {chosen} (test log loss {new_loss:.4f})"
    return AliasDecision(alias, reason, old_version, old_loss)
