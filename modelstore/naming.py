"""The registry's naming rule: one registered model per outcome (and one for death, the context), and its aliases.

Training registers ``refracture-<outcome>`` and moves the aliases; serving loads the
``champion`` of each. Both take the names from here, so the rule is written once.
"""

from __future__ import annotations

from features.labels import TARGETS

REGISTERED_MODEL_PREFIX = "refracture-"
#: The version serving loads.
CHAMPION = "champion"
#: A newer version that did not beat the champion.
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)


def model_name(outcome: str) -> str:
    """Registered-model name of ``outcome`` (one of ``features.labels.TARGETS``: an outcome,
    or ``death``, the context model)."""
    if outcome not in TARGETS:
        raise ValueError(f"unknown outcome {outcome!r}; choose from {', '.join(TARGETS)}")
    return f"{REGISTERED_MODEL_PREFIX}{outcome}"
