"""Catalogue of derived features: name, group, timing, unit and a clinician's label.

Feature sets are defined by *timing*, never by hand-picked lists, so a new post-operative
feature cannot slip into the pre-operative set:

- ``preop``: known before surgery (history, DXA, pre-op CT/MRI/radiograph).
- ``postop``: ``preop`` plus what the operation adds (technique, approach, cement) and the
  immediate post-operative images, and the post-operative brace prescription.

``followup`` features (e.g. the compression-rate increase that *defines* a refracture) are
computed for reference but belong to no feature set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Timing = Literal["preop", "intraop", "postop", "followup"]
FEATURE_SETS = ("preop", "postop")
_ALLOWED: dict[str, tuple[str, ...]] = {
    "preop": ("preop",),
    "postop": ("preop", "intraop", "postop"),
}


@dataclass(frozen=True)
class FeatureSpec:
    """One derived feature."""

    name: str
    group: str
    timing: Timing
    label: str
    unit: str = ""
    kind: Literal["continuous", "binary", "count"] = "continuous"
    definition: str = ""

    def display(self) -> str:
        """Clinical words with unit, e.g. 'Adjacent vertebra HU (lowest) [HU]'."""
        return f"{self.label} [{self.unit}]" if self.unit and self.kind == "continuous" else self.label


def _f(name, group, timing, label, unit="", kind="continuous", definition=""):
    return FeatureSpec(name, group, timing, label, unit, kind, definition)


FEATURES: tuple[FeatureSpec, ...] = (
    # clinical
    _f("age_years", "clinical", "preop", "Age", "years"),
    _f("sex_female", "clinical", "preop", "Female sex", kind="binary"),
    _f("bmi_kg_m2", "clinical", "preop", "Body-mass index", "kg/m²", definition="weight_kg / (height_cm/100)²"),
    _f("type2_diabetes", "clinical", "preop", "Type 2 diabetes", kind="binary"),
    _f("chronic_kidney_disease", "clinical", "preop", "Chronic kidney disease", kind="binary"),
    _f("glucocorticoids_long_term", "clinical", "preop", "Long-term glucocorticoids", kind="binary"),
    _f("prior_vertebral_fractures_n", "clinical", "preop", "Prior vertebral fractures", "count", kind="count"),
    _f("on_anti_osteoporosis_therapy", "clinical", "preop", "On anti-osteoporosis therapy", kind="binary",
       definition="any therapy other than 'none' or 'denosumab_discontinued'"),
    _f("denosumab_discontinued", "clinical", "preop", "Denosumab discontinued", kind="binary"),
    _f("pain_to_surgery_days", "clinical", "preop", "Days from pain onset to surgery", "days",
       definition="surgery_date − pain_onset_date"),
    _f("n_levels_treated", "clinical", "preop", "Levels treated in the session", "count", kind="count"),
    _f("brace_prescribed", "clinical", "postop", "Brace after surgery", kind="binary"),
    # HU / BMD
    _f("dxa_bmd_g_cm2", "bone_density", "preop", "DXA BMD", "g/cm²"),
    _f("dxa_t_score", "bone_density", "preop", "DXA T-score", "SD"),
    _f("hu_index_preop", "bone_density", "preop", "Treated vertebra HU before surgery", "HU"),
    _f("hu_upper_adjacent", "bone_density", "preop", "Vertebra above: HU", "HU"),
    _f("hu_lower_adjacent", "bone_density", "preop", "Vertebra below: HU", "HU"),
    _f("hu_adjacent_min", "bone_density", "preop", "Adjacent vertebra HU (lowest)", "HU",
       definition="min(hu_upper_adjacent, hu_lower_adjacent), pre-op CT"),
    _f("hu_ratio_augmented_adjacent", "bone_density", "postop", "Augmented/adjacent HU ratio", "ratio",
       definition="post-op hu_index / hu_adjacent_min: the stiffness gradient"),
    # sarcopenia
    _f("psoas_muscle_index_cm2_m2", "sarcopenia", "preop", "Psoas muscle index", "cm²/m²",
       definition="psoas_area_cm2 / (height_cm/100)²"),
    _f("paraspinal_fat_fraction_pct", "sarcopenia", "preop", "Paraspinal fat fraction", "%"),
    _f("sarcopenia", "sarcopenia", "preop", "Sarcopenia (low psoas index)", kind="binary",
       definition="psoas muscle index < 6.36 cm²/m² (men) or < 3.92 cm²/m² (women), Hamaguchi 2016"),
    # cement distribution and procedure
    _f("technique_pkp", "cement", "intraop", "Kyphoplasty (vs vertebroplasty)", kind="binary"),
    _f("approach_bilateral", "cement", "intraop", "Bilateral approach", kind="binary"),
    _f("cement_volume_ml", "cement", "intraop", "Cement volume", "mL"),
    _f("fill_ratio_total_pct", "cement", "postop", "Cement fill ratio", "%",
       definition="100 × cement_volume_ml / vertebral_body_volume_ml"),
    _f("fill_ratio_larger_side_pct", "cement", "postop", "Cement fill ratio, fuller side", "%",
       definition="100 × cement_larger_side_volume_ml / vertebral_body_volume_ml (Zhou 2023: > 13.82 % raises adjacent-fracture risk)"),
    _f("npec_upper", "cement", "postop", "Cement misses upper endplate", kind="binary"),
    _f("npec_lower", "cement", "postop", "Cement misses lower endplate", kind="binary"),
    _f("npec_count", "cement", "postop", "Endplates without cement contact", "0–2", kind="count",
       definition="2 − cement_touches_upper_endplate − cement_touches_lower_endplate"),
    _f("leakage_any", "cement", "postop", "Any cement leakage", kind="binary"),
    _f("leakage_intradiscal", "cement", "postop", "Intradiscal cement leakage", kind="binary"),
    _f("leakage_intradiscal_spike", "cement", "postop", "Intradiscal leakage, spike type", kind="binary"),
    _f("leakage_paravertebral", "cement", "postop", "Paravertebral cement leakage", kind="binary"),
    _f("leakage_venous", "cement", "postop", "Venous cement leakage", kind="binary"),
    _f("leakage_epidural", "cement", "postop", "Epidural cement leakage", kind="binary"),
    # morphometry
    _f("level_index", "morphometry", "preop", "Level (T1=1 … L5=17)", "index", kind="count"),
    _f("thoracolumbar_junction", "morphometry", "preop", "Thoracolumbar junction (T10–L2)", kind="binary"),
    _f("compression_rate_preop_pct", "morphometry", "preop", "Compression rate before surgery", "%",
       definition="100 × fractured height / mean height of the vertebrae above and below (L5: / L4)"),
    _f("kyphotic_angle_preop_deg", "morphometry", "preop", "Kyphotic angle before surgery", "°"),
    _f("wedge_angle_preop_deg", "morphometry", "preop", "Wedge angle before surgery", "°"),
    _f("compression_rate_postop_pct", "morphometry", "postop", "Compression rate after surgery", "%"),
    _f("reduction_rate_pct", "morphometry", "postop", "Height restoration (reduction rate)", "points",
       definition="post-op compression rate − pre-op compression rate, percentage points"),
    _f("kyphotic_angle_postop_deg", "morphometry", "postop", "Kyphotic angle after surgery", "°"),
    _f("reduction_angle_deg", "morphometry", "postop", "Kyphosis correction (reduction angle)", "°",
       definition="pre-op kyphotic angle − post-op kyphotic angle"),
    _f("compression_rate_increase_pct", "morphometry", "followup", "Compression-rate increase at follow-up", "points",
       definition="post-op compression rate − follow-up compression rate (CRI; defines refracture, never a predictor)"),
    # imaging signs
    _f("ivc", "imaging_signs", "preop", "Intravertebral cleft (MRI)", kind="binary"),
    _f("endplate_disruption", "imaging_signs", "preop", "Endplate cortical disruption (MRI)", kind="binary"),
)

FEATURES_BY_NAME: dict[str, FeatureSpec] = {f.name: f for f in FEATURES}


def feature_names(feature_set: str) -> list[str]:
    """Names of the features in ``feature_set`` ('preop' or 'postop'), in catalogue order."""
    if feature_set not in _ALLOWED:
        raise ValueError(f"unknown feature set {feature_set!r}: choose one of {', '.join(FEATURE_SETS)}")
    allowed = _ALLOWED[feature_set]
    return [f.name for f in FEATURES if f.timing in allowed]


def display_name(name: str) -> str:
    """Clinical words with unit for a feature name (falls back to the name itself)."""
    spec = FEATURES_BY_NAME.get(name)
    return spec.display() if spec else name
