"""The keyed hash that links a prediction to the outcome of the same procedure, months later.

``link_key(secret, procedure_id)`` is HMAC-SHA256 of the procedure key with the site
secret, as 64 hex digits. The store holds only this hash: without the secret it cannot be
turned back into a procedure key, nor recomputed from a guessed one (a plain hash of a
short hospital number could be, by trying every number). With the secret, the same key in
a later export gives the same hash, so outcomes link.

Keys are compared as the hospital sends them, after stripping surrounding white space
(``" V001"`` and ``"V001"`` are the same procedure; ``"v001"`` is not).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable


def link_key(secret: bytes, procedure_id: str) -> str:
    """HMAC-SHA256(secret, stripped procedure key) as 64 hex digits."""
    # surrogatepass: any Python string has a hash, even one a parser should have refused.
    return hmac.new(secret, str(procedure_id).strip().encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def link_keys(secret: bytes, procedure_ids: Iterable[object]) -> list[str | None]:
    """``link_key`` of each key; None where the key is missing or blank (such a
    prediction is logged but can never be linked)."""
    out: list[str | None] = []
    for pid in procedure_ids:
        text = "" if pid is None or pid != pid else str(pid).strip()  # pid != pid: NaN
        out.append(link_key(secret, text) if text else None)
    return out
