"""Observations -> the record's measured fields: height, weight, DXA and imaging (internal
to ``features.fhir``; the rules that pick one value among several are the mapping's,
``features.fhir.mapping``)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from features.fhir import codes as c
from features.fhir.mapping import (DXA_DAYS, FIELD_MAP, POSTOP_IMAGING_DAYS, PREOP_IMAGING_DAYS, UCUM_OF_UNIT, VERTEBRA_OFFSET,
                                   VITALS_DAYS)
from features.fhir.read import Ctx, FhirProblem, Measure, RecordSource, Res, codings, date_of, level_of, project_code, \
    ref_keys, reference, round_converted, surgery_moment
from features.fhir.units import UnitError, quantity_value
from features.levels import LEVEL_INDEX, LEVELS
from features.records import RECORD_FIELDS
from features.schema import IMAGING

_OBS_USED = {"final", "amended", "corrected"}
_OBS_DISCARDED = {"cancelled", "entered-in-error"}
#: Imaging codes the parser knows: every imaging column of the contract (follow-up ones are
#: recognised and not used).
_IMAGING_CODES = frozenset(n for n in IMAGING.column_names if n not in ("procedure_id", "timepoint", "exam_date"))
_RECORD_IMAGING = frozenset(f.flat_name for f in RECORD_FIELDS if f.section == "imaging")
#: Per imaging code: (kind, UCUM unit of the contract).
_IMAGING_KIND = {n: (IMAGING.column(n).kind, UCUM_OF_UNIT.get(IMAGING.column(n).unit, "")) for n in _IMAGING_CODES}
_TIMEPOINT_BY_CODE = {code.code: tp for tp, code in c.TIMEPOINT.items()}
_LEAKAGE_BY_CODE = {code.code: v for v, code in c.LEAKAGE_INTRADISCAL.items()}
_DXA_BY_CODE: dict[str, tuple[str, str]] = {}
for _site, (_bmd, _t) in c.DXA_BY_SITE.items():
    _DXA_BY_CODE[_bmd.code] = (_site, "bmd")
    _DXA_BY_CODE[_t.code] = (_site, "t")
_PROJECT_PATIENT_CODES = {c.DXA_UNSTATED[0].code: ("unstated", "bmd"), c.DXA_UNSTATED[1].code: ("unstated", "t")}
#: Every code the project CodeSystem defines (``features.fhir.codesystem`` builds it from the same lists).
PROJECT_CODES: frozenset[str] = frozenset(
    {m.codes[0].code for m in FIELD_MAP.values() if m.codes and m.codes[0].system == c.PROJECT_SYSTEM}
    | _IMAGING_CODES | {c.IMAGING_PANEL.code} | set(_TIMEPOINT_BY_CODE) | set(_LEAKAGE_BY_CODE)
    | {code.code for codes in (*c.TECHNIQUE.values(), *c.APPROACH.values()) for code in codes if code.system == c.PROJECT_SYSTEM}
    | set(_PROJECT_PATIENT_CODES)
    | {code.code for table in (c.OUTCOME, c.ASSESSMENT, c.RISK_BAND) for code in table.values()}
)



# ---------------------------------------------------------------------------- observations


def observations(ctx: Ctx, rec: dict, el: dict, src: RecordSource, mine: list[Res], proc: Res,
                  surgery: dt.date, completed: list[Res], surgery_of: dict[int, dt.date | None]) -> None:
    P = rec["patient"]
    vitals: dict[str, list[Measure]] = defaultdict(list)
    dxa: list[tuple[str, str, Measure]] = []
    imaging: dict[str, list[Measure]] = defaultdict(list)
    for obs in (r for r in mine if r.type == "Observation"):
        status = obs.r.get("status")
        if status in _OBS_DISCARDED:
            continue
        sent = codings(obs.r.get("code"))
        own_code = next((code for system, code in sent if system == c.PROJECT_SYSTEM), None)
        loinc = {code for system, code in sent if system == c.LOINC}
        kind = None
        if own_code is not None:
            if own_code not in PROJECT_CODES:
                ctx.error(obs, ".code", f"unknown code {own_code!r} in {c.PROJECT_SYSTEM}", "code-invalid")
                continue
            kind = "imaging" if own_code in _IMAGING_CODES or own_code == c.IMAGING_PANEL.code else (
                "dxa" if own_code in _PROJECT_PATIENT_CODES else None)
            if kind is None:
                ctx.error(obs, ".code", f"{own_code!r} is not an Observation code of the mapping", "code-invalid")
                continue
        elif c.BODY_HEIGHT.code in loinc or c.BODY_WEIGHT.code in loinc or loinc & set(_DXA_BY_CODE):
            kind = "vital" if (c.BODY_HEIGHT.code in loinc or c.BODY_WEIGHT.code in loinc) else "dxa"
        else:
            continue  # not an observation the mapping reads
        if status not in _OBS_USED:
            ctx.warn(obs, ".status", f"status {status!r}: only final, amended or corrected results are used")
            continue
        when = date_of(obs.r.get("effectiveDateTime"))
        path_eff = ".effectiveDateTime"
        if when is None and isinstance(obs.r.get("effectivePeriod"), dict):
            when, path_eff = date_of(obs.r["effectivePeriod"].get("start")), ".effectivePeriod.start"
        if when is None:
            ctx.error(obs, ".effective[x]", "no effective date (YYYY-MM-DD): cannot tell when it was measured", "required")
            continue
        if ctx.future(obs, path_eff, when[0]):
            continue
        if kind == "vital":
            field_name, unit = ("height_cm", "cm") if c.BODY_HEIGHT.code in loinc else ("weight_kg", "kg")
            value = _quantity(ctx, obs, ".valueQuantity", obs.r.get("valueQuantity"), unit, field_name)
            if value is not None:
                vitals[field_name].append(Measure(field_name, value, when[0], when[1], obs.base, -1, "valueQuantity", obs.ref))
        elif kind == "dxa":
            site, which = _PROJECT_PATIENT_CODES.get(own_code) if own_code else next(
                _DXA_BY_CODE[code] for code in loinc if code in _DXA_BY_CODE)
            field_name, unit = ("dxa_bmd_g_cm2", "g/cm2") if which == "bmd" else ("dxa_t_score", "{T-score}")
            value = _quantity(ctx, obs, ".valueQuantity", obs.r.get("valueQuantity"), unit, field_name)
            if value is not None:
                dxa.append((site, which, Measure(field_name, value, when[0], when[1], obs.base, -1, "valueQuantity", obs.ref)))
        else:
            if not _belongs(ctx, obs, own_code, proc, completed):
                continue
            stated = None
            for i, ext in enumerate(obs.r.get("extension") or []):
                if isinstance(ext, dict) and ext.get("url") == c.EXT_TIMEPOINT:
                    stated = _TIMEPOINT_BY_CODE.get(project_code(ext.get("valueCodeableConcept")) or "")
                    if stated is None:
                        ctx.error(obs, f".extension[{i}]", "unknown imaging time point code", "code-invalid")
            panel = own_code == c.IMAGING_PANEL.code
            items = obs.r.get("component") or [] if panel else [obs.r]
            day, moment, base, ref = when[0], when[1], obs.base, obs.ref
            for j, item in enumerate(items):
                j = j if panel else -1
                code = None
                concept = item.get("code") if type(item) is dict else None
                if type(concept) is dict:
                    for coding in concept.get("coding") or ():
                        if type(coding) is dict and coding.get("system") == c.PROJECT_SYSTEM:
                            code = coding.get("code")
                            break
                if code not in _IMAGING_CODES:
                    path = f".component[{j}]" if panel else ""
                    ctx.error(obs, f"{path}.code", f"unknown imaging measure {code!r}: not a field of the contract "
                                                   f"({c.PROJECT_SYSTEM})", "code-invalid")
                    continue
                kind, unit = _IMAGING_KIND[code]
                quantity = item.get("valueQuantity") if kind == "float" else None
                # The common case, a Quantity in the contract's own unit, read inline (this loop
                # runs for every imaging value of a Bulk export).
                if (type(quantity) is dict and quantity.get("code") == unit and quantity.get("system") == c.UCUM
                        and type(quantity.get("value")) in (int, float) and quantity.get("comparator") is None):
                    value, element = quantity["value"], "valueQuantity"
                else:
                    value, element = _imaging_value(ctx, obs, f".component[{j}]" if panel else "", item, code)
                if value is not None:
                    imaging[code].append(Measure(code, value, day, moment, base, j, element, ref, stated))
    vitals_and_dxa(ctx, P, el, src, vitals, dxa, surgery)
    imaging_fields(ctx, rec, el, src, imaging, proc, surgery)


def vitals_and_dxa(ctx: Ctx, P: dict, el: dict, src: RecordSource, vitals: dict[str, list[Measure]],
                   dxa: list[tuple[str, str, Measure]], surgery: dt.date) -> None:
    """Height, weight (``vitals``: field -> its values, in the order first sent) and DXA
    (``dxa``: (site, 'bmd' or 't', value)) chosen by the mapping's rules for one record."""
    for field_name, measures in vitals.items():
        chosen = _pick_before(ctx, measures, surgery, VITALS_DAYS)
        P[field_name] = chosen.value if chosen else None
        if chosen:
            el[f"patient.{field_name}"] = chosen
            src.basis.append(chosen.ref)
    P.setdefault("height_cm", None)
    P.setdefault("weight_kg", None)
    _dxa(ctx, P, el, src, dxa, surgery)


def _quantity(ctx: Ctx, obs: Res, path: str, quantity: Any, unit: str, field_name: str) -> float | None:
    if quantity is None:
        if obs.r.get("dataAbsentReason") is not None:
            return None
        ctx.error(obs, path, f"{field_name}: no valueQuantity", "required")
        return None
    try:
        value = quantity_value(quantity, unit)
    except UnitError as exc:
        ctx.error(obs, path, f"{field_name}: {exc}", "value")
        return None
    return value if quantity.get("code") == unit else round_converted(value)


def _imaging_value(ctx: Ctx, obs: Res, path: str, item: dict, code: str) -> tuple[Any, str]:
    kind, unit = _IMAGING_KIND[code]
    if kind == "binary":
        value = item.get("valueBoolean")
        if not isinstance(value, bool):
            if item.get("dataAbsentReason") is None:
                ctx.error(obs, f"{path}.valueBoolean", f"{code}: expected valueBoolean (true or false)", "value")
            return None, "valueBoolean"
        return int(value), "valueBoolean"
    if kind == "category":
        concept = item.get("valueCodeableConcept")
        chosen = project_code(concept)
        if chosen not in _LEAKAGE_BY_CODE:
            if concept is not None or item.get("dataAbsentReason") is None:
                ctx.error(obs, f"{path}.valueCodeableConcept", f"{code}: unknown code {chosen!r} (expected one of "
                                                               f"{', '.join(sorted(_LEAKAGE_BY_CODE))})", "code-invalid")
            return None, "valueCodeableConcept"
        return _LEAKAGE_BY_CODE[chosen], "valueCodeableConcept"
    value = _quantity(ctx, obs, f"{path}.valueQuantity", item.get("valueQuantity"), unit, code)
    return value, "valueQuantity"


def _belongs(ctx: Ctx, obs: Res, code: str | None, proc: Res, completed: list[Res]) -> bool:
    """Whether an imaging Observation is about ``proc`` (``RULE_LINK``)."""
    part_of = [reference(p) for p in obs.r.get("partOf") or []]
    part_of = [p for p in part_of if p]
    if part_of:
        return any(p in ref_keys(proc) for p in part_of)
    sites = {c.VERTEBRA_BY_SCTID[cd] for s in obs.r.get("bodySite") and [obs.r["bodySite"]] or []
             for system, cd in codings(s) if system == c.SNOMED and cd in c.VERTEBRA_BY_SCTID}
    if sites and code in VERTEBRA_OFFSET and code != c.IMAGING_PANEL.code:
        offset = VERTEBRA_OFFSET[code]
        matches = [p for p in completed if (lv := level_of(None, p)) and 0 <= LEVEL_INDEX[lv] - 1 + offset < len(LEVELS)
                   and LEVELS[LEVEL_INDEX[lv] - 1 + offset] in sites]
        if not matches:
            if proc is completed[0]:
                ctx.error(obs, ".bodySite", f"{code}: body site {sorted(sites)} is not the vertebra this field names "
                                            "for any treated level", "business-rule")
            return False
        return proc in matches
    if sites and code == c.IMAGING_PANEL.code:
        return level_of(None, proc) in sites
    if len(completed) == 1:
        return True
    if proc is completed[0]:
        ctx.error(obs, ".partOf", "the patient has several augmentation Procedures: say which one this imaging "
                                  "belongs to (partOf, or bodySite)", "business-rule")
    return False


def _conflict(ctx: Ctx, chosen: list[Measure]) -> Measure | None:
    values = {m.value for m in chosen}
    if len(values) > 1:
        first = chosen[0]
        ctx.patient_errors.append(FhirProblem(
            first.expression, f"{first.field}: conflicting values {sorted(values, key=str)} at the same time "
                              f"({first.moment.isoformat() if first.moment else first.day.isoformat()}); "
                              f"also sent at {', '.join(m.expression for m in chosen[1:])}", code="duplicate"))
        return None
    return chosen[0]


def _extreme(ctx: Ctx, measures: list[Measure], latest: bool) -> Measure | None:
    """The latest (or earliest) of ``measures``; several at that time must agree."""
    if len(measures) == 1:
        return measures[0]
    keys = [m.key for m in measures]
    best = max(keys) if latest else min(keys)
    return _conflict(ctx, [m for m, k in zip(measures, keys) if k == best])


def _pick_before(ctx: Ctx, measures: list[Measure], surgery: dt.date, window: int) -> Measure | None:
    eligible = [m for m in measures if m.day <= surgery and (surgery - m.day).days <= window]
    return _extreme(ctx, eligible, latest=True) if eligible else None


def _dxa(ctx: Ctx, P: dict, el: dict, src: RecordSource, dxa: list[tuple[str, str, Measure]], surgery: dt.date) -> None:
    P["dxa_bmd_g_cm2"] = None
    P["dxa_t_score"] = None
    eligible = [(s, w, m) for s, w, m in dxa if m.day <= surgery and (surgery - m.day).days <= DXA_DAYS]
    if not eligible:
        return
    exam_day = max(m.day for _, _, m in eligible)
    exam = [(s, w, m) for s, w, m in eligible if m.day == exam_day]
    by_site: dict[str, dict[str, Measure]] = defaultdict(dict)
    for site in {s for s, _, _ in exam}:
        for which in ("bmd", "t"):
            ms = [m for s, w, m in exam if s == site and w == which]
            if ms:
                chosen = _extreme(ctx, ms, latest=True)
                if chosen is not None:
                    by_site[site][which] = chosen
    with_bmd = [s for s in by_site if "bmd" in by_site[s]]
    pool, which = (with_bmd, "bmd") if with_bmd else ([s for s in by_site if "t" in by_site[s]], "t")
    if not pool:
        return
    site = min(pool, key=lambda s: (by_site[s][which].value, s))
    for w, name in (("bmd", "dxa_bmd_g_cm2"), ("t", "dxa_t_score")):
        m = by_site[site].get(w)
        if m is not None:
            P[name] = m.value
            el[f"patient.{name}"] = m
            src.basis.append(m.ref)


#: ``imaging_timepoint``'s answers for an imaging value it cannot place (each a problem).
STATED_ELSEWHEN, SAME_DAY = "stated-elsewhen", "same-day"


def imaging_timepoint(stated: str | None, day: dt.date, moment: dt.datetime | None, surgery: dt.date,
                      surgery_at: dt.datetime | None) -> str | None:
    """The time point an imaging value counts at (``mapping.RULE_PREOP``, ``RULE_POSTOP``,
    ``RULE_SAME_DAY``): its stated time point (the imaging-timepoint extension) if it agrees
    with the date, else before or after the surgery by date (by time on the surgery day). 'preop' or 'postop' if used; None if it
    is outside the unstated window (``PREOP_IMAGING_DAYS``, ``POSTOP_IMAGING_DAYS``);
    ``STATED_ELSEWHEN`` (stated pre-operative but dated after surgery, or the reverse) or
    ``SAME_DAY`` (the surgery day without a time) if it cannot be placed."""
    tp = stated
    if tp is not None:
        if tp == "preop" and day > surgery or tp != "preop" and day < surgery:
            return STATED_ELSEWHEN
    elif day < surgery:
        tp = "preop"
    elif day > surgery:
        tp = "postop"
    elif moment is not None and surgery_at is not None:
        tp = "preop" if moment < surgery_at else "postop"
    else:
        return SAME_DAY
    if tp == "preop" and (stated or (surgery - day).days <= PREOP_IMAGING_DAYS):
        return "preop"
    if tp == "postop" and (stated or (day - surgery).days <= POSTOP_IMAGING_DAYS):
        return "postop"
    return None


def imaging_fields(ctx: Ctx, rec: dict, el: dict, src: RecordSource, imaging: dict[str, list[Measure]], proc: Res,
                   surgery: dt.date) -> None:
    """The imaging values of one record (``imaging``: code -> its values from the Observations
    that belong to ``proc``, in the order sent) chosen by the pre-/post-operative rules;
    then the record's basis without repeats."""
    moment = surgery_moment(proc)
    for code, measures in imaging.items():
        pre: list[Measure] = []
        post: list[Measure] = []
        for m in measures:
            tp = imaging_timepoint(m.timepoint, m.day, m.moment, surgery, moment)
            if tp == STATED_ELSEWHEN:
                ctx.patient_errors.append(FhirProblem(m.expression, f"{code}: stated {m.timepoint} but dated {m.day} "
                                                                    f"(surgery {surgery})", code="business-rule"))
            elif tp == SAME_DAY:
                ctx.patient_errors.append(FhirProblem(
                    m.expression, f"{code}: dated the surgery day ({surgery}) without a time, so it cannot be told "
                                  "pre- from post-operative: send the time, or the imaging-timepoint extension",
                    code="business-rule"))
            elif tp == "preop":
                pre.append(m)
            elif tp == "postop":
                post.append(m)
        # Pre-operative: the latest before surgery; post-operative: the first after it.
        for tp, candidates, latest in (("preop", pre, True), ("postop", post, False)):
            chosen = _extreme(ctx, candidates, latest) if candidates and f"{code}_{tp}" in _RECORD_IMAGING else None
            if chosen is not None:
                rec["imaging"][tp][code] = chosen.value
                el[f"imaging.{tp}.{code}"] = chosen
                src.basis.append(chosen.ref)
    src.basis[:] = list(dict.fromkeys(src.basis))
