"""Conditions and MedicationStatements -> the record's history fields (internal to
``features.fhir``; the rules are the mapping's, ``features.fhir.mapping``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from features.fhir import codes as c
from features.fhir.mapping import GLUCOCORTICOID_DAYS
from features.fhir.read import Ctx, RecordSource, Res, codings, date_of

_NOT_PRESENT = {"refuted", "entered-in-error"}


# ---------------------------------------------------------------------------- conditions


def _icd(code: str | None, prefixes: tuple[str, ...]) -> bool:
    return isinstance(code, str) and any(code.replace(" ", "").upper().startswith(p) for p in prefixes)


def conditions(ctx: Ctx, P: dict, el: dict, src: RecordSource, mine: list[Res], surgery: dt.date,
                index_refs: set[str], treated_levels: set[str]) -> None:
    dm_codes = {cd.code for cd in c.CONDITIONS["type2_diabetes"]["codes"]}  # type: ignore[attr-defined]
    ckd_codes = {cd.code for cd in c.CONDITIONS["chronic_kidney_disease"]["codes"]}  # type: ignore[attr-defined]
    fx_codes = {cd.code for cd in c.CONDITIONS["vertebral_fracture"]["codes"]}  # type: ignore[attr-defined]
    P["type2_diabetes"] = 0
    P["chronic_kidney_disease"] = 0
    el["patient.type2_diabetes"] = el["patient.chronic_kidney_disease"] = "Condition.code"
    el["patient.prior_vertebral_fractures_n"] = "Condition.code"
    fracture_sites: set[str] = set()
    undated_site = 0
    for cond in (r for r in mine if r.type == "Condition"):
        verification = {code for _, code in codings(cond.r.get("verificationStatus"))}
        if verification & _NOT_PRESENT:
            continue
        sent = codings(cond.r.get("code"))
        sct = {code for system, code in sent if system == c.SNOMED}
        icd = [code for system, code in sent if system == c.ICD10CM]
        is_dm = bool(sct & dm_codes) or any(_icd(x, c.CONDITIONS["type2_diabetes"]["icd10cm_prefixes"]) for x in icd)  # type: ignore[arg-type]
        is_ckd = bool(sct & ckd_codes) or any(_icd(x, c.CONDITIONS["chronic_kidney_disease"]["icd10cm_prefixes"]) for x in icd)  # type: ignore[arg-type]
        fx_icd = any(_icd(x, c.VERTEBRAL_ICD10CM) for x in icd)
        is_fx = bool(sct & fx_codes) or fx_icd
        if not (is_dm or is_ckd or is_fx):
            continue
        when = date_of(cond.r.get("onsetDateTime")) or date_of(cond.r.get("recordedDate"))
        if when is not None and ctx.future(cond, ".onsetDateTime", when[0]):
            continue
        before = when is None or when[0] <= surgery
        if is_dm and before:
            P["type2_diabetes"] = 1
            el["patient.type2_diabetes"] = f"{cond.base}.code"
            src.basis.append(cond.ref)
        if is_ckd and before:
            P["chronic_kidney_disease"] = 1
            el["patient.chronic_kidney_disease"] = f"{cond.base}.code"
            src.basis.append(cond.ref)
        if is_fx:
            if cond.ref in index_refs or (when is not None and when[0] >= surgery):
                continue
            levels = set()
            for site in cond.r.get("bodySite") or []:
                for system, code in codings(site):
                    if system == c.SNOMED and code in c.VERTEBRA_BY_SCTID:
                        levels.add(c.VERTEBRA_BY_SCTID[code])
            if not levels and not fx_icd:
                continue  # an osteoporotic fracture elsewhere (hip, wrist): not vertebral
            if levels & treated_levels:
                continue  # a fracture treated in this session (the index fracture of one of its levels)
            if levels:
                fracture_sites |= levels
            else:
                undated_site += 1
            src.basis.append(cond.ref)
    P["prior_vertebral_fractures_n"] = len(fracture_sites) + undated_site


# ---------------------------------------------------------------------------- medications


def _atc(concept: Any) -> list[str]:
    return [code for system, code in codings(concept) if system == c.ATC and isinstance(code, str)]


def _therapy_class(atc: list[str]) -> str | None:
    for code in atc:
        for prefix, value in c.THERAPY_BY_ATC:
            if code.upper().startswith(prefix):
                return value
    return None


def medications(ctx: Ctx, P: dict, el: dict, src: RecordSource, mine: list[Res], surgery: dt.date) -> None:
    P["glucocorticoids_long_term"] = 0
    P["anti_osteoporosis_therapy"] = "none"
    el["patient.glucocorticoids_long_term"] = "MedicationStatement.medicationCodeableConcept"
    el["patient.anti_osteoporosis_therapy"] = "MedicationStatement.medicationCodeableConcept"
    active: list[tuple[str, Res]] = []
    stopped_denosumab: list[tuple[dt.date | None, Res]] = []
    bisphosphonate_starts: list[dt.date | None] = []
    for med in (r for r in mine if r.type == "MedicationStatement"):
        status = med.r.get("status")
        if status in ("entered-in-error", "not-taken", "unknown"):
            continue
        concept = med.r.get("medicationCodeableConcept")
        atc = _atc(concept)
        if not atc:
            if concept is not None or med.r.get("medicationReference") is not None:
                ctx.warn(med, ".medication", "no ATC coding: cannot tell whether it is an anti-osteoporosis drug or a "
                                             "glucocorticoid, so it was not used (add an ATC coding)", "code-unknown")
            continue
        period = med.r.get("effectivePeriod") if isinstance(med.r.get("effectivePeriod"), dict) else {}
        start = date_of(period.get("start")) if period else date_of(med.r.get("effectiveDateTime"))
        end = date_of(period.get("end")) if period else None
        start_day, end_day = (start[0] if start else None), (end[0] if end else None)
        if start_day and ctx.future(med, ".effectivePeriod.start", start_day):
            continue
        if any(code.upper().startswith(c.GLUCOCORTICOID_ATC_PREFIX) for code in atc) and status in ("active", "completed"):
            if start_day is None:
                ctx.error(med, ".effectivePeriod.start", "a systemic glucocorticoid without a start date: cannot tell "
                                                        f"whether it was taken for >= {GLUCOCORTICOID_DAYS} days", "required")
                continue
            last = min(end_day or surgery, surgery)
            if (last - start_day).days >= GLUCOCORTICOID_DAYS and start_day <= surgery:
                P["glucocorticoids_long_term"] = 1
                el["patient.glucocorticoids_long_term"] = f"{med.base}.medicationCodeableConcept"
                src.basis.append(med.ref)
            continue
        klass = _therapy_class(atc)
        if klass is None:
            continue
        started = start_day is None or start_day <= surgery
        ended = end_day is not None and end_day < surgery
        if klass == "bisphosphonate":
            bisphosphonate_starts.append(start_day)
        if status in ("active", "intended") and started and not ended or (
                status == "completed" and start_day is not None and started and end_day is not None and not ended):
            active.append((klass, med))
        elif klass == "denosumab" and (status in ("stopped", "completed") or ended):
            stopped_denosumab.append((end_day, med))
    if active:
        klass, med = min(active, key=lambda a: c.THERAPY_PRIORITY.index(a[0]))
        P["anti_osteoporosis_therapy"] = klass
        el["patient.anti_osteoporosis_therapy"] = f"{med.base}.medicationCodeableConcept"
        src.basis.append(med.ref)
    elif stopped_denosumab:
        end_day, med = stopped_denosumab[0]
        followed = any(s is not None and end_day is not None and end_day <= s <= surgery for s in bisphosphonate_starts)
        if not followed:
            P["anti_osteoporosis_therapy"] = "denosumab_discontinued"
            el["patient.anti_osteoporosis_therapy"] = f"{med.base}.status"
            src.basis.append(med.ref)
