"""The pieces the FHIR parser reads resources with (internal to ``features.fhir``): problems,
record sources, one resource with where it was read, the per-patient context that collects
problems, measured values, and the readers of FHIR dates, codings and references.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from typing import Any

from features.contract import FUTURE_SLACK_DAYS
from features.fhir import codes as c
from features.fhir.units import quantity_value
from features.levels import LEVEL_INDEX

DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(T.*)?$")


@dataclass(frozen=True)
class FhirProblem:
    """One problem in a FHIR input.

    ``expression``: FHIRPath of the offending element, from the resource (``Observation.
    valueQuantity``) or the Bundle (``Bundle.entry[3].resource.valueQuantity``).
    ``severity``: ``error`` (the record, or the input if ``record`` is None, is refused) or
    ``warning`` (a resource was not used; nothing refused). ``code``: the
    OperationOutcome issue type (``invalid``, ``code-invalid``, ``value``, ``duplicate``,
    ``required``, ``not-found``, ``business-rule``, ``structure``). ``record``: index of the
    refused record, if one. ``source``: where the resource was read (``Observation.ndjson:12``
    for Bulk files, else '').
    """

    expression: str
    message: str
    severity: str = "error"
    code: str = "invalid"
    record: int | None = None
    source: str = ""

    def __str__(self) -> str:
        where = f"{self.source} " if self.source else ""
        return f"{self.severity}: {where}{self.expression}: {self.message}"


class RecordSource:
    """Where one record came from: its patient and procedure, the element of every field
    (``elements``: record path -> FHIRPath, for the contract checker's errors), and the
    resources used (``basis``: ``Type/id`` references, for ``RiskAssessment.basis``)."""

    __slots__ = ("patient", "procedure", "basis", "source", "_elements")

    def __init__(self, patient: str, procedure: str, source: str = ""):
        self.patient, self.procedure, self.source = patient, procedure, source
        self.basis: list[str] = []
        self._elements: dict[str, Any] = {}  # path -> FHIRPath, or the Measure it is built from

    @property
    def elements(self) -> dict[str, str]:
        return {k: v if isinstance(v, str) else v.expression for k, v in self._elements.items()}

    def element(self, path: str) -> str:
        """The FHIRPath of one record path (the procedure's, if the field has none)."""
        v = self._elements.get(path, self.procedure)
        return v if isinstance(v, str) else v.expression

    def __repr__(self) -> str:
        return f"RecordSource({self.patient!r}, {self.procedure!r}, source={self.source!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Sent between processes (the Bulk reader's workers) with the FHIRPaths as text.
        return {"patient": self.patient, "procedure": self.procedure, "basis": self.basis, "source": self.source,
                "_elements": self.elements}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class Res:
    """One resource of the input, with where it was read."""

    __slots__ = ("r", "base", "full_url", "source", "type", "ref")

    def __init__(self, r: dict[str, Any], base: str, full_url: str, source: str):
        self.r, self.base, self.full_url, self.source = r, base, full_url, source
        self.type: str = r["resourceType"]
        rid = r.get("id")
        self.ref: str = f"{self.type}/{rid}" if isinstance(rid, str) else full_url


def ref_keys(res: Res) -> list[str]:
    keys = []
    rid = res.r.get("id")
    if isinstance(rid, str):
        keys.append(f"{res.type}/{rid}")
    if res.full_url:
        keys.append(res.full_url)
        if "/" in res.full_url and not res.full_url.startswith("urn:"):
            keys.append("/".join(res.full_url.rstrip("/").split("/")[-2:]))
    return keys


def reference(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        return normal_reference(value["reference"])
    return None


def normal_reference(ref: str) -> str:
    """A Reference.reference as the parser keys resources: an absolute URL -> ``Type/id``."""
    if not ref.startswith("urn:") and ref.count("/") > 1:
        ref = "/".join(ref.rstrip("/").split("/")[-2:])
    return ref


def date_of(value: Any) -> tuple[dt.date, dt.datetime | None] | None:
    """A FHIR date/dateTime -> (calendar date as written, aware datetime if it has a time)."""
    if not isinstance(value, str):
        return None
    return _read_date(value)


@functools.lru_cache(maxsize=65536)
def _read_date(value: str) -> tuple[dt.date, dt.datetime | None] | None:
    m = DATE.match(value)
    if not m or not m.group(2) or not m.group(3):
        return None
    try:
        day = dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None
    moment = None
    if m.group(4):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
    return day, moment


def codings(concept: Any) -> list[tuple[str, str]]:
    if not isinstance(concept, dict):
        return []
    return [(cd.get("system"), cd.get("code")) for cd in concept.get("coding") or [] if isinstance(cd, dict)]


def project_code(concept: Any) -> str | None:
    for system, code in codings(concept):
        if system == c.PROJECT_SYSTEM:
            return code
    return None


class Measure:
    """One value of one field, with when (calendar day, moment if timed) and where it was sent
    (``base`` of the resource, component index or -1, value element; the FHIRPath is built
    only when a value is chosen or refused)."""

    __slots__ = ("field", "value", "day", "moment", "base", "component", "element", "ref", "timepoint")

    def __init__(self, field: str, value: Any, day: dt.date, moment: dt.datetime | None, base: str, component: int,
                 element: str, ref: str, timepoint: str | None = None):
        self.field, self.value, self.day, self.moment = field, value, day, moment
        self.base, self.component, self.element, self.ref, self.timepoint = base, component, element, ref, timepoint

    @property
    def expression(self) -> str:
        part = f".component[{self.component}]" if self.component >= 0 else ""
        return f"{self.base}{part}.{self.element}"

    @property
    def key(self) -> tuple:
        """Order in time: the moment if timed, else the start of the day (UTC)."""
        return (self.moment or dt.datetime.combine(self.day, dt.time(), tzinfo=dt.timezone.utc), self.day)


class Ctx:
    """What one patient's parse collects."""

    def __init__(self, out: Any, now: dt.datetime, input_level: bool):  # out: parse.FhirRecords
        self.out = out
        self.now = now
        self.today_limit = now.date() + dt.timedelta(days=FUTURE_SLACK_DAYS)
        self.input_level = input_level
        self.patient_errors: list[FhirProblem] = []

    def error(self, res: Res | None, path: str, message: str, code: str = "invalid") -> None:
        base = res.base if res else "Bundle"
        self.patient_errors.append(FhirProblem(f"{base}{path}", message, code=code, source=res.source if res else ""))

    def warn(self, res: Res, path: str, message: str, code: str = "informational") -> None:
        self.out.problems.append(FhirProblem(f"{res.base}{path}", message, severity="warning", code=code, source=res.source))

    def future(self, res: Res, path: str, day: dt.date) -> bool:
        if day > self.today_limit:
            self.error(res, path, f"dated {day.isoformat()}, after the request time ({self.now.date().isoformat()})", "value")
            return True
        return False


def level_of(ctx: Ctx | None, proc: Res) -> str | None:
    found: set[str] = set()
    for site in proc.r.get("bodySite") or []:
        for system, code in codings(site):
            if system == c.SNOMED:
                level = c.VERTEBRA_BY_SCTID.get(code)
                if level:
                    found.add(level)
                elif ctx is not None:
                    ctx.error(proc, ".bodySite", f"SNOMED CT {code!r} is not a vertebra T1-L5 (unknown code for the "
                                                 "treated level)", "code-invalid")
    if len(found) > 1 and ctx is not None:
        ctx.error(proc, ".bodySite", f"several vertebrae ({', '.join(sorted(found, key=LEVEL_INDEX.get))}): send one "
                                     "Procedure per treated level", "business-rule")
        return None
    if not found:
        if ctx is not None:
            ctx.error(proc, ".bodySite", "no vertebra T1-L5 (SNOMED CT body structure) as body site: the treated level "
                                         "is required", "required")
        return None
    return found.pop()


def quantity_in(quantity: Any, unit: str) -> float:
    """A Quantity's value in UCUM ``unit`` (``units.quantity_value``), converted values
    rounded by ``round_converted``. Raises ``units.UnitError``."""
    value = quantity_value(quantity, unit)
    return value if isinstance(quantity, dict) and quantity.get("code") == unit else round_converted(value)


def round_converted(value: float) -> float:
    """Converted values to 9 significant digits: 157.48000000000002 -> 157.48, so a unit
    conversion does not leave binary noise the contract's range checks or the round trip see."""
    return float(f"{value:.9g}")

def surgery_moment(proc: Res) -> dt.datetime | None:
    performed = proc.r.get("performedDateTime")
    if performed is None and isinstance(proc.r.get("performedPeriod"), dict):
        performed = proc.r["performedPeriod"].get("start")
    read = date_of(performed)
    return read[1] if read else None
