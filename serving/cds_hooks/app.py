"""The CDS Hooks service, mounted at ``/cds-services`` (CDS Hooks 2.0, https://cds-hooks.hl7.org/2.0/).

- ``GET /cds-services``: discovery, "an object containing a list of CDS Services": the service
  ``refracture-risk`` on two hooks, with the same prefetch templates (``serving.cds_hooks.prefetch``).
  "A CDS server can host multiple entries of CDS service with the same id for different hooks":

  - ``patient-view`` ("The user has just opened a patient's record"): the follow-up visits
    after a vertebral augmentation, where the risk informs imaging and osteoporosis treatment;
  - ``encounter-discharge`` ("the discharge process for an encounter"): the discharge after
    the augmentation, when secondary fracture prevention (anti-osteoporosis therapy, brace,
    follow-up) is decided and the post-operative imaging the models use is available.

- ``POST /cds-services/refracture-risk``: the hook call. Its FHIR data is its prefetch when
  complete, else what is missing is fetched from ``fhirServer`` with the ``fhirAuthorization``
  bearer token; neither: 412, as the specification requires. The patient's resources are read
  by the mapping (``features.fhir.parse``), the completed augmentations of the latest surgery
  date scored on ``/predict``'s path (``serving.http.fhir.FhirScoring``: the same micro-batches,
  the same numbers), and each treated level becomes a card (``serving.cds_hooks.cards``). No
  vertebral augmentation: ``{"cards": []}``, "If your CDS Service has no decision support for the
  user, your service should return a 200 HTTP response with an empty array of cards".

Who may call is the guard's business (the ``/cds-services`` route, ``serving.cds_hooks.client_auth``:
the client's signed JWT, discovery included). Errors are the service's JSON error body
(``error``, ``errors`` with ``field`` and ``error``, ``n_errors``): 400 for a malformed call,
412 when the FHIR data cannot be had, 415 for a body that is not JSON, 422 when the patient's
FHIR data is refused (``field`` is the FHIRPath from ``prefetch.<key>``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from features.fhir.parse import FhirRecords, parse_prefetch
from serving.cds_hooks import cards as cds_cards
from serving.cds_hooks.prefetch import FETCH_TIMEOUT_S, FhirAccess, PrefetchFailed, complete, prefetch_templates
from serving.cds_hooks.settings import CdsSettings, check_url
from serving.http.fhir import FhirRefused, FhirScoring, parse_refusal, request_time
from serving.http.request_json import BodyRefused, error_body, loads_strict

logger = logging.getLogger(__name__)

SERVICE_ID = "refracture-risk"
TITLE = "Refracture risk after vertebral augmentation"
DESCRIPTION = (
    "For a patient treated with vertebroplasty or kyphoplasty: the calibrated probability of a further collapse of "
    "the cemented vertebra, of a new fracture of an adjacent vertebra and of a remote vertebral fracture within 3, "
    "6, 12 and 24 months of the procedure (death as a competing event), with the top factors. One card per treated "
    "level of the latest augmentation; no card for a patient without one.")
USAGE = ("Needs the patient's Procedures, Observations (height, weight, DXA, spine imaging measures), Conditions and "
         "MedicationStatements, by prefetch or by fhirServer with fhirAuthorization; calls are authenticated by the "
         "CDS client's signed JWT (see the service's docs/cds-hooks.md).")
#: The hooks, with the context fields each requires (CDS Hooks library, hook definitions).
HOOKS: dict[str, tuple[str, ...]] = {
    "patient-view": ("userId", "patientId"),
    "encounter-discharge": ("userId", "patientId", "encounterId"),
}
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


class FhirAuthorization(BaseModel):
    """``fhirAuthorization`` (CDS Hooks 2.0 "Passing the Access Token to the CDS Service")."""

    model_config = ConfigDict(extra="allow")

    access_token: str = Field(min_length=1)
    token_type: str = Field(pattern="^Bearer$")
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None


class HookCall(BaseModel):
    """The body of a hook call (CDS Hooks 2.0 "Calling a CDS Service"); ``extension`` allowed."""

    model_config = ConfigDict(extra="allow")

    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1)  # noqa: N815 - the specification's name
    fhirServer: str | None = None  # noqa: N815
    fhirAuthorization: FhirAuthorization | None = None  # noqa: N815
    context: dict[str, Any]
    prefetch: dict[str, dict[str, Any] | None] | None = None


def discovery(templates: dict[str, str]) -> dict[str, Any]:
    """The discovery document (CDS Hooks 2.0 "Discovery")."""
    return {"services": [{"hook": hook, "title": TITLE, "description": DESCRIPTION, "id": SERVICE_ID,
                          "prefetch": templates, "usageRequirements": USAGE} for hook in HOOKS]}


class CdsError(Exception):
    """A call refused: status, summary and (field, error) pairs."""

    def __init__(self, status: int, message: str, errors: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or [("", message)]

    def body(self) -> bytes:
        return orjson.dumps(error_body(self.message, [{"field": f, "error": e} for f, e in self.errors]))


def _check_call(call: HookCall, settings: CdsSettings, client_name: str | None) -> FhirAccess | None:
    """The hook, its context and the FHIR access of a call; raises ``CdsError`` (400)."""
    if call.hook not in HOOKS:
        raise CdsError(400, f"hook {call.hook[:40]!r} is not one this service is registered for "
                            f"({', '.join(HOOKS)})", [("hook", "not a hook of this service")])
    missing = [f for f in HOOKS[call.hook] if not isinstance(call.context.get(f), str) or not call.context[f]]
    if missing:
        raise CdsError(400, f"the {call.hook} context needs {', '.join(missing)}", [(f"context.{f}", "required")
                                                                                  for f in missing])
    if not _FHIR_ID.match(call.context["patientId"]):
        raise CdsError(400, "context.patientId is not a FHIR id", [("context.patientId", "not a FHIR id")])
    if call.fhirAuthorization is None:
        return None
    if not call.fhirServer:
        raise CdsError(400, "fhirAuthorization is given without fhirServer", [("fhirServer", "required with "
                                                                                           "fhirAuthorization")])
    try:
        server = check_url(call.fhirServer, "fhirServer")
    except ValueError as exc:
        raise CdsError(400, str(exc), [("fhirServer", str(exc))]) from None
    client = next((c for c in settings.clients if c.name == client_name), None)
    if client is not None and not client.may_use(server):
        raise CdsError(400, "fhirServer is not a FHIR server this CDS client is allowed to name",
                       [("fhirServer", "not on the client's fhir_servers list")])
    return FhirAccess(server, call.fhirAuthorization.access_token)


def _patient_matches(prefetch: dict[str, Any], patient_id: str) -> None:
    patient = prefetch.get("patient")
    if isinstance(patient, dict) and patient.get("resourceType") == "Patient" and patient.get("id") != patient_id:
        raise CdsError(422, "prefetch.patient is not the patient of the hook's context",
                       [("prefetch.patient.id", f"expected {patient_id!r} (context.patientId)")])


def latest_augmentation(parsed: FhirRecords) -> FhirRecords:
    """The records of the latest surgery date (one per treated level), with the warnings."""
    dates = [r["procedure"].get("surgery_date") or "" for r in parsed.records]
    latest = max(dates)
    keep = [i for i, d in enumerate(dates) if d == latest]
    return FhirRecords(records=[parsed.records[i] for i in keep], sources=[parsed.sources[i] for i in keep],
                       problems=[p for p in parsed.problems if p.severity != "error"])


class CdsService:
    """The hook call (module docstring), given the scoring path and the settings."""

    def __init__(self, scoring: FhirScoring, settings: CdsSettings, templates: dict[str, str] | None = None):
        self.scoring = scoring
        self.settings = settings
        self.templates = templates or prefetch_templates()
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False)
        return self._client

    async def call(self, body: bytes, content_type: str, client_name: str | None,
                   state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Cards for one hook call; raises ``CdsError``."""
        media = content_type.split(";")[0].strip().lower()
        if media not in ("application/json", "") and not media.endswith("+json"):
            raise CdsError(415, f"send the hook call as JSON (Content-Type: application/json), not {media!r}")
        try:
            data = loads_strict(body)
        except BodyRefused as exc:
            raise CdsError(400, exc.message, [(e["field"], e["error"]) for e in exc.errors]) from None
        except (ValueError, RecursionError) as exc:
            raise CdsError(400, f"malformed JSON: {exc}"[:300]) from None
        try:
            call = HookCall.model_validate(data)
        except ValidationError as exc:
            errors = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors(include_url=False)]
            raise CdsError(400, f"{len(errors)} problem(s) in the hook call", errors) from None
        access = _check_call(call, self.settings, client_name)
        try:
            prefetch = await complete(call.prefetch or {}, self.templates, call.context, access, self._http())
        except PrefetchFailed as exc:
            raise CdsError(412, f"the patient's FHIR data cannot be had: {exc}", [("prefetch", str(exc))]) from None
        _patient_matches(prefetch, call.context["patientId"])
        now = request_time()
        parsed = parse_prefetch({k: prefetch.get(k) for k in self.templates}, now=now, validate=False, check=False)
        if parsed.no_procedure:
            return {"cards": []}
        refusal = parse_refusal(parsed)
        if refusal is not None:
            raise _refused(refusal)
        chosen = latest_augmentation(parsed)
        try:
            scored = await self.scoring.score(chosen, state, source="cds")
        except FhirRefused as exc:
            raise _refused(exc) from None
        return {"cards": [cds_cards.card(record, prediction, self.settings.card_source_url, self.settings.public_url)
                          for record, prediction in zip(chosen.records, scored.predictions)]}


def _refused(exc: FhirRefused) -> CdsError:
    errors = [(i.expression, i.diagnostics) for i in exc.issues if i.severity in ("error", "fatal")]
    return CdsError(422, f"the patient's FHIR data is refused: {len(errors)} problem(s); nothing was scored", errors)


class CdsApp:
    """The ASGI app mounted at ``/cds-services``; 503 until the service has started."""

    def __init__(self) -> None:
        self.service: CdsService | None = None
        self._discovery = b""
        self.app = Starlette(routes=[
            Route("/", self.discover, methods=["GET"]),
            Route(f"/{SERVICE_ID}", self.hook, methods=["POST"]),
        ])

    def start(self, service: CdsService) -> None:
        self._discovery = orjson.dumps(discovery(service.templates))
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            if self.service is None:
                await _json(503, error_body("the service is starting", []))(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def discover(self, request: Request) -> Response:
        return Response(self._discovery, media_type="application/json")

    async def hook(self, request: Request) -> Response:
        assert self.service is not None
        state = request.scope.get("state", {})
        caller = state.get("caller")
        try:
            answer = await self.service.call(await request.body(), request.headers.get("content-type", ""),
                                             getattr(caller, "client", None), state)
        except CdsError as exc:
            return Response(exc.body(), status_code=exc.status, media_type="application/json")
        except Exception as exc:  # noqa: BLE001 - a failure of ours, never of the input
            logger.error("CDS Hooks call failed: %s", type(exc).__name__)
            return _json(500, error_body("scoring failed; nothing was scored (retry, or report the X-Request-Id)", []))
        return Response(orjson.dumps(answer), media_type="application/json")


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")
