"""What every model predicts: the estimand and the horizons, said once.

The estimand is the **crude cumulative incidence with death as a competing event**: the
probability that the fracture happens within T months after surgery, in a population
where some patients die first (a patient who dies without the fracture never has it).
This is what FRAX reports and what a clinician can act on; it is not the "net" risk of
a world without death, which overstates risk in a population with a mean age near 78.

Death is trained and served beside the outcomes as **context** (``DEATH_ESTIMAND``): the
probability of death from any cause within T months after surgery. It has no competing
event, so its crude risk is 1 - the Kaplan-Meier survival; the same IPCW machinery
estimates it (status 1 death, 0 censored alive).

Horizons are months after surgery; the headline horizon (24 months) is the one the
service shows as a single number and the one model selection optimises.
"""

from __future__ import annotations

from features.labels import DEATH_TARGET

#: Tag value recorded with every model version and checked by serving.
ESTIMAND = "crude cumulative incidence, death competing"
#: One sentence for clinicians (model card, docs).
ESTIMAND_SENTENCE = (
    "The risk shown is the chance that this fracture happens within the stated number of months after the "
    "procedure, counting patients who die first as not having had it (as FRAX does): it is the absolute risk "
    "for this patient, not a risk in a world without death."
)
#: Tag value of the death model (``features.labels.DEATH_TARGET``), checked by serving.
DEATH_ESTIMAND = "all-cause mortality, no competing risk"
DEATH_ESTIMAND_SENTENCE = (
    "The probability shown is the chance that this patient dies, from any cause, within the stated number of "
    "months after the procedure. It is context for the fracture risks, which already count a patient who dies "
    "first as not having the fracture."
)
DEFAULT_HORIZONS_MONTHS: tuple[float, ...] = (3.0, 6.0, 12.0, 24.0)
HEADLINE_HORIZON_MONTHS = 24.0


def estimand_of(target: str) -> str:
    """Estimand tag of a target: ``DEATH_ESTIMAND`` for ``death``, else ``ESTIMAND``."""
    return DEATH_ESTIMAND if target == DEATH_TARGET else ESTIMAND


def estimand_sentence(target: str) -> str:
    """The clinician's sentence of a target's estimand."""
    return DEATH_ESTIMAND_SENTENCE if target == DEATH_TARGET else ESTIMAND_SENTENCE


def horizon_column(months: float) -> str:
    """Output column of a horizon: ``p_6m`` for 6 months (``p_1.5m`` for 1.5)."""
    return f"p_{float(months):g}m"


def horizons_text(horizons_months) -> str:
    """'3,6,12,24': the tag form of a horizon set (months, ascending)."""
    return ",".join(f"{float(h):g}" for h in sorted(horizons_months))
