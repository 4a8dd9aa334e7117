"""UCUM units: reading a FHIR ``Quantity`` in the unit the contract wants.

The contract states each measure in one unit (``features.schema``: cm, kg, g/cm², mm, HU, ...).
A hospital may send another UCUM unit of the same dimension (height in ``[in_i]``, weight in
``[lb_av]``, BMD in ``mg/cm2``): the value is converted with ucumvert (a parser of the full
UCUM grammar that builds pint units). A unit of another dimension (a height in ``kg``) or
a code UCUM does not define is refused by name (``UnitError``), never read as if it were
the contract's unit.

The conversion factor of each (sent, wanted) pair is computed once; a Quantity already in
the contract's unit never loads the UCUM registry (a few seconds the first time).
"""

from __future__ import annotations

import functools
import re

from ucumvert import PintUcumRegistry

from features.fhir.codes import UCUM

#: A UCUM annotation alone (``{T-score}``, ``{SD}``) means the unit 1 with a label.
_ANNOTATION_ONLY = re.compile(r"\{[^{}]*\}")


class UnitError(ValueError):
    """A Quantity whose unit cannot be read as the contract's unit."""


@functools.cache
def _registry():
    # Built on first use: it parses UCUM's definitions (seconds), and most inputs never
    # need it (their units are the contract's own).
    return PintUcumRegistry()


def _dimensionless(code: str) -> bool:
    stripped = _ANNOTATION_ONLY.sub("", code).strip()
    return stripped in ("", "1")


@functools.cache
def factor(sent: str, wanted: str) -> float:
    """Multiply a value in UCUM unit ``sent`` by this to express it in ``wanted``.

    Raises ``UnitError`` if ``sent`` is not UCUM or has another dimension than ``wanted``.
    """
    if sent == wanted:
        return 1.0
    if _dimensionless(wanted):
        if _dimensionless(sent):
            return 1.0
        raise UnitError(f"unit {sent!r} is not dimensionless, expected {wanted!r}")
    registry = _registry()
    try:
        source = registry.from_ucum(sent)
    except Exception as exc:  # ucumvert raises lark's and pint's own errors
        raise UnitError(f"{sent!r} is not a UCUM unit code ({type(exc).__name__})") from None
    target = registry.from_ucum(wanted)
    if not hasattr(source, "to"):
        raise UnitError(f"unit {sent!r} cannot be converted to {wanted!r}")
    try:
        return float((1 * source).to(target).magnitude)
    except Exception:  # pint.DimensionalityError
        raise UnitError(f"unit {sent!r} cannot be converted to {wanted!r} (another dimension)") from None


def quantity_value(quantity: object, wanted: str) -> float:
    """The number of a FHIR ``Quantity`` (a JSON object) in UCUM unit ``wanted``.

    The Quantity must state its unit as UCUM (``system`` http://unitsofmeasure.org and
    ``code``); a display ``unit`` alone is not a unit code and is refused.
    """
    if not isinstance(quantity, dict):
        raise UnitError("expected a Quantity (an object with value, system and code)")
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnitError(f"Quantity.value {value!r} is not a number")
    if quantity.get("comparator") is not None:
        raise UnitError(f"Quantity with comparator {quantity['comparator']!r} is not an exact measurement")
    code = quantity.get("code")
    if code == wanted and quantity.get("system") == UCUM:  # the contract's own unit: nothing to convert
        return value
    system = quantity.get("system")
    if not isinstance(code, str) or system != UCUM:
        shown = quantity.get("unit") if code is None else code
        raise UnitError(f"the unit {shown!r} is not stated as a UCUM code (system {UCUM}, code): expected {wanted!r}")
    return float(value) * factor(code, wanted)
