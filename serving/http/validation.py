"""Request body -> flat records, or the list of every field error. Never raises on input.

Policy (docs/serving.md, "Validation"):

- The body is one record (a JSON object) or a list of 1..``max_records`` records.
- Malformed JSON (including ``NaN``/``Infinity``, which are not JSON), invalid Unicode
  and duplicate keys are a 400 (``serving.http.request_json``).
- Any field error in any record refuses the **whole request** with 422 and lists every
  error of every record (record index, field path, what is wrong, what is allowed).
  Nothing is scored: a partial answer to a batch is easy to misfile against the wrong
  patient, and the list tells the caller exactly which records to fix.
- Unknown fields are refused, not ignored: a misspelt ``hu_idx`` silently dropped would
  change a prediction without anyone noticing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from features.contract import allowed_text
from features.records import RECORD_FIELDS, check_records, flatten_record
from serving.http.request_json import BodyRefused, loads_strict
from serving.http.schemas import ProcedureRecord

_FIELDS_BY_PATH = {f.path: f for f in RECORD_FIELDS}
_FLAT_NAMES = [f.flat_name for f in RECORD_FIELDS]
_FLAT_INDEX = pd.Index(_FLAT_NAMES)


@dataclass
class ParsedRequest:
    """Outcome of parsing a request body.

    ``status`` is 200 when ``flat`` holds the records (one row each, columns = flat
    record fields), else the HTTP status to answer with and ``errors`` says why.
    """

    status: int
    rows: list[dict[str, Any]] | None = None
    procedure_ids: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    #: The horizon to explain (months; ``/explain``'s ``horizon_months``), None = headline.
    horizon_months: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def flat(self) -> pd.DataFrame | None:
        """The records as a flat frame (one row each), or None when refused."""
        return None if self.rows is None else rows_frame(self.rows)


def rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Flat record dicts -> one frame (object columns, as JSON gave the values).

    One object array filled column by column, then one frame over it (a single block):
    ~10x faster than ``pd.DataFrame(rows)``, a ``pd.concat`` of one-row frames or a frame
    of one array per column, and ``inspect_records`` reads the block back without a copy.
    This runs once per request batch.
    """
    cells = np.empty((len(_FLAT_NAMES), len(rows)), dtype=object)  # one row per field: pandas' block layout
    for j, name in enumerate(_FLAT_NAMES):
        cells[j] = [r[name] for r in rows]
    # No text inference (values as sent); the labels are a copy of the cached ones, as a
    # caller may rename its frame's columns.
    return pd.DataFrame(cells.T, columns=_FLAT_INDEX.copy(), dtype=object, copy=False)


def _body_error(status: int, message: str, allowed: str = "") -> ParsedRequest:
    return ParsedRequest(status, errors=[{"record": None, "field": "", "error": message, "allowed": allowed}],
                         message=message)


HORIZON_FIELD = "horizon_months"


def parse_horizon(raw: str | None, horizons_months, default: float) -> float | ParsedRequest:
    """The horizon to explain from the query parameter ``horizon_months`` (text, months):
    ``default`` when absent, else one of ``horizons_months``; anything else is a 400
    (``ParsedRequest``) naming the field and the allowed values."""
    allowed = ", ".join(f"{float(h):g}" for h in horizons_months) + " (months)"
    if raw is None:
        return float(default)
    try:
        value = float(raw.strip())
    except ValueError:
        value = float("nan")
    if value not in [float(h) for h in horizons_months]:
        shown = raw if len(raw) <= 20 else raw[:20] + "..."
        message = f"{shown!r} is not a horizon of the served models"
        return ParsedRequest(400, errors=[{"record": None, "field": HORIZON_FIELD, "error": message, "allowed": allowed}],
                             message=f"{HORIZON_FIELD}: {message}")
    return value


def _allowed(path: str) -> str:
    f = _FIELDS_BY_PATH.get(path)
    return "" if f is None else allowed_text(f.spec)


def _pydantic_errors(i: int, exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors(include_url=False, include_context=False, include_input=False):
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            message, allowed = "unknown field (not part of the raw contract)", "see GET /model feature_schema"
        else:
            message = e["msg"].removeprefix("Value error, ")
            allowed = _allowed(path)
        out.append({"record": i, "field": path, "error": message, "allowed": allowed})
    return out


def _scalar_or_none(value: Any) -> Any:
    """What ``check_records`` may see: a JSON scalar, bool as 0/1; nothing else."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, int, float)) or value is None:
        return value
    return None


def parse_body(body: bytes, max_records: int) -> ParsedRequest:
    """First pass, cheap and per request: JSON, shape and value types.

    Returns status 200 with ``flat`` (fields of a refused JSON shape blanked) and any
    shape errors so far; the contract checks (``check_records``) come second, in
    ``finish``, so that they can run on many requests at once. Any other status is final.
    """
    if not body or not body.strip():
        return _body_error(400, "empty body: send one procedure record (JSON object) or a list of them")
    try:
        data = loads_strict(body)
    except BodyRefused as exc:
        return ParsedRequest(400, errors=exc.errors, message=exc.message)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _body_error(400, f"malformed JSON: {exc}"[:300])

    if isinstance(data, dict):
        raw_records = [data]
    elif isinstance(data, list):
        raw_records = data
    else:
        return _body_error(422, f"expected a procedure record (JSON object) or a list of them, got {type(data).__name__}")
    if not raw_records:
        return _body_error(422, "empty list: send at least one record", f"1 – {max_records} records")
    if len(raw_records) > max_records:
        return _body_error(422, f"{len(raw_records)} records is more than this service takes in one request",
                           f"1 – {max_records} records")

    errors: list[dict[str, Any]] = []
    flat_rows: list[dict[str, Any]] = []
    for i, raw in enumerate(raw_records):
        if not isinstance(raw, dict):
            errors.append({"record": i, "field": "", "error": f"expected a JSON object, got {type(raw).__name__}",
                           "allowed": "a procedure record"})
            flat_rows.append(dict.fromkeys(_FLAT_NAMES))
            continue
        record_errors: list[dict[str, Any]] = []
        try:
            ProcedureRecord.model_validate(raw)
        except ValidationError as exc:
            record_errors = _pydantic_errors(i, exc)
        errors.extend(record_errors)
        flat_rows.append(_masked_flat(raw, {e["field"] for e in record_errors}))
    ids = ["" if (v := r["procedure_id"]) is None else str(v).strip() for r in flat_rows]
    return ParsedRequest(200, rows=flat_rows, procedure_ids=ids, errors=errors)


def finish(parsed: ParsedRequest, contract_errors: list[dict[str, Any]]) -> ParsedRequest:
    """Second pass: merge the contract errors of ``parsed.flat`` (``check_records``,
    record indices relative to this request) into the shape errors. A field refused for
    its JSON shape is reported once, for that; a refused section hides its fields."""
    if not parsed.ok:
        return parsed
    errors = list(parsed.errors)
    seen = {(e["record"], e["field"]) for e in errors}
    bad_sections = {(e["record"], e["field"]) for e in errors if e["field"] in _SECTIONS}
    for e in contract_errors:
        if (e["record"], e["field"]) in seen:
            continue
        if any((e["record"], prefix) in bad_sections for prefix in _prefixes(e["field"])):
            continue
        errors.append(e)
    if errors:
        errors.sort(key=lambda e: (e["record"] if e["record"] is not None else -1))
        n_bad = len({e["record"] for e in errors})
        n = len(parsed.rows) if parsed.rows is not None else 0
        return ParsedRequest(422, procedure_ids=parsed.procedure_ids, errors=errors,
                             message=f"{len(errors)} field error(s) in {n_bad} of {n} record(s); nothing was scored")
    return ParsedRequest(200, rows=parsed.rows, procedure_ids=parsed.procedure_ids)


def parse_records(body: bytes, max_records: int) -> ParsedRequest:
    """Parse and validate a request body (JSON bytes) in one go. Never raises."""
    parsed = parse_body(body, max_records)
    if not parsed.ok:
        return parsed
    return finish(parsed, check_records(parsed.flat))


_SECTIONS = ("", "patient", "procedure", "imaging", "imaging.preop", "imaging.postop")


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [""] + [".".join(parts[:k]) for k in range(1, len(parts))]


def _masked_flat(raw: dict[str, Any], bad_paths: set[str]) -> dict[str, Any]:
    """Flat record from a nested one; sections or fields that are not of the right JSON
    shape (already reported) become None."""
    safe: dict[str, Any] = {}
    for section in ("patient", "procedure"):
        value = raw.get(section)
        safe[section] = value if isinstance(value, dict) and section not in bad_paths else {}
    imaging = raw.get("imaging")
    imaging = imaging if isinstance(imaging, dict) and "imaging" not in bad_paths else {}
    safe["imaging"] = {tp: (v if isinstance(v := imaging.get(tp), dict) and f"imaging.{tp}" not in bad_paths else {})
                       for tp in ("preop", "postop")}
    flat = flatten_record(safe)
    for f in RECORD_FIELDS:
        flat[f.flat_name] = None if f.path in bad_paths else _scalar_or_none(flat[f.flat_name])
    return flat
