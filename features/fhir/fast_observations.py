"""Observations for the Bulk fast path (``features.fhir.bulk_fast``): decoded straight into
small typed structs (msgspec), digested once per Observation, and chosen per record by the
mapping's rules, without building a ``Measure`` per imaging value.

Observations are most of a Bulk export's bytes (an imaging examination holds a component
per measure, each with its code's display text); the per-resource parser
(``features.fhir.measures.observations``) reads every one of them as a dict, per record.
This module reads the same elements (code, status, effective date, value, unit, time-point
extension, partOf, bodySite, components) and understands only the plain case: a code of
the mapping, status final/amended/corrected, a full effective date not in the future, a
value in the contract's own UCUM unit, imaging linked by ``partOf`` (or the patient's only
procedure), at most one examination per time point. Anything else (a unit to convert, a
conflicting duplicate, an unknown code, a missing value, a same-day image, ...) raises
``Decline``, and ``bulk_fast`` sends the whole patient to the per-resource parser, whose
records and problems are the reference. Height, weight, DXA and anything the shortcut
does not cover are chosen by the reference's own functions (``measures.vitals_and_dxa``,
``measures.imaging_fields``), so the selection rules are stated once.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Union

import msgspec

from features.fhir import codes as c
from features.fhir.mapping import VERTEBRA_OFFSET
from features.fhir.measures import (_DXA_BY_CODE, _IMAGING_CODES, _IMAGING_KIND, _LEAKAGE_BY_CODE, _OBS_DISCARDED,
                                    _OBS_USED, _PROJECT_PATIENT_CODES, _RECORD_IMAGING, _TIMEPOINT_BY_CODE, PROJECT_CODES,
                                    SAME_DAY, STATED_ELSEWHEN, imaging_fields, imaging_timepoint, vitals_and_dxa)
from features.fhir.read import Ctx, Measure, RecordSource, Res, date_of, level_of, normal_reference, surgery_moment

_Number = Union[int, float, None]
#: The value element of an imaging measure by its kind (``measures._imaging_value``).
_ELEMENT = {"binary": "valueBoolean", "category": "valueCodeableConcept"}


class Decline(Exception):
    """The fast path does not read this patient exactly as the per-resource parser would:
    the patient is parsed by the reference instead."""


# ------------------------------------------------------------------ the elements read (msgspec)


class Coding(msgspec.Struct, gc=False):
    system: str | None = None
    code: str | None = None


class Concept(msgspec.Struct, gc=False):
    coding: list[Coding] | None = None


class Quantity(msgspec.Struct, gc=False):
    value: _Number = None
    system: str | None = None
    code: str | None = None
    comparator: str | None = None


class Ref(msgspec.Struct, gc=False):
    reference: str | None = None


class Period(msgspec.Struct, gc=False):
    start: str | None = None


class Extension(msgspec.Struct, gc=False):
    url: str | None = None
    valueCodeableConcept: Concept | None = None


class Component(msgspec.Struct, gc=False):
    code: Concept | None = None
    valueQuantity: Quantity | None = None
    valueBoolean: bool | None = None
    valueCodeableConcept: Concept | None = None
    dataAbsentReason: Concept | None = None


class Observation(msgspec.Struct, gc=False):
    """The elements of an Observation the mapping reads (others are skipped unread). A
    resource whose elements do not have these JSON types does not decode, and goes to the
    per-resource parser."""

    resourceType: str | None = None
    id: str | None = None
    status: str | None = None
    subject: Ref | None = None
    effectiveDateTime: str | None = None
    effectivePeriod: Period | None = None
    code: Concept | None = None
    valueQuantity: Quantity | None = None
    valueBoolean: bool | None = None
    valueCodeableConcept: Concept | None = None
    dataAbsentReason: Concept | None = None
    extension: list[Extension] | None = None
    partOf: list[Ref] | None = None
    bodySite: Concept | None = None
    component: list[Component] | None = None


DECODER = msgspec.json.Decoder(Observation)


def subject_of(obs: Observation) -> str | None:
    """The patient reference as the parser keys it (``read.reference``)."""
    ref = obs.subject.reference if obs.subject is not None else None
    return normal_reference(ref) if isinstance(ref, str) else None


# ------------------------------------------------------------------ one Observation, digested


class Imaging:
    """One imaging Observation that belongs to a record: when, its stated time point, what
    it links to, and its values (code, value) in the order sent."""

    __slots__ = ("code", "day", "moment", "stated", "part_of", "sites", "items", "ref", "_by_tp", "_el_by_tp")

    def __init__(self, code: str, day: dt.date, moment: dt.datetime | None, stated: str | None,
                 part_of: list[str], sites: set[str], items: list[tuple[str, object, int]], ref: str):
        self.code, self.day, self.moment, self.stated = code, day, moment, stated
        self.part_of, self.sites, self.items, self.ref = part_of, sites, items, ref
        self._by_tp: dict[str, dict[str, object]] = {}
        self._el_by_tp: dict[str, dict[str, str]] = {}

    def values(self, tp: str) -> dict[str, object]:
        """The values a record takes at time point ``tp`` (fields of the record only)."""
        got = self._by_tp.get(tp)
        if got is None:
            got = self._by_tp[tp] = {code: v for code, v, _ in self.items if f"{code}_{tp}" in _RECORD_IMAGING}
        return got

    def component(self, j: int) -> int:
        """The component index a value's FHIRPath names (-1: the Observation's own value)."""
        return j if self.code == c.IMAGING_PANEL.code else -1

    def elements(self, tp: str) -> dict[str, str]:
        """Record path -> FHIRPath of each value ``values(tp)`` gives (``RecordSource._elements``,
        as ``Measure.expression`` writes it)."""
        got = self._el_by_tp.get(tp)
        if got is None:
            got = self._el_by_tp[tp] = {
                f"imaging.{tp}.{code}": Measure(code, None, self.day, None, "Observation", self.component(j),
                                                _ELEMENT.get(_IMAGING_KIND[code][0], "valueQuantity"), self.ref).expression
                for code, _, j in self.items if f"{code}_{tp}" in _RECORD_IMAGING}
        return got


def _project_code(concept: Concept | None) -> str | None:
    """The first project coding's code (``read.project_code``)."""
    if concept is not None and concept.coding:
        for cd in concept.coding:
            if cd.system == c.PROJECT_SYSTEM:
                return cd.code
    return None


def _exact(q: Quantity | None, unit: str) -> _Number:
    """The value of a Quantity in the contract's own UCUM unit; anything else declines
    (a unit to convert or refuse is the reference's to read)."""
    if q is not None and q.code == unit and q.system == c.UCUM and q.comparator is None and q.value is not None:
        return q.value
    raise Decline


def digest(obs: Observation, today_limit: dt.date) -> tuple | None:
    """One Observation as the per-resource parser reads it (``measures.observations``):
    None if the mapping does not read it, else ('vital', field, Measure), ('dxa', site,
    which, Measure) or ('imaging', Imaging). Raises ``Decline`` where the reference would
    report a problem or convert a unit."""
    status = obs.status
    if status in _OBS_DISCARDED:
        return None
    own_code, seen_project, loinc = None, False, set()
    if obs.code is not None and obs.code.coding:
        for cd in obs.code.coding:
            if cd.system == c.PROJECT_SYSTEM:
                if not seen_project:
                    own_code, seen_project = cd.code, True
            elif cd.system == c.LOINC:
                loinc.add(cd.code)
    if own_code is not None:
        if own_code not in PROJECT_CODES:
            raise Decline
        if own_code in _IMAGING_CODES or own_code == c.IMAGING_PANEL.code:
            kind = "imaging"
        elif own_code in _PROJECT_PATIENT_CODES:
            kind = "dxa"
        else:
            raise Decline
    elif c.BODY_HEIGHT.code in loinc or c.BODY_WEIGHT.code in loinc:
        kind = "vital"
    elif loinc & _DXA_BY_CODE.keys():
        kind = "dxa"
    else:
        return None
    if status not in _OBS_USED:
        raise Decline  # a warning in the reference
    when = date_of(obs.effectiveDateTime)
    if when is None and obs.effectivePeriod is not None:
        when = date_of(obs.effectivePeriod.start)
    if when is None or when[0] > today_limit:
        raise Decline
    ref = f"Observation/{obs.id}" if isinstance(obs.id, str) else ""
    if kind == "vital":
        field, unit = ("height_cm", "cm") if c.BODY_HEIGHT.code in loinc else ("weight_kg", "kg")
        if obs.valueQuantity is None and obs.dataAbsentReason is not None:
            return None
        return ("vital", field, Measure(field, _exact(obs.valueQuantity, unit), when[0], when[1], "Observation", -1,
                                        "valueQuantity", ref))
    if kind == "dxa":
        if own_code:
            site, which = _PROJECT_PATIENT_CODES[own_code]
        else:
            sites = [_DXA_BY_CODE[code] for code in loinc if code in _DXA_BY_CODE]
            if len(sites) > 1:
                raise Decline  # the reference takes the first of a set: its order is not defined
            site, which = sites[0]
        field, unit = ("dxa_bmd_g_cm2", "g/cm2") if which == "bmd" else ("dxa_t_score", "{T-score}")
        if obs.valueQuantity is None and obs.dataAbsentReason is not None:
            return None
        return ("dxa", site, which, Measure(field, _exact(obs.valueQuantity, unit), when[0], when[1], "Observation", -1,
                                            "valueQuantity", ref))
    stated = None
    for ext in obs.extension or ():
        if ext.url == c.EXT_TIMEPOINT:
            stated = _TIMEPOINT_BY_CODE.get(_project_code(ext.valueCodeableConcept) or "")
            if stated is None:
                raise Decline
    panel = own_code == c.IMAGING_PANEL.code
    items: list[tuple[str, object, int]] = []
    seen: set[str] = set()
    for j, item in enumerate((obs.component or ()) if panel else (obs,)):
        code = _project_code(item.code)
        if code not in _IMAGING_CODES or code in seen:
            raise Decline  # unknown measure, or the same measure twice in one examination
        seen.add(code)
        kind_of, unit = _IMAGING_KIND[code]
        if kind_of == "binary":
            value = item.valueBoolean
            if value is None:
                if item.dataAbsentReason is None:
                    raise Decline
                continue
            items.append((code, int(value), j))
        elif kind_of == "category":
            chosen = _project_code(item.valueCodeableConcept)
            if chosen not in _LEAKAGE_BY_CODE:
                if item.valueCodeableConcept is not None or item.dataAbsentReason is None:
                    raise Decline
                continue
            items.append((code, _LEAKAGE_BY_CODE[chosen], j))
        else:
            if item.valueQuantity is None and obs.dataAbsentReason is not None:
                continue  # the reference looks at the Observation's dataAbsentReason here
            items.append((code, _exact(item.valueQuantity, unit), j))
    part_of = [r for r in (normal_reference(p.reference) for p in obs.partOf or () if isinstance(p.reference, str)) if r]
    sites = {c.VERTEBRA_BY_SCTID[cd.code] for cd in (obs.bodySite.coding or () if obs.bodySite else ())
             if cd.system == c.SNOMED and cd.code in c.VERTEBRA_BY_SCTID}
    return ("imaging", Imaging(own_code, when[0], when[1], stated, part_of, sites, items, ref))


# ------------------------------------------------------------------ one record's measured fields


def _belongs(obs: Imaging, proc: Res, completed: list[Res]) -> bool:
    """``measures._belongs`` for the cases it answers without a problem; others decline."""
    if obs.part_of:
        return f"Procedure/{proc.r.get('id')}" in obs.part_of if isinstance(proc.r.get("id"), str) else False
    if obs.sites and obs.code in VERTEBRA_OFFSET:
        raise Decline  # linked by the vertebra a single measure names: the reference's to read
    if obs.sites and obs.code == c.IMAGING_PANEL.code:
        return level_of(None, proc) in obs.sites
    if len(completed) == 1:
        return True
    raise Decline


def _timepoint(obs: Imaging, surgery: dt.date, moment: dt.datetime | None) -> str | None:
    """The time point the reference gives every value of ``obs`` (None: not used); a value
    it cannot place (a problem in the reference) declines."""
    tp = imaging_timepoint(obs.stated, obs.day, obs.moment, surgery, moment)
    if tp in (STATED_ELSEWHEN, SAME_DAY):
        raise Decline
    return tp


class PatientObservations:
    """One patient's digested Observations; ``observe`` is the ``observe`` hook of
    ``parse._parse_patient`` (it fills a record's measured fields)."""

    def __init__(self, digests: list[tuple]):
        self.vitals: list[tuple[str, Measure]] = [(d[1], d[2]) for d in digests if d[0] == "vital"]
        self.dxa: list[tuple[str, str, Measure]] = [(d[1], d[2], d[3]) for d in digests if d[0] == "dxa"]
        self.imaging: list[Imaging] = [d[1] for d in digests if d[0] == "imaging"]

    def observe(self, ctx: Ctx, rec: dict, el: dict, src: RecordSource, mine: list[Res], proc: Res,
                surgery: dt.date, completed: list[Res], surgery_of: dict[int, dt.date | None]) -> None:
        vitals: dict[str, list[Measure]] = defaultdict(list)
        for field, m in self.vitals:
            vitals[field].append(m)
        vitals_and_dxa(ctx, rec["patient"], el, src, vitals, self.dxa, surgery)
        mine_imaging = [o for o in self.imaging if _belongs(o, proc, completed)]
        moment = surgery_moment(proc)
        chosen: dict[str, list[Imaging]] = {"preop": [], "postop": []}
        for o in mine_imaging:
            tp = _timepoint(o, surgery, moment)
            if tp is not None:
                chosen[tp].append(o)
        if len(chosen["preop"]) > 1 or len(chosen["postop"]) > 1:
            # Several examinations at one time point: the reference's rules, value by value.
            imaging_fields(ctx, rec, el, src, _measures(mine_imaging), proc, surgery)
            return
        pre = chosen["preop"][0] if chosen["preop"] else None
        post = chosen["postop"][0] if chosen["postop"] else None
        pre_values = pre.values("preop") if pre else {}
        post_values = post.values("postop") if post else {}
        rec["imaging"]["preop"].update(pre_values)
        rec["imaging"]["postop"].update(post_values)
        if pre_values:
            el.update(pre.elements("preop"))
        if post_values:
            el.update(post.elements("postop"))
        # The basis as the reference orders it: per measure, in the order first sent, the
        # pre- then the post-operative examination it was taken from; then without repeats.
        wanted = (pre is not None and bool(pre_values)) + (post is not None and bool(post_values))
        added: list[str] = []
        if wanted:
            seen: set[str] = set()
            for o in mine_imaging:
                for code, _, _ in o.items:
                    if code in seen:
                        continue
                    seen.add(code)
                    if code in pre_values and pre.ref not in added:
                        added.append(pre.ref)
                    if code in post_values and post.ref not in added:
                        added.append(post.ref)
                if len(added) == wanted:
                    break
        src.basis[:] = list(dict.fromkeys(src.basis + added))


def _measures(observations: list[Imaging]) -> dict[str, list[Measure]]:
    """Imaging values as the reference's ``Measure``s (code -> values in the order sent)."""
    out: dict[str, list[Measure]] = defaultdict(list)
    for o in observations:
        for code, value, j in o.items:
            out[code].append(Measure(code, value, o.day, o.moment, "Observation", o.component(j),
                                     _ELEMENT.get(_IMAGING_KIND[code][0], "valueQuantity"), o.ref, o.stated))
    return out
