"""Terminology of the FHIR mapping: code systems, codes and where each code comes from.

Every standard code here carries ``source``: a page a reviewer can open to check it (the
terminology's own browser where it has a public one, else the published value set or
specification that lists it). Codes were checked against those sources when written, not
recalled. Where no standard code could be verified (the contract's own imaging measures,
the augmentation technique), the project CodeSystem (``PROJECT_SYSTEM``) is used and the
mapping says so; its codes are the contract's own field names (``features.schema``).
"""

from __future__ import annotations

from dataclasses import dataclass

from features.levels import LEVELS

# ---------------------------------------------------------------- code systems (canonical URLs)

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
ATC = "http://www.whocc.no/atc"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

#: Base of the project's canonical URLs. ``.example`` is reserved (RFC 2606), so these can
#: never collide with someone else's code system; replace it in one place when the project
#: has a domain of its own (the codes do not change).
CANONICAL_BASE = "https://refracture-risk.example/fhir"
#: The project CodeSystem: codes are the contract's field names (``hu_upper_adjacent``) and,
#: for a field's allowed values, ``<field>.<value>`` (``leakage_intradiscal.spike``).
PROJECT_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/refracture-contract"
#: Identifier system of ``procedures.procedure_id`` / ``patients.patient_id`` (pseudonymous keys).
PROCEDURE_ID_SYSTEM = f"{CANONICAL_BASE}/NamingSystem/procedure-id"
PATIENT_ID_SYSTEM = f"{CANONICAL_BASE}/NamingSystem/patient-id"
#: Extensions the mapping defines (documented in docs/fhir.md).
EXT_APPROACH = f"{CANONICAL_BASE}/StructureDefinition/approach"
EXT_CEMENT_VOLUME = f"{CANONICAL_BASE}/StructureDefinition/cement-volume"
EXT_TIMEPOINT = f"{CANONICAL_BASE}/StructureDefinition/imaging-timepoint"


@dataclass(frozen=True)
class Code:
    """One coding with the page that shows it is what it says."""

    system: str
    code: str
    display: str
    source: str = ""

    def coding(self) -> dict[str, str]:
        """The FHIR ``Coding`` (system, code, display)."""
        return {"system": self.system, "code": self.code, "display": self.display}


def snomed_browser(concept_id: str) -> str:
    """The SNOMED International browser page of a concept."""
    return f"https://browser.ihtsdotools.org/?perspective=full&conceptId1={concept_id}"


def loinc_page(code: str) -> str:
    return f"https://loinc.org/{code}"


def atc_page(code: str) -> str:
    """The WHO Collaborating Centre's ATC/DDD index page of a code."""
    return f"https://www.whocc.no/atc_ddd_index/?code={code}"


def project(code: str, display: str) -> Code:
    """A code of the project CodeSystem (its source is the CodeSystem itself)."""
    return Code(PROJECT_SYSTEM, code, display, source=f"{PROJECT_SYSTEM} (this project; docs/fhir.md)")


# --------------------------------------------------------------------------- vertebrae

#: DICOM PS3.16 CID 7603 "Vertebra" lists the SNOMED CT body structure of every vertebra.
DICOM_CID_7603 = "https://dicom.nema.org/medical/dicom/current/output/chtml/part16/sect_CID_7603.html"
_VERTEBRA_SCTID = {
    "T1": "64864005", "T2": "53733008", "T3": "1626008", "T4": "73071006", "T5": "56401006", "T6": "45296009",
    "T7": "62487009", "T8": "11068009", "T9": "82687006", "T10": "7610001", "T11": "12989004", "T12": "23215003",
    "L1": "66794005", "L2": "14293000", "L3": "36470004", "L4": "11994002", "L5": "49668003",
}
#: SNOMED CT body structure of each level T1-L5 (the contract's ``procedures.level``).
VERTEBRA: dict[str, Code] = {
    level: Code(SNOMED, sctid, f"{level} vertebra", source=f"{snomed_browser(sctid)} ; {DICOM_CID_7603}")
    for level, sctid in _VERTEBRA_SCTID.items()
}
VERTEBRA_BY_SCTID: dict[str, str] = {sctid: level for level, sctid in _VERTEBRA_SCTID.items()}
assert tuple(VERTEBRA) == LEVELS  # one code per level the contract accepts, in order

# --------------------------------------------------------------------------- laterality

#: DICOM PS3.16 CID 244 "Laterality": the SNOMED CT qualifier values for left, right, both.
DICOM_CID_244 = "https://dicom.nema.org/medical/dicom/current/output/chtml/part16/sect_CID_244.html"
APPROACH: dict[str, tuple[Code, ...]] = {
    "unilateral_left": (project("approach.unilateral_left", "Unilateral transpedicular access, left"),
                        Code(SNOMED, "7771000", "Left", f"{snomed_browser('7771000')} ; {DICOM_CID_244}")),
    "unilateral_right": (project("approach.unilateral_right", "Unilateral transpedicular access, right"),
                         Code(SNOMED, "24028007", "Right", f"{snomed_browser('24028007')} ; {DICOM_CID_244}")),
    "bilateral": (project("approach.bilateral", "Bilateral transpedicular access"),
                  Code(SNOMED, "51440002", "Right and left", f"{snomed_browser('51440002')} ; {DICOM_CID_244}")),
}

# --------------------------------------------------------------------------- procedures

#: CPT codes of percutaneous vertebroplasty (22510-22512) and of vertebral augmentation with
#: cavity creation, e.g. balloon kyphoplasty (22513-22515), as listed in the CMS local
#: coverage article for these codes. CPT is the AMA's; the codes are read, the first of each
#: technique's region written on export. SNOMED CT concepts for the two techniques could not
#: be verified from a public source here, so the project codes come first.
CPT_SOURCE = "https://radiologybillingcoding.com/2017/02/cpt-22510-22514-vertibroplasty-and.html (CMS LCD code list)"
TECHNIQUE: dict[str, tuple[Code, ...]] = {
    "PVP": (project("technique.PVP", "Percutaneous vertebroplasty (PVP)"),
            Code(CPT, "22510", "Percutaneous vertebroplasty, 1 vertebral body; cervicothoracic", CPT_SOURCE),
            Code(CPT, "22511", "Percutaneous vertebroplasty, 1 vertebral body; lumbosacral", CPT_SOURCE),
            Code(CPT, "22512", "Percutaneous vertebroplasty; each additional vertebral body", CPT_SOURCE)),
    "PKP": (project("technique.PKP", "Percutaneous balloon kyphoplasty (PKP)"),
            Code(CPT, "22513", "Percutaneous vertebral augmentation with cavity creation, 1 vertebral body; thoracic", CPT_SOURCE),
            Code(CPT, "22514", "Percutaneous vertebral augmentation with cavity creation, 1 vertebral body; lumbar", CPT_SOURCE),
            Code(CPT, "22515", "Percutaneous vertebral augmentation with cavity creation; each additional vertebral body", CPT_SOURCE)),
}


def cpt_for(technique: str, level: str) -> Code:
    """The CPT code written on export: the first-level code of the technique's region."""
    thoracic = level.startswith("T")
    codes = {c.code: c for c in TECHNIQUE[technique] if c.system == CPT}
    if technique == "PVP":
        return codes["22510" if thoracic else "22511"]
    return codes["22513" if thoracic else "22514"]


BRACE = project("brace_prescribed", "Thoracolumbar brace prescribed for about one month after surgery")

# --------------------------------------------------------------------------- conditions

GECCO_CKD = "https://github.com/hl7germany/forschungsnetz-covid19 input/fsh/profiles/ChronicKidneyDiseases.fsh"
CPG_CKD = "https://github.com/cqframework/cpg-example-ckd input/fsh/terminology/valueset-chronic-renal-disease-finding.fsh"
#: Condition codes by contract field. ICD-10-CM entries are prefixes (the classification is
#: hierarchical: E11.9 is under E11). ``written`` is the coding the export writes.
CONDITIONS: dict[str, dict[str, object]] = {
    "type2_diabetes": {
        "codes": (Code(SNOMED, "44054006", "Diabetes mellitus type 2", snomed_browser("44054006")),),
        "icd10cm_prefixes": ("E11",),
        "icd10cm_source": "https://www.icd10data.com/ICD10CM/Codes/E00-E89/E08-E13/E11-",
    },
    "chronic_kidney_disease": {
        # Stage 1-2 (N18.1, N18.2) have eGFR >= 60: not the contract's definition (eGFR < 60).
        "codes": (Code(SNOMED, "709044004", "Chronic kidney disease", f"{snomed_browser('709044004')} ; {GECCO_CKD} ; {CPG_CKD}"),),
        "icd10cm_prefixes": ("N18.3", "N18.4", "N18.5", "N18.6"),
        "icd10cm_source": "https://www.icd10data.com/ICD10CM/Codes/N00-N99/N17-N19/N18-",
    },
    "vertebral_fracture": {
        # Not vertebral by itself: counted only with a vertebra as body site (or ICD-10-CM codes
        # that name the vertebra).
        "codes": (Code(SNOMED, "443165006", "Pathological fracture due to osteoporosis", snomed_browser("443165006")),),
        "icd10cm_prefixes": ("M80.08", "M48.5"),
        "icd10cm_source": ("https://www.icd10data.com/ICD10CM/Codes/M00-M99/M80-M85/M80- (M80.08: age-related "
                           "osteoporosis with current pathological fracture, vertebra(e)) ; M48.5 collapsed vertebra"),
    },
}
#: ICD-10-CM codes that name a vertebral fracture by themselves (no body site needed).
VERTEBRAL_ICD10CM = ("M80.08", "M48.5")

# --------------------------------------------------------------------------- medications (ATC)

ATC_BISPHOSPHONATES = Code(ATC, "M05BA", "Bisphosphonates", atc_page("M05BA"))
ATC_DENOSUMAB = Code(ATC, "M05BX04", "denosumab", atc_page("M05BX04"))
ATC_TERIPARATIDE = Code(ATC, "H05AA02", "teriparatide", atc_page("H05AA02"))
ATC_ROMOSOZUMAB = Code(ATC, "M05BX06", "romosozumab", atc_page("M05BX06"))
ATC_BONE_OTHER = Code(ATC, "M05B", "Drugs affecting bone structure and mineralization", atc_page("M05B"))
ATC_PTH = Code(ATC, "H05AA", "Parathyroid hormones and analogues", atc_page("H05AA"))
ATC_RALOXIFENE = Code(ATC, "G03XC01", "raloxifene", atc_page("G03XC01"))
ATC_GLUCOCORTICOIDS = Code(ATC, "H02AB", "Glucocorticoids (systemic)", atc_page("H02AB"))
#: Anti-osteoporosis classes by ATC prefix, most specific first (ATC is hierarchical: a code
#: belongs to every group it starts with). Anything else under M05B or H05AA, and
#: raloxifene, is 'other'.
THERAPY_BY_ATC: tuple[tuple[str, str], ...] = (
    ("M05BX04", "denosumab"), ("M05BX06", "romosozumab"), ("H05AA02", "teriparatide"),
    ("M05BA", "bisphosphonate"), ("M05BB", "bisphosphonate"),
    ("M05B", "other"), ("H05AA", "other"), ("G03XC01", "other"),
)
#: The ATC coding the export writes for each therapy value.
THERAPY_CODE: dict[str, Code] = {
    "bisphosphonate": ATC_BISPHOSPHONATES, "denosumab": ATC_DENOSUMAB, "denosumab_discontinued": ATC_DENOSUMAB,
    "teriparatide": ATC_TERIPARATIDE, "romosozumab": ATC_ROMOSOZUMAB, "other": ATC_BONE_OTHER,
}
#: Priority when several anti-osteoporosis drugs are active at surgery (the most potent
#: class, as a clinician would summarise the regimen).
THERAPY_PRIORITY = ("romosozumab", "teriparatide", "denosumab", "bisphosphonate", "other")
GLUCOCORTICOID_ATC_PREFIX = "H02AB"

# --------------------------------------------------------------------------- observations

THEMIS_DXA = "https://github.com/OHDSI/Themis (negative_value_as_number convention: the LOINC DXA codes)"
FHIR_BODY_HEIGHT = "https://hl7.org/fhir/R4/bodyheight.html"
FHIR_BODY_WEIGHT = "https://hl7.org/fhir/R4/bodyweight.html"
BODY_HEIGHT = Code(LOINC, "8302-2", "Body height", f"{loinc_page('8302-2')} ; {FHIR_BODY_HEIGHT}")
BODY_WEIGHT = Code(LOINC, "29463-7", "Body weight", f"{loinc_page('29463-7')} ; {FHIR_BODY_WEIGHT}")
#: DXA bone density by site: (BMD [Mass/Area], T-score). The contract's ``dxa_site`` values.
DXA_BY_SITE: dict[str, tuple[Code, Code]] = {
    "lumbar_spine": (Code(LOINC, "24966-4", "DXA Lumbar spine [Mass/Area] Bone density", f"{loinc_page('24966-4')} ; {THEMIS_DXA}"),
                     Code(LOINC, "38267-1", "DXA Lumbar spine [T-score] Bone density", f"{loinc_page('38267-1')} ; {THEMIS_DXA}")),
    "total_hip": (Code(LOINC, "38261-4", "DXA Hip [Mass/Area] Bone density", f"{loinc_page('38261-4')} ; {THEMIS_DXA}"),
                  Code(LOINC, "38264-8", "DXA Hip [T-score] Bone density", f"{loinc_page('38264-8')} ; {THEMIS_DXA}")),
    # LOINC's DXA codes name the femur, not its neck: a femoral-neck result is sent under them.
    "femoral_neck": (Code(LOINC, "24701-5", "DXA Femur [Mass/Area] Bone density", f"{loinc_page('24701-5')} ; {THEMIS_DXA}"),
                     Code(LOINC, "38263-0", "DXA Femur [T-score] Bone density", f"{loinc_page('38263-0')} ; {THEMIS_DXA}")),
}
#: DXA site not stated: the contract's own definition (lowest of the three sites).
DXA_UNSTATED = (project("dxa_bmd_g_cm2", "DXA areal BMD, lowest of lumbar spine / total hip / femoral neck"),
                project("dxa_t_score", "DXA T-score at the site of dxa_bmd_g_cm2"))
IMAGING_PANEL = project("imaging_examination", "Spine imaging measurements of one examination (components: contract fields)")
TIMEPOINT: dict[str, Code] = {tp: project(f"timepoint.{tp}", f"Imaging time point: {tp}") for tp in ("preop", "postop", "followup")}
LEAKAGE_INTRADISCAL: dict[str, Code] = {
    v: project(f"leakage_intradiscal.{v}", f"Intradiscal cement leakage: {v}") for v in ("none", "spike", "round")
}

# --------------------------------------------------------------------------- predictions (RiskAssessment)

#: What is predicted, coded by the label names (``features.labels``): RiskAssessment.prediction.outcome.
OUTCOME_TEXT = {
    "cemented_refracture": "Further collapse of the cemented vertebra",
    "adjacent_fracture": "New fracture of a vertebra directly above or below",
    "remote_fracture": "New vertebral fracture at least one normal segment away",
    "death": "Death from any cause",
}
OUTCOME: dict[str, Code] = {o: project(o, text) for o, text in OUTCOME_TEXT.items()}
ASSESSMENT: dict[str, Code] = {
    o: project(f"risk_assessment.{o}", f"Risk of {text[0].lower()}{text[1:]} after vertebral augmentation")
    for o, text in OUTCOME_TEXT.items()
}
RISK_BAND: dict[str, Code] = {b: project(f"risk_band.{b}", f"{b} risk (modelstore.risk_bands)") for b in ("low", "intermediate", "high")}
