"""Request and response models of the HTTP API, built from the raw contract.

The request models are generated from ``features.records.RECORD_FIELDS``, so a new column
in the contract appears in the API (and its OpenAPI document, with unit, range and
definition) without an edit here.

Two layers check a record, and they never disagree on the same question:

1. These pydantic models check the JSON *shape*: known sections and fields only
   (``extra='forbid'``), numbers are JSON numbers, text is text, dates are ``YYYY-MM-DD``,
   and no value is absurd enough to break the parsers (non-finite, beyond ±1e12, text
   longer than the contract's ``MAX_TEXT_CHARS``). They decide nothing about values:
   ranges, allowed values, the date window, required fields and the rules between fields
   are documented in their JSON schema from the same constants, and
2. ``features.records.check_records`` enforces them with ``features.contract``, the
   checker ``refracture validate`` runs on tables, so the service refuses exactly what
   ``refracture validate`` refuses (``tests/features/test_contract.py``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, create_model

from features.coerce import DATE_MAX, DATE_MIN
from features.contract import MAX_TEXT_CHARS, allowed_text
from features.labels import OUTCOMES
from features.records import RECORD_FIELDS, RECORD_TIMEPOINTS, RecordField

#: Numbers beyond this are refused for their JSON shape (every contract range is far
#: inside it), before they reach the parsers.
ABSURD = 1e12
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _year_pattern(first: int, last: int) -> str:
    """A regular expression for the years ``first``..``last`` when they span whole
    centuries (1900-2199 -> ``(19|20|21)\\d\\d``), else any four digits."""
    if first % 100 == 0 and last % 100 == 99:
        return "(" + "|".join(str(c) for c in range(first // 100, last // 100 + 1)) + r")\d\d"
    return r"\d{4}"


#: Text that is not blank as the contract reads it: Python's ``str.strip`` (features.coerce)
#: also strips the separators U+001C-U+001F and U+0085, which JSON Schema's ``\S`` keeps.
NOT_BLANK_PATTERN = r"[^\s\x1c-\x1f\x85]"
#: The JSON schema's pattern for a date, from the contract's readable window.
DATE_PATTERN = rf"^{_year_pattern(DATE_MIN.year, DATE_MAX.year)}-\d\d-\d\d$"


# ----------------------------------------------------------------------- value types


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a JSON number")
    if isinstance(value, int) and abs(value) > ABSURD:
        raise ValueError(f"a {len(str(abs(value)))}-digit number is far outside any allowed range")
    value = float(value)
    if not math.isfinite(value) or abs(value) > ABSURD:
        raise ValueError(f"{value:g} is far outside any allowed range")
    return value


def _whole(value: Any) -> float:
    value = _number(value)
    if value != round(value):
        raise ValueError(f"{value:g} is not a whole number")
    return value


def _binary(value: Any) -> float:
    if isinstance(value, bool):  # JSON true/false is a fair way to say 1/0
        return float(value)
    value = _number(value)
    if value not in (0.0, 1.0):
        # Worded as check_records words it; refused here because the contract's coercion
        # of binaries to Int8 overflows on large values instead of reporting them.
        raise ValueError(f"{value:g} is not 0 or 1")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a JSON string")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"text longer than {MAX_TEXT_CHARS} characters")
    return value


def _date(value: Any) -> str:
    if not isinstance(value, str) or not _DATE.match(value.strip()):
        raise ValueError("expected a date as a string YYYY-MM-DD")
    try:
        dt.date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a calendar date") from None
    # The window (DATE_MIN .. today) is the contract's: check_records applies it.
    return value.strip()


_VALIDATORS = {"float": _number, "int": _whole, "binary": _binary, "category": _text, "str": _text,
               "id": _text, "date": _date}


def _value_schema(f: RecordField) -> dict[str, Any]:
    """JSON schema of one field's value (non-null part): type, unit, range, definition."""
    spec = f.spec
    doc = spec.definition
    if spec.unit and spec.kind in ("int", "float"):
        doc += f" Unit: {spec.unit}."
    if spec.range_text:
        doc += f" Allowed: {allowed_text(spec)}."
    schema: dict[str, Any]
    if spec.kind == "float":
        schema = {"type": "number", "minimum": spec.min, "maximum": spec.max}
    elif spec.kind == "int":
        schema = {"type": "integer", "minimum": int(spec.min), "maximum": int(spec.max)}
    elif spec.kind == "binary":
        schema = {"type": "integer", "enum": [0, 1]}
    elif spec.kind == "category":
        schema = {"type": "string", "enum": list(spec.allowed)}
    elif spec.kind == "date":
        schema = {"type": "string", "format": "date", "pattern": DATE_PATTERN}
        doc += f" ISO date YYYY-MM-DD, {DATE_MIN.date()} to today."
    else:  # id
        schema = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS, "pattern": NOT_BLANK_PATTERN}
    if spec.unit and spec.kind in ("int", "float"):
        schema["x-unit"] = spec.unit
    schema["description"] = doc
    return schema


def _field_type(f: RecordField):
    schema = _value_schema(f)
    if not f.required:
        schema = {**schema, "nullable": True}
    check = _VALIDATORS[f.spec.kind]

    def validate(value: Any) -> Any:
        return None if value is None else check(value)

    return Annotated[Any, PlainValidator(validate), WithJsonSchema(schema)]


def _drop_null_refs(schema: dict[str, Any]) -> None:
    """Document a section as its model only (``null`` is accepted but not advertised)."""
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)
        any_of = prop.get("anyOf")
        if any_of and len(any_of) == 2 and {"type": "null"} in any_of:
            prop.update(next(a for a in any_of if a != {"type": "null"}))
            del prop["anyOf"]


def _section_model(name: str, fields: list[RecordField], doc: str) -> type[BaseModel]:
    required = [f.spec.name for f in fields if f.required]

    def extra(schema: dict[str, Any]) -> None:
        if required:
            schema["required"] = required
        for prop in schema.get("properties", {}).values():
            prop.pop("default", None)

    definitions = {f.spec.name: (_field_type(f), Field(default=None)) for f in fields}
    model = create_model(  # type: ignore[call-overload]
        name,
        __config__=ConfigDict(extra="forbid", json_schema_extra=extra, title=name),
        __doc__=doc,
        **definitions,
    )
    return model


PatientSection = _section_model(
    "Patient", [f for f in RECORD_FIELDS if f.section == "patient"],
    "Baseline values of the patient at the index surgery (no name, no record number).")
ProcedureSection = _section_model(
    "Procedure", [f for f in RECORD_FIELDS if f.section == "procedure"],
    "The treated vertebral level and the operation. procedure_id is the site's pseudonymous key of this level.")
ImagingPreop = _section_model(
    "ImagingPreop", [f for f in RECORD_FIELDS if f.timepoint == "preop"],
    "Pre-operative imaging measurements (radiograph, CT, MRI). Missing values are allowed.")
ImagingPostop = _section_model(
    "ImagingPostop", [f for f in RECORD_FIELDS if f.timepoint == "postop"],
    "Immediately post-operative imaging measurements. Missing values are allowed.")
assert RECORD_TIMEPOINTS == ("preop", "postop"), "update the imaging sections"


class Imaging(BaseModel):
    """Imaging by time point; either or both may be left out."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_drop_null_refs)
    preop: ImagingPreop | None = None  # type: ignore[valid-type]
    postop: ImagingPostop | None = None  # type: ignore[valid-type]


def _record_extra(schema: dict[str, Any]) -> None:
    _drop_null_refs(schema)
    schema["required"] = ["patient", "procedure"]


class ProcedureRecord(BaseModel):
    """One treated vertebral level, as known at prediction time (raw contract fields)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_record_extra)
    patient: Annotated[PatientSection | None, Field(default=None)]  # type: ignore[valid-type]
    procedure: Annotated[ProcedureSection | None, Field(default=None)]  # type: ignore[valid-type]
    imaging: Imaging | None = None


# --------------------------------------------------------------------------- responses

OutcomeName = Literal[OUTCOMES]  # features.labels.OUTCOMES, in response order
RiskBand = Literal["low", "intermediate", "high"]


class FieldError(BaseModel):
    """One problem with one field of one record."""

    record: int | None = Field(description="Index of the record in the request (0 for a single record); null for the body as a whole.")
    field: str = Field(description="JSON path of the field, e.g. 'imaging.preop.hu_index'; '' for the body.")
    error: str = Field(description="What is wrong.")
    allowed: str = Field(description="What the contract allows (range with unit, or the allowed values); '' if not applicable.")


class FieldWarning(BaseModel):
    """A value of one field the contract finds implausible but possible (``features.contract``,
    severity ``warning``): the record was scored with it as sent."""

    field: str = Field(description="JSON path of the field, e.g. 'imaging.postop.upper_adjacent_height_mm'.")
    warning: str = Field(description="What is implausible, with the values involved, and what to check.")
    allowed: str = Field(description="What the contract expects.")
    rule: str = Field(description="The contract's rule (docs/data-dictionary.md, 'Errors and warnings').")


class ErrorResponse(BaseModel):
    """The request was refused; nothing was scored."""

    error: str
    errors: list[FieldError] = Field(default_factory=list, description="The first 100 errors, in record order.")
    n_errors: int | None = Field(default=None, description="How many errors there are in all (more than listed when over 100).")


class ModelRef(BaseModel):
    """The registered model version that produced a probability."""

    name: str = Field(description="MLflow registered model name, e.g. 'refracture-adjacent_fracture'.")
    version: str = Field(description="MLflow registry version (pinned when the service started).")
    run_id: str | None = Field(default=None, description="MLflow run that trained it.")


class MissingInput(BaseModel):
    """An input the model uses that the record did not supply, and what the model did instead."""

    field: str
    handling: str


#: Version of the /predict and /explain answer shape (sent as ``schema_version``). 2: risk
#: curves per outcome, explanations at a chosen horizon, optional record context
#: (docs/serving.md, "Changes in schema version 2"). Version 1 had no such field.
RESPONSE_SCHEMA_VERSION = 2

#: The curve's keys: horizons in months as text ("3", "6", "12", "24"; JSON keys are text).
CURVE_EXAMPLE = {"3": 0.004, "6": 0.009, "12": 0.018, "24": 0.031}


class OutcomePrediction(BaseModel):
    """Calibrated risk of one outcome: the curve over the horizons and the headline horizon."""

    probability: float = Field(ge=0, le=1, description="Calibrated probability that the event happens within horizon_months "
                               "of surgery (the headline horizon, 24 months), death competing: the curve's value there.")
    horizon_months: float = Field(description="The headline horizon, months after surgery (24).")
    risk_band: RiskBand = Field(description="low / intermediate / high at the headline horizon; thresholds in GET /model "
                                "and docs/serving.md.")
    curve: dict[str, float] = Field(
        description="The risk curve: horizon in months (as text) -> calibrated probability that the event happens by then, "
                    "death competing (crude cumulative incidence). Every served horizon (3, 6, 12, 24); never decreasing.",
        json_schema_extra={"example": CURVE_EXAMPLE, "propertyNames": {"pattern": r"^\d+(\.\d+)?$"}})
    model: ModelRef
    missing_inputs: list[MissingInput]


class Contribution(BaseModel):
    """One feature's SHAP contribution to the log-odds of the event."""

    feature: str = Field(description="Feature name (see the data dictionary).")
    display_name: str = Field(description="The feature in clinical words.")
    value: float | None = Field(description="The feature's value for this record (null if missing).")
    unit: str
    value_text: str = Field(description="The value with its unit, in words, e.g. '62 HU', 'yes', 'missing'.")
    contribution: float = Field(description="Contribution to the log-odds (positive raises the risk).")


class Factor(BaseModel):
    """A top factor in plain words."""

    feature: str
    text: str
    contribution: float


class Explanation(BaseModel):
    """The SHAP explanation of the risk at one horizon: additive on the log-odds scale,
    base_value + sum of contributions = logit(probability)."""

    horizon_months: float = Field(description="The explained horizon (the request's horizon_months, 24 by default).")
    probability: float = Field(ge=0, le=1, description="The risk at that horizon (the curve's value there).")
    base_value: float = Field(description="Log-odds at that horizon of the model before any feature is known (the "
                              "explainer's expected value).")
    contributions: list[Contribution]
    raising: list[Factor] = Field(description="Top factors raising the risk, largest first.")
    lowering: list[Factor] = Field(description="Top factors lowering the risk, largest first.")


class OutcomeExplanation(OutcomePrediction):
    """A prediction with the SHAP explanation of one horizon's risk."""

    explanation: Explanation


class ContextRisk(BaseModel):
    """A risk shown beside the outcomes for context, not predicted for decision."""

    probability: float = Field(ge=0, le=1, description="Calibrated probability by horizon_months.")
    horizon_months: float = Field(description="Months after surgery (24).")
    model: ModelRef


class RecordContext(BaseModel):
    """Context for reading the outcome risks: the probability of death (any cause) by 24
    months, from the ``refracture-death`` champion. Left out when no death model is
    registered; a client shows it when present."""

    death: ContextRisk | None = Field(default=None, description="Probability of death (any cause) by 24 months. "
                                      "A patient who dies first cannot have the fracture, which is why the risks are "
                                      "'death competing'.")


def _outcomes_model(name: str, item: type[BaseModel]) -> type[BaseModel]:
    fields = {o: (item, ...) for o in OutcomeName.__args__}  # type: ignore[attr-defined]
    return create_model(name, **fields)  # type: ignore[call-overload]


OutcomePredictions = _outcomes_model("OutcomePredictions", OutcomePrediction)
OutcomeExplanations = _outcomes_model("OutcomeExplanations", OutcomeExplanation)


_CONTEXT = Field(default=None, description="Optional context: the probability of death (any cause) by 24 months, "
                 "with its model version. Present when the service has a death model (refracture-death), left out "
                 "otherwise.")
_WARNINGS = Field(default_factory=list, description="Values of this record the data contract finds implausible but "
                  "possible (e.g. a neighbour's height that differs before and after surgery by more than measurement "
                  "error); the record was scored with them as sent. Empty when there are none. Values that cannot be "
                  "used (errors) refuse the request instead (422).")


class RecordPrediction(BaseModel):
    record: int = Field(description="Index of the record in the request.")
    procedure_id: str
    outcomes: OutcomePredictions  # type: ignore[valid-type]
    context: RecordContext | None = _CONTEXT
    warnings: list[FieldWarning] = _WARNINGS


class RecordExplanation(BaseModel):
    record: int
    procedure_id: str
    outcomes: OutcomeExplanations  # type: ignore[valid-type]
    context: RecordContext | None = _CONTEXT
    warnings: list[FieldWarning] = _WARNINGS


class PredictResponse(BaseModel):
    """One entry per record, in request order (also for a single record)."""

    schema_version: Literal[RESPONSE_SCHEMA_VERSION] = Field(  # type: ignore[valid-type]
        RESPONSE_SCHEMA_VERSION, description="Version of this answer's shape (docs/serving.md, 'Changes in schema version').")
    predictions: list[RecordPrediction]


class ExplainResponse(BaseModel):
    """One entry per record, in request order, with the explanation of the requested horizon."""

    schema_version: Literal[RESPONSE_SCHEMA_VERSION] = Field(  # type: ignore[valid-type]
        RESPONSE_SCHEMA_VERSION, description="Version of this answer's shape (docs/serving.md, 'Changes in schema version').")
    predictions: list[RecordExplanation]
