"""The audit trail: one JSON line per request, with no raw identifier or clinical value.

A line holds the time (UTC, ISO 8601), the endpoint, the HTTP status, the latency, the
client (its name, how it authenticated, and for a signed-in person a salted hash of the
subject; ``null`` when the request was refused before one was known), the
outcomes and model versions that answered, the number of records and, per record, a
salted hash of its ``procedure_id`` (HMAC-SHA256 with the audit salt, first 16 hex
digits). With the salt, the site can find the lines for a given procedure; without it,
the log reveals nothing about who was scored. Field values never reach the log, and
neither does the client's address.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterable

AUDIT_LOGGER = "refracture.audit"
logger = logging.getLogger(AUDIT_LOGGER)


def key_hash(salt: bytes, procedure_id: str) -> str:
    """Salted hash of a procedure key: HMAC-SHA256(salt, id), first 16 hex digits (64 bits)."""
    # surrogatepass: any Python string has a hash, even one the request parser should
    # have refused; the audit line must never be the thing that fails.
    return hmac.new(salt, procedure_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:16]


def configure_audit_log(path: Path | None = None) -> logging.Logger:
    """Send audit lines, bare JSON, to ``path`` (appended) or to stderr. Idempotent.

    Called once by the service at start (the entry point), never on import. The logger
    does not propagate, so no other handler reformats or duplicates the lines.
    """
    logger.setLevel(logging.INFO)
    logger.propagate = False
    target = str(path) if path else "<stderr>"
    if any(getattr(h, "_refracture_target", None) == target for h in logger.handlers):
        return logger
    for h in list(logger.handlers):
        logger.removeHandler(h)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = _AuditFileHandler(path, encoding="utf-8")
    else:
        handler = _AuditStreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._refracture_target = target  # type: ignore[attr-defined]
    logger.addHandler(handler)
    return logger


def audit_line(
    *,
    endpoint: str,
    method: str,
    status: int,
    latency_ms: float,
    salt: bytes,
    procedure_ids: Iterable[str] = (),
    outcomes: Iterable[str] = (),
    model_versions: dict[str, str] | None = None,
    n_records: int | None = None,
    n_errors: int | None = None,
    auth: str = "ok",
    request_id: str | None = None,
    client: str | None = None,
    auth_method: str | None = None,
    subject_hash: str | None = None,
    disconnected: bool = False,
) -> str:
    """One audit record as a JSON string (keys in a fixed order)."""
    record: dict[str, Any] = {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "event": "request",
        "request_id": request_id,
        "endpoint": endpoint,
        "method": method,
        "status": status,
        "latency_ms": round(latency_ms, 2),
        "auth": auth,
        # Who: the client's name (or the identity provider's client_id), how it proved it
        # (api-key, client-token, user-token, ...), and for a signed-in person a salted hash
        # of issuer and subject (staff identities are personal data too).
        "client": client,
        "auth_method": auth_method,
        "subject_hash": subject_hash,
        "outcomes": list(outcomes),
        "model_versions": model_versions or {},
        "n_records": n_records,
        "n_errors": n_errors,
        "procedure_key_hashes": [key_hash(salt, pid) for pid in procedure_ids],
    }
    if disconnected:  # the client left before the end of its body (status 499)
        record["disconnected"] = True
    # ASCII only: the line can be written to any stream whatever the request held.
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True)


class AuditWriteError(OSError):
    """An audit line could not be written; the request must not be answered as if it were."""


class _RaisingHandlerMixin:
    """Logging handlers report their own write errors on stderr and carry on; an audit
    line that was not written must instead fail the call that wrote it."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        raise AuditWriteError("audit line not written")


class _AuditFileHandler(_RaisingHandlerMixin, logging.FileHandler):
    pass


class _AuditStreamHandler(_RaisingHandlerMixin, logging.StreamHandler):
    pass


def write(line: str) -> None:
    """Emit one audit line. Raises ``AuditWriteError`` when it was not written (disk full,
    file gone read-only, no handler configured): the caller must not stay silent."""
    if not logger.handlers:
        raise AuditWriteError("audit log not configured")
    logger.info(line)
