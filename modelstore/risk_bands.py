"""Risk bands on the calibrated probability: one table for the service, batch scoring and
the model card.

[0, low_upper) = "low", [low_upper, high_lower) = "intermediate", [high_lower, 1] = "high",
at the model's horizon (24 months by default). Rule: "low" is under about half the
published average risk of the outcome after PVP/PKP, "high" is about twice the average or
more (docs/serving.md, "Risk bands"). Averages (the simulator profile cites the same
sources): cemented-vertebra refracture 3.7 % (Xiong 2021, 48/1,303 single-level PVP);
adjacent fracture ~9 % (7.2 % Yassavoly 2025 to 8.6-15.5 % in other series); remote
fracture ~5 % (3.6 % Yassavoly 2025, higher in older PVP cohorts). Not clinically
validated cut-offs: decision support only.
"""

from __future__ import annotations

import numpy as np

#: (low_upper, high_lower) per outcome (``features.labels.OUTCOMES``).
RISK_BANDS: dict[str, tuple[float, float]] = {
    "cemented_refracture": (0.02, 0.075),
    "adjacent_fracture": (0.045, 0.18),
    "remote_fracture": (0.025, 0.10),
}


def risk_band(probability: float, thresholds: tuple[float, float]) -> str:
    """'low', 'intermediate' or 'high' for a probability, given (low_upper, high_lower)."""
    return str(bands_of(np.array([probability]), thresholds)[0])


def bands_of(probabilities: np.ndarray, thresholds: tuple[float, float]) -> np.ndarray:
    """The band of each probability (an array of 'low' / 'intermediate' / 'high')."""
    low_upper, high_lower = thresholds
    p = np.asarray(probabilities, dtype="float64")
    return np.where(p < low_upper, "low", np.where(p < high_lower, "intermediate", "high"))


def describe_bands(outcome: str, thresholds: tuple[float, float] | None = None) -> str:
    """The bands of ``outcome`` in words, for the model card and docs, e.g.
    "< 2 % low, 2–7.5 % intermediate, ≥ 7.5 % high"."""
    low_upper, high_lower = thresholds or RISK_BANDS[outcome]
    lo, hi = f"{100 * low_upper:g} %", f"{100 * high_lower:g} %"
    return f"< {lo} low, {lo.removesuffix(' %')}–{hi} intermediate, ≥ {hi} high"
