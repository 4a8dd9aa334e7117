"""The served OpenAPI document: BentoML's, plus what only this service knows.

BentoML documents each API's request and 200 response from the pydantic models. This
adds the bearer scheme (API key or access token) on the protected routes (``GET /model`` too) and the answers the service really
gives on bad input (400 malformed JSON, 401 key, 413 body size, 415 media type, 422
field errors) and the 503 when the audit log cannot be written, each with the
``ErrorResponse`` body, and drops BentoML's generic 400/404 error bodies, which this
service never sends.
"""

from __future__ import annotations

import copy
from typing import Any

from serving.http.schemas import RESPONSE_SCHEMA_VERSION, ErrorResponse
from serving.http.validation import HORIZON_FIELD
from serving.scoring.loading import SERVED_HEADLINE_MONTHS, SERVED_HORIZONS_MONTHS

PROTECTED_ROUTES = ("/predict", "/explain")
_ERRORS = {
    "400": "Malformed JSON, an empty body, invalid Unicode (a lone surrogate), a key given twice, or a horizon_months "
           "that is not a served horizon (the error names the field). Nothing was scored.",
    "401": "Missing, wrong, revoked or expired API key, or an invalid access token (send 'Authorization: Bearer "
           "<key or token>'); WWW-Authenticate says why (RFC 6750).",
    "403": "The client is known but lacks the scope this path needs (predict, explain); WWW-Authenticate names it.",
    "413": "Request body larger than the service's limit (REFRACTURE_MAX_BODY_BYTES).",
    "415": "Content-Type is not application/json.",
    "422": "One or more field errors, or too many / no records. The first 100 errors are listed (n_errors gives the total); nothing was scored.",
    "429": "The client is over its rate limit; Retry-After says when to try again (seconds).",
    "503": "The audit line could not be written, so no answer was given (retry later).",
}
_DESCRIPTION = (
    "Calibrated risk of cemented-vertebra refracture, adjacent and remote vertebral fracture after "
    "vertebroplasty (PVP) or kyphoplasty (PKP): per outcome the risk curve at 3, 6, 12 and 24 months (the chance "
    "that the fracture happens by then, counting patients who die first as not having it) and the 24-month headline "
    "with its risk band, with optional SHAP explanations at a chosen horizon (/explain?horizon_months=6). "
    "POST /predict and /explain take one procedure record or a list and need 'Authorization: Bearer <key or "
    "token>' with the scope predict or explain. "
    "GET /model (scope model:read) lists the served model versions, their held-out metrics, the risk-band thresholds, the "
    "record schema and an example request. Decision support only: not a substitute for clinical judgement."
)


def patch_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of BentoML's spec dict with auth and the real error answers documented."""
    spec = copy.deepcopy(spec)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in error_schema.pop("$defs", {}).items():
        schemas[name] = definition
    schemas["ErrorResponse"] = error_schema
    components.setdefault("securitySchemes", {})["bearerAuth"] = {
        "type": "http", "scheme": "bearer",
        "description": "A named client's API key (`refracture clients add`; REFRACTURE_API_KEY is the client "
                       "'default'), or an OAuth 2.0 access token (JWT) from the identity provider configured with "
                       "REFRACTURE_OIDC_ISSUER. Scopes: predict, explain, model:read (GET /model), metrics:read "
                       "(GET /metrics). docs/security.md.",
    }
    info = spec.setdefault("info", {})
    info["title"] = "refracture-risk"
    info["description"] = _DESCRIPTION
    info["contact"] = {"name": "refracture-risk maintainers"}
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for path in PROTECTED_ROUTES:
        operation = spec.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        operation["security"] = [{"bearerAuth": []}]
        if "requestBody" in operation:
            operation["requestBody"]["required"] = True  # an empty body is a 400
        responses = operation.setdefault("responses", {})
        for code in ("400", "404", 400, 404):
            responses.pop(code, None)
        for code, text in _ERRORS.items():
            responses[code] = {"description": text, **copy.deepcopy(ref)}
        if path == "/explain":
            operation["parameters"] = [_HORIZON_PARAMETER]
    model = spec.get("paths", {}).get("/model", {}).get("get")
    if model is not None:
        model["security"] = [{"bearerAuth": []}]
        for code in ("401", "403", "429"):
            model.setdefault("responses", {})[code] = {"description": _ERRORS[code], **copy.deepcopy(ref)}
    info["version"] = f"response schema {RESPONSE_SCHEMA_VERSION}"
    return spec


_HORIZON_PARAMETER = {
    "name": HORIZON_FIELD, "in": "query", "required": False,
    "description": "The horizon whose risk is explained, in months after surgery: one of the served horizons "
                   f"(default {SERVED_HEADLINE_MONTHS:g}). Anything else is a 400 naming this field.",
    "schema": {"type": "number", "enum": [float(h) for h in SERVED_HORIZONS_MONTHS], "default": SERVED_HEADLINE_MONTHS},
}
