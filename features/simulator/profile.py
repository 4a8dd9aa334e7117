"""Simulator profiles: a cohort described in YAML, validated once into a frozen model.

A profile says who is treated (age, sex, bone and muscle quality, levels, technique),
what the images look like (height restoration, cleft, cement contact, leakage), how the
three outcomes depend on them (odds ratios per named covariate) and how patients are
followed. Every number carries a ``source``: the publication it comes from (see
clinical-evidence.md, copied into the YAML so the product never reads it) or the word
"assumption" with a reason. Profiles ship in ``features/profiles/*.yaml``.
"""

from __future__ import annotations

import math
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from features.levels import LEVELS
from features.schema import DXA_SITES, FRACTURE_CRITERIA, THERAPIES

OUTCOMES = ("cemented_refracture", "adjacent_fracture", "remote_fracture")

#: Covariates an outcome model may use, with the unit its odds ratio is per. Patient-level
#: covariates are the same for every level treated in a session; the remote-fracture model
#: may use only these, because a remote fracture belongs to the patient, not to a level.
PATIENT_COVARIATES: dict[str, str] = {
    "age_per_10y": "(age - 80 years) / 10",
    "female": "1 if female",
    "bmd_per_0.1_lower": "(0.70 - true areal BMD g/cm²) / 0.1",
    "systemic_hu_per_10_lower": "(80 - patient's trabecular HU) / 10, HU capped to 40-160",
    "prior_fracture_any": "1 if at least one earlier osteoporotic vertebral fracture",
    "prior_fractures_n": "number of earlier osteoporotic vertebral fractures",
    "glucocorticoids_long_term": "1 if long-term oral glucocorticoids",
    "type2_diabetes": "1 if type 2 diabetes",
    "chronic_kidney_disease": "1 if chronic kidney disease",
    "therapy_none": "1 if no anti-osteoporosis therapy",
    "denosumab_discontinued": "1 if denosumab stopped without a follow-on bisphosphonate",
    "no_brace": "1 if no brace after surgery",
    "sarcopenia": "1 if psoas muscle index below the profile's sex-specific cut-off",
    "paraspinal_fat_per_10pct": "(paraspinal fat fraction - 30 %) / 10",
}
PROCEDURE_COVARIATES: dict[str, str] = {
    "ivc": "1 if intravertebral cleft on pre-op MRI",
    "endplate_disruption": "1 if endplate cortical disruption on pre-op MRI",
    "reduction_rate_per_10pct": "measured reduction rate (post-op CR - pre-op CR) / 10 points, capped to 0-30 points",
    "reduction_angle_per_5deg": "measured reduction angle (pre-op - post-op kyphotic angle) / 5°, capped to 0-20°",
    "npec_count": "endplates the cement does not touch (0, 1, 2)",
    "kyphotic_angle_per_10deg": "(pre-op kyphotic angle - 10°) / 10, angle capped to 0-35°",
    "thoracolumbar": "1 if the level is T10-L2",
    "adjacent_hu_per_10_lower": "(80 - that neighbour's own pre-op HU) / 10, HU capped to 40-160 (adjacent risk is per neighbour)",
    "stiffness_gradient_high": "1 if post-op HU ratio to that neighbour > 15.18 and its HU < 66.9 (Matsumoto 2024)",
    "leakage_spike": "1 if spike-type intradiscal leakage into the disc towards that neighbour",
    "leakage_round": "1 if round-type intradiscal leakage into the disc towards that neighbour",
    "leakage_other": "1 if paravertebral, venous or epidural leakage",
    "larger_side_fill_above_per_5pct": "(larger-side cement / whole body volume % - threshold) / 5 above the threshold (13.82 %, Zhou 2023), capped at 2",
    "larger_side_fill_below_per_5pct": "(low cut-off - larger-side cement / whole body volume %) / 5 below the cut-off, capped at 1: too little cement",
    "fill_below_per_5pct": "(low cut-off - total cement / body volume %) / 5 below the cut-off, capped at 2: too little cement (re-collapse)",
    "surgery_after_4_weeks": "1 if surgery more than 28 days after pain onset",
}
COVARIATES: dict[str, str] = {**PATIENT_COVARIATES, **PROCEDURE_COVARIATES}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Sourced(_Frozen):
    source: str = Field(min_length=3, description="Publication (clinical-evidence.md) or 'assumption: why'.")


class Value(_Sourced):
    """One number with its source."""

    value: float


class Share(_Sourced):
    """A proportion in [0, 1] with its source."""

    value: float = Field(ge=0, le=1)


class Normal(_Sourced):
    """A normal distribution truncated (by clipping) to [min, max]."""

    mean: float
    sd: float = Field(gt=0)
    min: float = -math.inf
    max: float = math.inf


class Categorical(_Sourced):
    """Probabilities of named categories; must sum to 1 (within 0.002, rounding of published %)."""

    probabilities: dict[str, float]

    @field_validator("probabilities")
    @classmethod
    def _sums_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if any(p < 0 for p in v.values()):
            raise ValueError("probabilities must be non-negative")
        total = sum(v.values())
        if abs(total - 1) > 0.002:
            raise ValueError(f"probabilities sum to {total:.4f}, not 1")
        return {k: p / total for k, p in v.items()}


class Term(_Sourced):
    """Effect of one covariate on the log-odds of an outcome, as an odds ratio per unit.

    ``ci``: the published 95 % confidence interval of the odds ratio, when there is one;
    ``refracture synth --draw-effects`` draws the log odds ratio from the normal
    distribution it implies (SE = (log high - log low) / 3.92). Terms without a CI
    (assumed sizes) stay fixed in that mode.
    """

    odds_ratio: float = Field(gt=0)
    ci: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ci_brackets_the_estimate(self) -> Term:
        if self.ci is not None and not 0 < self.ci[0] <= self.odds_ratio <= self.ci[1]:
            raise ValueError(f"ci {self.ci} must bracket odds_ratio {self.odds_ratio}")
        return self


class EventTiming(_Sourced):
    """When events happen: the share of the horizon's cumulative hazard reached by each month.

    A common baseline for every process of the outcome (proportional hazards), linear
    between the knots; for a rare outcome the share is the share of the horizon's events
    that have happened by then. ``cumulative_share`` must rise to 1.0 at the horizon.
    ``after_horizon_per_year`` continues the hazard past the horizon (share of the
    horizon's cumulative hazard added per year), for events seen after 24 months.
    """

    cumulative_share: dict[float, float]
    after_horizon_per_year: float = Field(ge=0)

    @field_validator("cumulative_share")
    @classmethod
    def _rising_to_one(cls, v: dict[float, float]) -> dict[float, float]:
        months, shares = list(v), list(v.values())
        if months != sorted(months) or any(m <= 0 for m in months):
            raise ValueError("cumulative_share months must be positive and increasing")
        if any(b < a for a, b in zip(shares, shares[1:])) or shares[0] < 0 or abs(shares[-1] - 1) > 1e-9:
            raise ValueError("cumulative_share must rise (non-decreasing) to 1.0 at the horizon")
        return v


class OutcomeModel(_Frozen):
    """Logistic model of the true (net) probability of an outcome within the horizon."""

    intercept_log_odds: Value
    target_incidence: Share  # per-patient crude incidence within the horizon (outcomes.patient_truth) the intercept is tuned to
    timing: EventTiming
    # Net horizon probability of one process that no combination of factors exceeds:
    # log-odds bend smoothly towards logit(ceiling) (outcomes.soft_ceiling).
    ceiling: Share
    terms: dict[str, Term] = Field(default_factory=dict)


class Sex(_Frozen):
    female: Normal
    male: Normal


class SexValue(_Sourced):
    """One number for women and one for men."""

    female: float
    male: float


class Demographics(_Frozen):
    age_years: Normal
    female_share: Share
    body_height_cm: Sex
    weight_kg: Sex


class Bone(_Frozen):
    """Latent bone quality z ~ N(0, 1) given age and sex; BMD and HU are read from it."""

    age_slope_sd_per_10y: Value  # change of z per 10 years of age (negative: older, weaker bone)
    male_shift_sd: Value
    bmd_g_cm2: Normal  # at z = 0 and the cohort's mean age, women
    hu_trabecular: Normal  # at z = 0 and the cohort's mean age, women
    hu_bmd_correlation: Value
    t_score_reference_mean_g_cm2: SexValue  # young-adult reference mean for the T-score
    t_score_reference_sd_g_cm2: SexValue


class Muscle(_Frozen):
    psoas_area_cm2: Sex  # at the cohort's mean age
    psoas_area_slope_per_10y: Value  # cm² per 10 years of age (negative: sarcopenia rises with age)
    psoas_index_cutoff_cm2_m2: SexValue  # sarcopenia below this psoas muscle index
    fat_fraction_pct: Normal  # at the cohort's mean age, men
    fat_fraction_slope_per_10y: Value
    fat_fraction_female_shift: Value


class History(_Frozen):
    prior_fracture_rate: Value  # Poisson mean of earlier vertebral fractures at z = 0, mean age
    prior_fracture_bone_log_rate_per_sd: Value  # added to log-rate per SD lower bone quality
    glucocorticoids_long_term: Share
    type2_diabetes: Share
    chronic_kidney_disease: Share
    therapy: Categorical
    brace: Share

    @field_validator("therapy")
    @classmethod
    def _known_therapies(cls, v: Categorical) -> Categorical:
        unknown = set(v.probabilities) - set(THERAPIES)
        if unknown:
            raise ValueError(f"unknown therapies {sorted(unknown)}; allowed: {THERAPIES}")
        return v


class Procedure(_Frozen):
    levels: Categorical
    levels_per_session: Categorical
    pkp_share: Share
    approach_pvp: Categorical
    approach_pkp: Categorical
    cement_volume_ml: Normal
    cement_ml_per_ml_body_volume: Value  # larger vertebrae take more cement
    days_pain_to_surgery: Normal  # of log(days)
    pain_onset_missing: Share

    @field_validator("levels")
    @classmethod
    def _known_levels(cls, v: Categorical) -> Categorical:
        unknown = set(v.probabilities) - set(LEVELS)
        if unknown:
            raise ValueError(f"unknown levels {sorted(unknown)}")
        return v

    @field_validator("levels_per_session")
    @classmethod
    def _counts(cls, v: Categorical) -> Categorical:
        if not all(k.isdigit() and 1 <= int(k) <= 8 for k in v.probabilities):
            raise ValueError("levels_per_session keys must be 1..8")
        return v

    @model_validator(mode="after")
    def _enough_levels(self) -> Procedure:
        most = max(int(k) for k, p in self.levels_per_session.probabilities.items() if p > 0)
        possible = sum(p > 0 for p in self.levels.probabilities.values())
        if most > possible:
            raise ValueError(f"sessions of {most} levels need at least {most} levels with probability > 0")
        return self

    @field_validator("approach_pvp", "approach_pkp")
    @classmethod
    def _approaches(cls, v: Categorical) -> Categorical:
        allowed = {"unilateral_left", "unilateral_right", "bilateral"}
        if set(v.probabilities) - allowed:
            raise ValueError(f"approach categories must be among {sorted(allowed)}")
        return v


class Imaging(_Frozen):
    compression_rate_preop_pct: Normal
    ivc: Share
    ivc_compression_rate_shift_pct: Value  # clefts sit in more collapsed vertebrae
    endplate_disruption: Share
    reduction_rate_pct: Normal  # PVP, no cleft
    ivc_extra_reduction_pct: Normal  # extra restoration of a level with a cleft (varies: dynamic mobility)
    pkp_extra_reduction_pct: Value
    wedge_angle_per_pct_collapse: Value  # degrees of wedge per point of (100 - CR)
    wedge_angle_noise_deg: Normal
    kyphosis_noise_deg: Normal
    reduction_angle_deg: Normal  # the part not explained by height restoration
    reduction_angle_per_pct_reduction: Value  # degrees of kyphosis corrected per point of reduction rate
    npec_pattern_no_ivc: Categorical  # none / upper_only / lower_only / both
    npec_pattern_ivc: Categorical
    leakage_intradiscal: Share
    leakage_intradiscal_endplate_disruption_or: Value
    leakage_intradiscal_spike_share: Share
    leakage_intradiscal_upper_share: Share  # share of intradiscal leaks into the disc above (the rest: below)
    leakage_paravertebral: Share
    leakage_venous: Share
    leakage_epidural: Share
    cemented_hu_base: Value  # post-op HU of the augmented body = base + per_fill_pct * fill %
    cemented_hu_per_fill_pct: Value
    larger_side_share_of_cement: Normal  # larger side's share of the cement, whatever the approach
    larger_side_fill_threshold_pct: Value  # larger-side cement / whole body volume above which AVF risk rises
    larger_side_fill_low_pct: Value  # ... below which it rises too (U-shape)
    fill_low_pct: Value  # total cement / body volume below which re-collapse risk rises
    refracture_cri_pct: Normal  # compression-rate increase at a cemented refracture
    gradual_height_loss_share: Share  # non-refractured levels with 7-14 points of slow loss
    edema_without_refracture: Share

    @field_validator("npec_pattern_no_ivc", "npec_pattern_ivc")
    @classmethod
    def _patterns(cls, v: Categorical) -> Categorical:
        if set(v.probabilities) != {"none", "upper_only", "lower_only", "both"}:
            raise ValueError("NPEC patterns must be exactly: none, upper_only, lower_only, both")
        return v


class Missingness(_Frozen):
    """Which examinations a site's export lacks, per patient, and who misses them.

    Each share is the probability at the cohort's mean frailty; the odds of missing an
    examination rise by ``frailty_odds_ratio_per_sd`` per SD of a frailty score (age,
    sarcopenia, prior fractures, chronic kidney disease): frailer patients are imaged
    less (missing not at random).
    """

    preop_mri: Share  # no pre-op MRI: no IVC or endplate reading
    preop_ct: Share  # no pre-op CT: no HU, body volume, psoas or fat
    postop_ct: Share  # no post-op CT: no larger-side volume, post-op HU or HU ratio
    dxa: Share  # no DXA
    frailty_odds_ratio_per_sd: Value


class Measurement(_Frozen):
    """How a site measures: DXA site, CT protocol, and what counts as a new fracture.

    The true risk uses the patient's true bone quality; the recorded HU shift with tube
    voltage and contrast, and the recorded BMD/T-score depend on the DXA site.
    """

    dxa_site: Categorical  # lumbar_spine / total_hip / femoral_neck
    ct_kvp: Categorical  # "80" / "100" / "120" / "140"
    ct_contrast: Share
    contrast_hu_shift: Value  # HU added to trabecular bone by contrast
    kvp_hu_factor_per_10kv: Value  # relative change of bone HU per +10 kV from 120 kV
    new_fracture_criterion: str  # one of features.schema.FRACTURE_CRITERIA
    criterion_source: str = Field(min_length=3)

    @field_validator("dxa_site")
    @classmethod
    def _sites(cls, v: Categorical) -> Categorical:
        if set(v.probabilities) - set(DXA_SITES):
            raise ValueError(f"dxa_site categories must be among {DXA_SITES}")
        return v

    @field_validator("new_fracture_criterion")
    @classmethod
    def _criterion(cls, v: str) -> str:
        if v not in FRACTURE_CRITERIA:
            raise ValueError(f"new_fracture_criterion must be one of {FRACTURE_CRITERIA}")
        return v

    @field_validator("ct_kvp")
    @classmethod
    def _kvp(cls, v: Categorical) -> Categorical:
        if not all(k.isdigit() and 70 <= int(k) <= 150 for k in v.probabilities):
            raise ValueError("ct_kvp keys must be tube voltages 70-150 (kV)")
        return v


class ExportQuirks(_Frozen):
    """Messy-but-valid values real exports carry. Off unless ``enabled``: the contract
    that accepts them lands separately (issue 12)."""

    enabled: bool = False
    vertebra_plana_neighbour_share: float = Field(0.01, ge=0, le=1)  # old flattened neighbour, 4-7.9 mm
    near_complete_collapse_share: float = Field(0.05, ge=0, le=1)  # of refractured levels: follow-up height 1.5-2.9 mm
    sacral_event_share: float = Field(0.005, ge=0, le=1)  # patients with an S1 insufficiency fracture in events
    same_session_neighbour_hu: bool = True  # post-op HU of a neighbour cemented in the same session (~1,000 HU)
    source: str = "assumption: values seen in real exports (issue 12)"


#: Patient characteristics a profile may let raise the death hazard (``Mortality.hazard_ratios``).
MORTALITY_COVARIATES: dict[str, str] = {
    "sarcopenia": "1 if psoas muscle index below the profile's sex-specific cut-off",
    "prior_fracture_any": "1 if at least one earlier osteoporotic vertebral fracture",
    "chronic_kidney_disease": "1 if chronic kidney disease",
    "type2_diabetes": "1 if type 2 diabetes",
    "glucocorticoids_long_term": "1 if long-term oral glucocorticoids",
}


class Mortality(_Frozen):
    """Gompertz mortality at surgery by age and sex, optionally multiplied by hazard ratios
    of patient characteristics (frail patients die sooner; none in the published profiles,
    where death depends on age and sex only)."""

    annual_at_80: SexValue  # annual probability of death at age 80
    gompertz_slope_per_year: Value
    hazard_ratios: dict[str, Value] = Field(default_factory=dict)

    @field_validator("hazard_ratios")
    @classmethod
    def _known_and_positive(cls, v: dict[str, Value]) -> dict[str, Value]:
        unknown = set(v) - set(MORTALITY_COVARIATES)
        if unknown:
            raise ValueError(f"unknown mortality covariates {sorted(unknown)}; allowed: {sorted(MORTALITY_COVARIATES)}")
        if any(hr.value <= 0 for hr in v.values()):
            raise ValueError("hazard ratios must be positive")
        return v


class Recording(_Frozen):
    """How the export records follow-up (``features.ascertainment``; written to its
    ``export.yaml``).

    ``clinic`` (the published profiles): a death is recorded when it happens before the
    patient is lost or the data cut, and the last contact is then the death date;
    fractures are seen until the last contact. ``registry``: every death before the data
    cut is linked from a death registry, lost or not; the last contact is the last
    scheduled clinic visit before death, loss or the data cut (visits every
    ``visit_interval_months``, multiplied by ``visit_interval_ratio_per_frailty_sd`` per SD
    of frailty: frail patients are seen less often), so nearly every death comes after it.
    ``fractures_until``: ``last_contact`` (fractures after the last contact are not in the
    export) or ``death_or_data_cut`` (every fracture until death or the data cut is; needs
    ``deaths: registry``).
    """

    deaths: Literal["clinic", "registry"] = "clinic"
    fractures_until: Literal["last_contact", "death_or_data_cut"] = "last_contact"
    visit_interval_months: Value | None = None
    visit_interval_ratio_per_frailty_sd: Value | None = None
    source: str = "the published cohorts' follow-up: deaths and fractures seen at clinic contacts"

    @model_validator(mode="after")
    def _visits_with_a_registry(self) -> Recording:
        if self.fractures_until == "death_or_data_cut" and self.deaths != "registry":
            raise ValueError("fractures_until: death_or_data_cut needs deaths: registry")
        if self.deaths == "registry" and (self.visit_interval_months is None
                                          or self.visit_interval_ratio_per_frailty_sd is None):
            raise ValueError("deaths: registry needs visit_interval_months and visit_interval_ratio_per_frailty_sd "
                             "(the last contact is the last clinic visit)")
        if self.visit_interval_months is not None and self.visit_interval_months.value <= 0:
            raise ValueError("visit_interval_months must be positive")
        if self.visit_interval_ratio_per_frailty_sd is not None and self.visit_interval_ratio_per_frailty_sd.value <= 0:
            raise ValueError("visit_interval_ratio_per_frailty_sd must be positive")
        return self


class FollowUp(_Frozen):
    enrolment_start: date
    enrolment_end: date
    data_cut: date  # administrative end of follow-up: the date the export was drawn
    dates_source: str = Field(min_length=3)  # where the three dates come from
    lost_to_followup: Share  # share lost at a uniform time between lost_min_months and the planned end
    lost_min_months: Value
    # Odds of being lost multiplied by this per SD of frailty (frail patients move to care
    # homes); none: loss is independent of the patient (the published profiles).
    lost_to_followup_frailty_odds_ratio_per_sd: Value | None = None
    mortality: Mortality
    recording: Recording = Recording()
    published_reference: str = ""  # the cohort's published follow-up, for the record

    @model_validator(mode="after")
    def _dates_ordered(self) -> FollowUp:
        if not self.enrolment_start <= self.enrolment_end < self.data_cut:
            raise ValueError("need enrolment_start <= enrolment_end < data_cut")
        return self


class Profile(_Frozen):
    """A validated, immutable simulator profile."""

    name: str
    description: str
    horizon_months: int = Field(default=24, ge=1, le=120)
    demographics: Demographics
    bone: Bone
    muscle: Muscle
    history: History
    procedure: Procedure
    imaging: Imaging
    followup: FollowUp
    missingness: Missingness
    measurement: Measurement
    export_quirks: ExportQuirks = ExportQuirks()
    outcomes: dict[Literal["cemented_refracture", "adjacent_fracture", "remote_fracture"], OutcomeModel]

    @model_validator(mode="after")
    def _followup_reaches_horizon(self) -> Profile:
        # Keeps censoring before the horizon to loss and death: every patient enrolled
        # could be followed to the horizon before the data cut.
        span_months = (self.followup.data_cut - self.followup.enrolment_end).days / (365.25 / 12)
        if span_months < self.horizon_months:
            raise ValueError(f"data_cut is {span_months:.1f} months after enrolment_end; "
                             f"it must be at least horizon_months ({self.horizon_months})")
        return self

    @model_validator(mode="after")
    def _check_outcomes(self) -> Profile:
        missing = set(OUTCOMES) - set(self.outcomes)
        if missing:
            raise ValueError(f"outcome models missing: {sorted(missing)}")
        for outcome, model in self.outcomes.items():
            allowed = PATIENT_COVARIATES if outcome == "remote_fracture" else COVARIATES
            unknown = set(model.terms) - set(allowed)
            if unknown:
                raise ValueError(f"{outcome}: unknown or non-patient-level covariates {sorted(unknown)}; "
                                 f"allowed: {sorted(allowed)}")
            if abs(max(model.timing.cumulative_share) - self.horizon_months) > 1e-9:
                raise ValueError(f"{outcome}: timing.cumulative_share must end at horizon_months ({self.horizon_months})")
        return self


def available_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    root = resources.files("features") / "profiles"
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate a profile: a shipped name (``"xiong2021-pvp"``) or a YAML path.

    Raises ValueError (pydantic ValidationError) naming every invalid field, and
    FileNotFoundError listing the shipped profiles when the name is unknown.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        resource = resources.files("features") / "profiles" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise FileNotFoundError(f"no profile {name_or_path!r}; shipped profiles: {', '.join(available_profiles())}")
        text = resource.read_text(encoding="utf-8")
    return Profile.model_validate(yaml.safe_load(text))
