"""The FHIR R4 endpoints under ``/fhir``: one patient's resources in, RiskAssessments out.

- ``GET /fhir/metadata``: the CapabilityStatement (``serving.fhir.capability``); public.
- ``GET /fhir/CodeSystem/refracture-contract``: the project CodeSystem
  (``features.fhir.codesystem``); ``GET /fhir/OperationDefinition/refracture-risk``; public.
- ``POST /fhir/$refracture-risk``: a Bundle (collection or transaction) of one patient's
  resources, or a Parameters resource holding it as ``bundle`` -> a collection Bundle with,
  per completed vertebral augmentation, one RiskAssessment per outcome and one for the death
  context (``serving.fhir.risk_assessment``), explained at the headline horizon (24 months).

The path of a request is ``/predict``'s, so the numbers are the same: the guard (the
``/fhir`` route: the same authentication as ``/predict``, the ``explain`` scope for the
operation, whose answer carries the top factors; its refusals as OperationOutcomes) and its audit line; the Bundle
read by the mapping (``features.fhir.parse.parse_bundle``, at the request's time: anything
dated later is refused; without its own contract check, ``check=False``: the micro-batch
checks a whole batch of concurrent requests at once, and checking twice doubled the CPU);
the records it yields turned into request rows by the very parser
of ``/predict``'s body (``serving.http.validation.parse_body``), then checked and scored
with the concurrent ``/predict`` and ``/explain`` requests in one micro-batch
(``serving.http.batcher``, the scoring process). ``FhirScoring`` is that path, shared with the
CDS Hooks service.

Errors are OperationOutcomes (``application/fhir+json``) whose issues name the element
(FHIRPath ``expression``): 400 for a body that is not a readable Bundle (malformed JSON,
wrong ``resourceType``, elements that fail the FHIR R4 model), 415 for a body that is not
JSON, 422 for content the mapping or the data contract refuses (two patients, unknown codes,
incompatible units, dates after the request, conflicting duplicates, out-of-range values);
a whole request is refused when any of its records is, as on ``/predict``. Nothing is ever
answered 5xx for bad input; a scoring failure is a 500 OperationOutcome saying so.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from features.fhir.codesystem import project_code_system
from features.fhir.parse import FhirProblem, FhirRecords, RecordSource, parse_bundle
from serving.fhir.capability import CODE_SYSTEM_ID, OPERATION, operation_definition
from serving.fhir.operation_outcome import FHIR_JSON, Issue, issues_of, operation_outcome, outcome_bytes
from serving.fhir.risk_assessment import risk_assessments
from serving.http.request_json import BodyRefused, loads_strict
from serving.http.validation import parse_body

logger = logging.getLogger(__name__)

PREFIX = "/fhir"
#: Media types a FHIR body may be sent as (FHIR R4 http.html#mime-type; plain JSON too).
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "")
#: Problems at the Bundle's envelope: the body is not a readable Bundle (400, not 422).
_ENVELOPE = ("Bundle", "Bundle.resourceType", "Bundle.type", "Bundle.entry")

#: ``submit(rows, procedure_ids, prior_errors) -> (status, body, n_errors)``: the service's
#: micro-batcher of explained requests at the headline horizon.
Submit = Callable[[list[dict[str, Any]], list[str], list[dict[str, Any]]], Awaitable[tuple[int, bytes, int]]]
#: ``log(answer, rows, source, state)``: hands a scored answer to the prediction log (source
#: ``fhir`` or ``cds``; ``state``: the request's ASGI state, with its id and caller).
LogAnswer = Callable[[bytes, list[dict[str, Any]], str, dict[str, Any]], None]


class FhirRefused(Exception):
    """A FHIR input refused: the HTTP status and the issues to answer with."""

    def __init__(self, status: int, issues: list[Issue]):
        super().__init__(issues[0].diagnostics if issues else str(status))
        self.status = status
        self.issues = issues


@dataclass
class Scored:
    """The scored records of one FHIR input: ``predictions`` in the ``/explain`` answer's shape
    (``serving.http.schemas.RecordExplanation``), one per record; ``sources`` where each came
    from; ``warnings``: what was not used."""

    predictions: list[dict[str, Any]]
    sources: list[RecordSource]
    warnings: list[Issue] = field(default_factory=list)


def request_time() -> dt.datetime:
    """Now, in UTC: the time a FHIR input is read at (later dates are refused)."""
    return dt.datetime.now(dt.timezone.utc)


def fhir_datetime(moment: dt.datetime) -> str:
    """A FHIR ``dateTime``/``instant`` to the second, with its offset."""
    return moment.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat()


def parse_refusal(parsed: FhirRecords) -> FhirRefused | None:
    """The refusal of a parse with errors (400 when the envelope or the FHIR model refused
    it, else 422), with every problem; None when it has none."""
    if not parsed.errors:
        return None
    structural = any(p.code == "structure" or p.expression in _ENVELOPE for p in parsed.errors)
    return FhirRefused(400 if structural else 422, issues_of(parsed.problems))


class FhirScoring:
    """The records of a FHIR input, scored on ``/predict``'s path (module docstring).

    ``submit``: the batcher of explained requests; ``max_records``: the service's limit per
    request; ``log``: the prediction log's hand-off (None: no log). ``state``: the request's
    ASGI state; its ``audit`` dict (the guard's) is completed as ``/predict`` completes it
    (procedure ids, which the guard hashes; counts)."""

    def __init__(self, submit: Submit, max_records: int, outcomes: list[str], versions: dict[str, str],
                 log: LogAnswer | None = None):
        self.submit = submit
        self.max_records = max_records
        self.outcomes = outcomes
        self.versions = versions
        self.log = log

    async def score(self, parsed: FhirRecords, state: dict[str, Any] | None = None, source: str = "fhir") -> Scored:
        """Score the records of ``parsed`` (a parse without errors). Raises ``FhirRefused``
        (422) when the data contract refuses a value, naming the FHIR element it came from."""
        state = state if state is not None else {}
        audit = state.get("audit")
        audit = audit if audit is not None else {}
        audit["outcomes"] = self.outcomes
        audit["model_versions"] = self.versions
        refusal = parse_refusal(parsed)
        if refusal is not None:
            audit["n_errors"] = len(parsed.errors)
            raise refusal
        records, sources = parsed.records, parsed.sources
        # The records as /predict's body: the same parser reads them into the same rows.
        request = parse_body(orjson.dumps(records), self.max_records)
        if not request.ok:
            audit["n_errors"] = len(request.errors)
            raise FhirRefused(422, [_field_issue(e, sources) for e in request.errors])
        status, payload, n_errors = await self.submit(request.rows, request.procedure_ids, request.errors)
        audit["n_records"] = len(request.rows)
        audit["procedure_ids"] = [p for p in request.procedure_ids if p]
        audit["n_errors"] = n_errors
        answer = orjson.loads(payload)
        if status == 422:
            raise FhirRefused(422, [_field_issue(e, sources) for e in answer["errors"]])
        if status != 200:
            raise RuntimeError(f"scoring answered {status}")
        if self.log is not None:
            self.log(payload, request.rows, source, state)
        warnings = issues_of(p for p in parsed.problems if p.severity != "error")
        # The contract's warnings (implausible but possible values, scored as sent), named by
        # the FHIR element the value came from, as /predict names them by field.
        warnings += [_field_issue({**w, "record": prediction["record"], "error": w.get("warning", "")}, sources, "warning")
                     for prediction in answer["predictions"] for w in prediction.get("warnings", [])]
        return Scored(answer["predictions"], list(sources), warnings)


def _field_issue(error: dict[str, Any], sources: list[RecordSource], severity: str = "error") -> Issue:
    """A field error (or warning) of the contract checker (record, field path, error, allowed),
    named by the FHIR element its value came from."""
    record, path = error.get("record"), error.get("field") or ""
    expression = sources[record].element(path) if isinstance(record, int) and 0 <= record < len(sources) else ""
    allowed = f" (allowed: {error['allowed']})" if error.get("allowed") else ""
    return Issue(severity, "value", f"{path or 'record'}: {error.get('error', '')}{allowed}", expression)


def assessment_bundle(scored: Scored, occurrence: str) -> dict[str, Any]:
    """The answer of ``$refracture-risk``: a collection Bundle of the RiskAssessments of every
    scored record, then an OperationOutcome of the warnings (if any)."""
    resources = [ra for prediction, source in zip(scored.predictions, scored.sources)
                 for ra in risk_assessments(prediction, source, occurrence)]
    if scored.warnings:
        resources.append(operation_outcome(scored.warnings))
    return {"resourceType": "Bundle", "type": "collection", "timestamp": occurrence,
            "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r} for r in resources]}


def fhir_response(status: int, resource: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> Response:
    body = resource if isinstance(resource, bytes) else orjson.dumps(resource)
    return Response(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def refused(status: int, issues: list[Issue]) -> Response:
    return fhir_response(status, outcome_bytes(issues))


def read_bundle(body: bytes, content_type: str) -> tuple[dict[str, Any], str]:
    """The posted Bundle (unwrapped from a Parameters resource if sent so) and the FHIRPath
    prefix its problems are named under. Raises ``FhirRefused`` (400/415) for a body that is
    not a JSON object."""
    media = content_type.split(";")[0].strip().lower()
    if media not in JSON_TYPES:
        raise FhirRefused(415, [Issue("error", "not-supported",
                                      f"send the Bundle as JSON (Content-Type: application/fhir+json), not {media!r}")])
    if not body.strip():
        raise FhirRefused(400, [Issue("error", "required", "empty body: send a FHIR Bundle of one patient's resources")])
    try:
        data = loads_strict(body)
    except BodyRefused as exc:
        raise FhirRefused(400, [Issue("error", "structure", e["error"], _json_path(e["field"])) for e in exc.errors]) from None
    except (ValueError, RecursionError) as exc:
        raise FhirRefused(400, [Issue("error", "structure", f"malformed JSON: {exc}"[:300])]) from None
    if not isinstance(data, dict):
        raise FhirRefused(400, [Issue("error", "structure", f"expected a FHIR resource (a JSON object), got "
                                                            f"{type(data).__name__}")])
    if data.get("resourceType") == "Parameters":
        params = data.get("parameter")
        found = [i for i, p in enumerate(params) if isinstance(p, dict) and p.get("name") == "bundle"] \
            if isinstance(params, list) else []
        if len(found) != 1 or not isinstance(params[found[0]].get("resource"), dict):
            raise FhirRefused(400, [Issue("error", "required", "a Parameters body needs exactly one parameter 'bundle' "
                                                               "holding the Bundle as its resource", "Parameters.parameter")])
        return params[found[0]]["resource"], f"Parameters.parameter[{found[0]}].resource"
    return data, "Bundle"


def _json_path(field_path: str) -> str:
    """A dotted path of the JSON text (``entry.0.resource``) as FHIRPath (``Bundle.entry[0].resource``)."""
    out = "Bundle"
    for part in [p for p in field_path.split(".") if p]:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def _renamed(parsed: FhirRecords, prefix: str) -> FhirRecords:
    """Problems named under ``prefix`` instead of ``Bundle`` (a Bundle sent in a Parameters)."""
    if prefix == "Bundle":
        return parsed
    parsed.problems = [FhirProblem(prefix + p.expression[len("Bundle"):] if p.expression.startswith("Bundle") else
                                   p.expression, p.message, p.severity, p.code, p.record, p.source)
                       for p in parsed.problems]
    return parsed


class FhirApp:
    """The ASGI app mounted at ``/fhir``. Until the service has started (``start``) every
    route answers 503 with an OperationOutcome."""

    def __init__(self) -> None:
        self.scoring: FhirScoring | None = None
        self._static: dict[str, bytes] = {}
        self.app = Starlette(routes=[
            Route("/metadata", self.metadata, methods=["GET"]),
            Route(f"/${OPERATION}", self.risk, methods=["POST"]),
            Route("/CodeSystem/{id}", self.code_system, methods=["GET"]),
            Route("/OperationDefinition/{id}", self.operation, methods=["GET"]),
            Route("/{rest:path}", self.unknown, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ])

    def start(self, scoring: FhirScoring, capability: dict[str, Any], version: str) -> None:
        """Serve: the scoring path and the resources built once at start."""
        self._static = {"metadata": orjson.dumps(capability), "codesystem": orjson.dumps(project_code_system()),
                        "operation": orjson.dumps(operation_definition(version))}
        self.scoring = scoring

    async def __call__(self, scope, receive, send) -> None:
        if self.scoring is None and scope["type"] == "http":
            await refused(503, [Issue("error", "transient", "the service is starting")])(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def metadata(self, request: Request) -> Response:
        return fhir_response(200, self._static["metadata"])

    async def code_system(self, request: Request) -> Response:
        if request.path_params["id"] != CODE_SYSTEM_ID:
            return refused(404, [Issue("error", "not-found", f"no CodeSystem with id {request.path_params['id'][:64]!r} "
                                                             f"(this service publishes {CODE_SYSTEM_ID!r})")])
        return fhir_response(200, self._static["codesystem"])

    async def operation(self, request: Request) -> Response:
        if request.path_params["id"] != OPERATION:
            return refused(404, [Issue("error", "not-found", f"no OperationDefinition with id "
                                                             f"{request.path_params['id'][:64]!r}")])
        return fhir_response(200, self._static["operation"])

    async def unknown(self, request: Request) -> Response:
        return refused(404, [Issue("error", "not-supported", f"{request.method} {request.url.path[:100]} is not "
                                                             f"supported: see GET {PREFIX}/metadata")])

    async def risk(self, request: Request) -> Response:
        """``POST /fhir/$refracture-risk`` (module docstring)."""
        assert self.scoring is not None
        state = request.scope.get("state", {})
        if request.query_params:
            name = next(iter(request.query_params.keys()))[:60]
            return refused(400, [Issue("error", "not-supported", f"unknown parameter {name!r}: the operation takes "
                                                                 "only the Bundle")])
        now = request_time()
        try:
            bundle, prefix = read_bundle(await request.body(), request.headers.get("content-type", ""))
            parsed = _renamed(parse_bundle(bundle, now=now, validate=False, check=False), prefix)
            scored = await self.scoring.score(parsed, state)
        except FhirRefused as exc:
            return refused(exc.status, exc.issues)
        except Exception as exc:  # noqa: BLE001 - a failure of ours, never of the input
            logger.error("FHIR scoring failed: %s", type(exc).__name__)
            return refused(500, [Issue("fatal", "exception", "scoring failed; nothing was scored (retry, or report "
                                                             "the X-Request-Id)")])
        return fhir_response(200, assessment_bundle(scored, fhir_datetime(now)))
