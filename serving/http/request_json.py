"""Strict JSON for request bodies: text every layer can encode, one value per key, and
error lists of bounded size.

``json.loads`` alone accepts three things the service must not:

- **Invalid Unicode.** A lone UTF-16 surrogate (the escape ``"\\ud800"``, or the raw
  bytes ``ED A0 80``, which are not UTF-8) decodes to a Python ``str`` that cannot be
  encoded again: the record would be scored and then the audit line, which hashes the
  ``procedure_id``, would fail after the answer had gone out. Any string (value or key)
  holding one is a 400 naming the record and the field.
- **Duplicate keys.** ``{"age_years": 40, "age_years": 90}`` means whatever the last
  parser says; the sender and the service may read different records. Refused, 400.
- **Huge error lists.** 100k unknown keys would give 100k listed errors (13.5 MB of
  answer for a 1.1 MB request). ``error_body`` lists the first ``MAX_LISTED_ERRORS`` and
  always states the total.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Errors listed in one answer; ``n_errors`` always gives the total.
MAX_LISTED_ERRORS = 100
#: A JSON escape of a UTF-16 surrogate (``\ud800``-``\udfff``): how a lone one gets into valid UTF-8 text.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class BodyRefused(ValueError):
    """The body is not acceptable JSON; ``errors`` lists why (record, field, error, allowed)."""

    def __init__(self, message: str, errors: list[dict[str, Any]]):
        super().__init__(message)
        self.message = message
        self.errors = errors


class _DuplicateKeys(dict):
    """A JSON object in which some key occurred more than once (kept to report the path)."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    flagged = _DuplicateKeys(obj)
    flagged.duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
    return flagged


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (send null for a missing value)")


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _problems(value: Any, path: list[str], out: list[tuple[list[str], str]]) -> None:
    """Collect (path, problem) for every duplicate key and non-encodable string under ``value``."""
    if isinstance(value, dict):
        if isinstance(value, _DuplicateKeys):
            for key in value.duplicates:
                out.append(([*path, key], "duplicate key: the field is given more than once"))
        for key, item in value.items():
            if not _encodable(key):
                out.append(([*path, key.encode("utf-8", "backslashreplace").decode("ascii")],
                            "invalid Unicode in a field name (a lone UTF-16 surrogate or bytes that are not UTF-8)"))
                continue
            _problems(item, [*path, key], out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _problems(item, [*path, str(i)], out)
    elif isinstance(value, str) and not _encodable(value):
        out.append((path, "invalid Unicode (a lone UTF-16 surrogate or bytes that are not UTF-8)"))


def _located(path: list[str], top_is_list: bool) -> tuple[int | None, str]:
    """(record index, field path within the record) of a path from the body's root."""
    if top_is_list:
        if not path:
            return None, ""
        return int(path[0]), ".".join(path[1:])
    return 0, ".".join(path)


def loads_strict(body: bytes) -> Any:
    """Parse a request body (bytes, UTF-8 JSON). Raises ``BodyRefused`` for invalid
    Unicode anywhere or a key given twice in one object, naming the record and field;
    raises ``ValueError`` (like ``json.loads``) for malformed JSON, NaN and Infinity."""
    # Invalid UTF-8 bytes become lone surrogates here and are then reported by field,
    # like the escaped ones, instead of failing the whole body with a byte offset.
    try:
        text, suspect = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, suspect = body.decode("utf-8", errors="surrogateescape"), True
    duplicated: list[bool] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict:
        obj = _pairs_hook(pairs)
        if type(obj) is _DuplicateKeys:
            duplicated.append(True)
        return obj

    data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=pairs_hook)
    # The walk over every value (a third of the cost of a FHIR Bundle's parse) only when a
    # problem is possible: a duplicate key was met, the bytes were not UTF-8, or the text
    # escapes a UTF-16 surrogate (a valid pair too: the walk tells them apart).
    if not (duplicated or suspect or _SURROGATE_ESCAPE.search(text)):
        return data
    found: list[tuple[list[str], str]] = []
    _problems(data, [], found)
    if not found:
        return data
    top_is_list = isinstance(data, list)
    errors = []
    for path, problem in found:
        record, field = _located(path, top_is_list)
        errors.append({"record": record, "field": field, "error": problem,
                       "allowed": "each field once, as UTF-8 text" if "duplicate" in problem else "valid UTF-8 text"})
    return_message = f"{len(errors)} problem(s) in the JSON text; nothing was scored"
    raise BodyRefused(return_message, errors)


def error_body(message: str, errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of a refusal: the message, the first ``MAX_LISTED_ERRORS`` errors and
    ``n_errors``, the total (so the caller knows when the list is cut)."""
    return {"error": message, "errors": errors[:MAX_LISTED_ERRORS], "n_errors": len(errors)}
