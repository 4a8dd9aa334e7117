"""The BentoML service: the champion models behind POST /predict and /explain.

Start it with ``refracture serve`` (or ``bentoml serve serving.service:RefractureRisk``).
At start the service reads its settings (``serving.config``: no API key and no
``--insecure-dev`` means no start), resolves the ``champion`` alias of each
``refracture-<outcome>`` to a concrete registry version and loads those versions once
(``serving.scoring.loading``). Every answer names the versions that produced it.

Routes: POST ``/predict`` (per outcome the risk curve at 3, 6, 12 and 24 months and the
24-month headline; per record ``context.death``, the probability of death by 24 months,
when a ``refracture-death`` champion is registered), POST ``/explain`` (also the SHAP explanation at ``?horizon_months=``,
default 24) (scopes predict, explain); GET ``/model`` (versions,
metrics, horizon, schema, example request; scope model:read), ``/metrics`` (scope
metrics:read); ``/healthz``, ``/livez``, ``/readyz`` (with the identity provider's state),
``/docs.json`` (OpenAPI) and ``/`` (Swagger UI, ``serving.http.docs_page``), open. Who may
call is decided by the guard (``serving.http.guard``: named clients' keys, the identity
provider's tokens; docs/security.md). With ``REFRACTURE_TLS_CERT`` and ``REFRACTURE_TLS_KEY``
(``refracture serve --tls-cert/--tls-key``) the server speaks HTTPS itself.

A request body is parsed here, per request (JSON, shape, value types:
``serving.http.validation.parse_body``); the contract checks and the scoring run per *batch*
of concurrent requests (``serving.http.batcher``, ``serving.http.micro_batch``), in the worker's
scoring process (``serving.http.scoring_process``: another core than the HTTP path) or, with
``REFRACTURE_SCORING_PROCESS=0``, in a thread of the worker. See docs/serving.md.
"""

from __future__ import annotations

import gc
import json
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _package_version
import logging
import os
import threading
from typing import Annotated, Any

import bentoml
from _bentoml_sdk.io_models import IORootModel  # the only BentoML internal used: see RecordsInput
from fastapi import FastAPI
from pydantic import Field
from starlette.responses import Response

from features.catalog import FEATURES_BY_NAME
from features.labels import OUTCOMES
from features.records import RECORD_FIELDS, records_frame
from features.schema import SCHEMA_VERSION
from modelstore.estimand import DEATH_ESTIMAND_SENTENCE, ESTIMAND_SENTENCE
from predictionlog.log import PredictionLog
from serving.cds_hooks.app import CdsApp, CdsService
from serving.cds_hooks.client_auth import CdsClientAuthenticator
from serving.cds_hooks.cors import CdsCorsMiddleware
from serving.cds_hooks.settings import get_cds_settings
from serving.config import get_settings, prediction_log_settings
from serving.fhir.capability import capability_statement
from serving.fhir.operation_outcome import render_guard_error
from serving.http.answer_log import PAGE_SOURCE, WHAT_IF, AnsweredPredictions
from serving.http.batcher import MicroBatcher
from serving.http.callers import Route
from serving.http.fhir import FhirApp, FhirScoring, fhir_datetime, request_time
from serving.http.guard import GuardMiddleware
from serving.http.micro_batch import process_batch
from serving.http.openapi import patch_spec
from serving.http.request_json import error_body
from serving.http.schemas import RESPONSE_SCHEMA_VERSION, ExplainResponse, PredictResponse, ProcedureRecord
from serving.http.scoring_process import ScoringProcess
from serving.http.shadow import ShadowScorer
from serving.http.server import install
from serving.http.validation import HORIZON_FIELD, ParsedRequest, _body_error, parse_body, parse_horizon
from serving.monitoring.drift_metrics import DriftMetrics, served_reference
from serving.monitoring.prediction_log import PredictionLogMetrics
from serving.scoring.examples import example_record, example_records
from serving.scoring.loading import (
    SERVED_HEADLINE_MONTHS,
    SERVED_HORIZONS_MONTHS,
    load_challengers,
    load_served_models,
    read_manifest,
)
from serving.scoring.served_models import CONTEXT_HORIZON_MONTHS, SERVING_THREADS, ServedModels, use_threads
from serving.ui.app import build_ui_app

logger = logging.getLogger(__name__)

#: Processes serving requests. One is best on a small machine (models are loaded per
#: process and batching works within a process); raise it on a big one.
WORKERS = int(os.environ.get("REFRACTURE_WORKERS", "1") or 1)
#: Longest a request may take (seconds) before BentoML answers 504.
TIMEOUT_S = int(os.environ.get("REFRACTURE_TIMEOUT_S", "120") or 120)
#: TLS, read where the service is defined (BentoML takes it from the service's config):
#: certificate chain and private key files (PEM), or nothing for plain HTTP.
TLS_CERT = os.environ.get("REFRACTURE_TLS_CERT") or None
TLS_KEY = os.environ.get("REFRACTURE_TLS_KEY") or None
#: TLS 1.2 with forward-secret AEAD suites, and TLS 1.3 (whose suites OpenSSL sets itself).
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _ssl_config() -> dict[str, Any]:
    if not TLS_CERT:
        return {}
    return {"enabled": True, "certfile": TLS_CERT, "keyfile": TLS_KEY, "ciphers": TLS_CIPHERS}


def _service_version() -> str:
    """The installed package's version ('unknown' when run from a source tree not installed)."""
    try:
        return _package_version("refracture-risk")
    except PackageNotFoundError:
        return "unknown"


#: The service's version, named by its FHIR CapabilityStatement.
SERVICE_VERSION = _service_version()

RecordsBody = Annotated[
    ProcedureRecord | Annotated[list[ProcedureRecord], Field(min_length=1)],
    Field(description="One procedure record, or a list of them (at most REFRACTURE_MAX_RECORDS, default 1000)."),
]


class RecordsInput(IORootModel[RecordsBody]):  # type: ignore[valid-type]
    """Request body: one record or a list (JSON). Its schema documents the contract.

    Parsing is ours, not BentoML's: ``from_http_request`` never raises on bad input but
    hands the endpoint a ``ParsedRequest`` carrying every field error, so the endpoint
    answers 400/415/422 with the service's own error body (field path, problem, allowed
    range) rather than BentoML's generic 400.
    """

    @classmethod
    async def from_http_request(cls, request, serde) -> "RecordsInput":
        media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        body = await request.body()
        horizon = _requested_horizon(request)
        if isinstance(horizon, ParsedRequest):
            parsed = horizon
        elif media not in ("application/json", "") and not media.endswith("+json"):
            parsed = _body_error(415, f"send the records as JSON (Content-Type: application/json), not {media!r}")
        else:
            parsed = parse_body(body, get_settings().max_records)
            parsed.horizon_months = horizon
        return cls.model_construct(root=parsed)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # BentoML's OpenAPI flattening keeps only the first branch of an ``anyOf``; the two
        # shapes (object or array) are exclusive, so ``oneOf`` says the same and survives.
        schema = super().model_json_schema(*args, **kwargs)
        if "anyOf" in schema:
            schema["oneOf"] = schema.pop("anyOf")
        return schema


RecordsInput.__root_input__ = True  # the body is the record (or list) itself, not {"records": ...}


def _requested_horizon(request) -> float | None | ParsedRequest:
    """``/explain``'s horizon (query ``?horizon_months=6``; the headline when absent), None
    for ``/predict`` (which returns every horizon and refuses the parameter), or the 400."""
    given = request.query_params.getlist(HORIZON_FIELD)
    predict = request.url.path.rstrip("/").endswith("/predict")
    unknown = sorted({k for k in request.query_params.keys() if k != HORIZON_FIELD})
    if unknown:
        # Refused like an unknown field of a record: a misspelt parameter (``horizon=6``)
        # silently ignored would answer at the wrong horizon.
        name = unknown[0][:60]
        return _field_error(name, "unknown query parameter", "none" if predict else HORIZON_FIELD)
    if predict:
        if not given:
            return None
        return _field_error(HORIZON_FIELD, "only /explain takes a horizon: /predict returns the risk at every horizon",
                            "leave it out")
    if len(given) > 1:
        return _field_error(HORIZON_FIELD, "given more than once", "one horizon")
    return parse_horizon(given[0] if given else None, SERVED_HORIZONS_MONTHS, SERVED_HEADLINE_MONTHS)


def _field_error(name: str, message: str, allowed: str) -> ParsedRequest:
    return ParsedRequest(400, errors=[{"record": None, "field": name, "error": message, "allowed": allowed}],
                         message=f"{name}: {message}")


def _declare_bundled_models(cls: type) -> type:
    """Declare the models pinned by ``refracture bento`` (serving/bento_models.json) as
    BentoML models of the service, so ``bentoml build`` packs them into the Bento.
    Without that file (development) nothing is declared and the registry is used."""
    for outcome, entry in read_manifest().items():
        setattr(cls, f"bundled_{outcome}", bentoml.models.BentoModel(entry["tag"]))
    return cls


model_app = FastAPI(title="refracture-risk model info", docs_url=None, redoc_url=None, openapi_url=None)
#: The FHIR endpoints (``serving.http.fhir``) and the CDS Hooks service (``serving.cds_hooks.app``),
#: served once the models are loaded (``__init__``).
fhir_app = FhirApp()
cds_app = CdsApp()


def _ui_app():
    return build_ui_app()


@bentoml.asgi_app(_ui_app(), path="/ui")
@bentoml.asgi_app(fhir_app, path="/fhir")
@bentoml.asgi_app(cds_app, path="/cds-services")
@bentoml.asgi_app(model_app, path="/")
@bentoml.service(
    name="refracture-risk",
    workers=WORKERS,
    traffic={"timeout": TIMEOUT_S},
    # The audit line (serving.http.guard) is the access log: BentoML's own would add a second
    # line per request, with the client's address, and cost ~10 % of throughput.
    logging={"access": {"enabled": False}},
    ssl=_ssl_config(),
)
@_declare_bundled_models
class RefractureRisk:
    """Risk of refracture after vertebral augmentation (PVP/PKP): calibrated probabilities per outcome."""

    def __init__(self) -> None:
        self.settings = get_settings()
        if self.settings.insecure_dev:
            logger.warning("INSECURE DEV MODE: no API key; anyone who can reach this port can score records")
        if self.settings.audit_salt_is_random:
            logger.warning("REFRACTURE_AUDIT_SALT is not set: audit hashes use a random per-process salt")
        self.scorer = ServedModels(load_served_models(self.settings.model_versions or None),
                                   risk_bands=self.settings.risk_bands)
        use_threads(self.scorer.all_models, SERVING_THREADS)
        # Outcome models only; the death model (context, optional) is in ``scorer.death``.
        self.models = self.scorer.models
        self.drift = DriftMetrics(served_reference(self.models), [m.outcome for m in self.models])
        import prometheus_client  # at start, not import: BentoML sets up its multiprocess mode first

        self._batch_requests = prometheus_client.Histogram(
            "refracture_batch_requests", "Requests scored together in one micro-batch.", ["endpoint"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=None)
        # The prediction log (docs/prediction-log.md): every answered record remembered,
        # written by a thread off the answer's path; its counters and the realized
        # figures on /metrics.
        log_settings = prediction_log_settings(insecure_dev=self.settings.insecure_dev)
        if not log_settings.enabled:
            logger.warning("prediction log off: predictions are not remembered (REFRACTURE_PREDICTION_LOG=0, or "
                           "--insecure-dev without REFRACTURE_PREDICTION_SECRET_FILE)")
        self.log_metrics = PredictionLogMetrics()
        self.prediction_log = PredictionLog.open(log_settings, observer=self.log_metrics.count)
        if self.prediction_log is not None:
            self.log_metrics.start_refreshing(self.prediction_log.store)
        self.shadow: ShadowScorer | None = None
        if self.settings.shadow_challengers:
            if self.prediction_log is None:
                logger.warning("REFRACTURE_SHADOW_CHALLENGERS ignored: shadow scores are only logged, and the log is off")
            else:
                challengers = load_challengers(self.scorer.versions)
                use_threads(challengers, SERVING_THREADS)
                if challengers:
                    self.shadow = ShadowScorer(challengers, self.prediction_log, self.settings.risk_bands)
                    logger.info("scoring in shadow (logged, never returned): %s",
                                ", ".join(f"{m.name} v{m.version}" for m in challengers))
        self._scoring_process: ScoringProcess | None = None
        if self.settings.scoring_process:
            # Started first: the child's imports overlap the rest of the start-up.
            self._scoring_process = ScoringProcess(self.scorer, self.drift.counter)
            starting = threading.Thread(target=self._start_scoring_process, name="scoring-process-start")
            starting.start()
        self._predict_batcher = MicroBatcher(lambda jobs: self._process(jobs, explain=False))
        # One explanation queue per horizon: a batch is explained at one horizon.
        self._explain_batchers = {
            float(h): MicroBatcher(lambda jobs, h=float(h): self._process(jobs, explain=True, horizon_months=h),
                                   max_records=1000)
            for h in SERVED_HORIZONS_MONTHS}
        self._warm_up()
        self._info = _model_info(self.models, self.settings, self.scorer)
        # FHIR requests are explained at the headline horizon, in the same batches as /explain's.
        self.fhir = FhirScoring(self._explain_batchers[float(SERVED_HEADLINE_MONTHS)].submit, self.settings.max_records,
                                self.scorer.outcomes, self.scorer.versions,
                                self._log_rows if self.prediction_log is not None else None)
        cds = get_cds_settings()
        fhir_app.start(self.fhir, capability_statement(SERVICE_VERSION, fhir_datetime(request_time()), cds.public_url,
                                                       self.scorer.outcomes), SERVICE_VERSION)
        cds_app.start(CdsService(self.fhir, cds))
        if self._scoring_process is not None:
            starting.join()
            if self._start_error is not None:
                raise self._start_error
        # Everything alive now (libraries, models, explainers) lives as long as the process.
        # Freezing it keeps each full garbage collection from walking it again: on the
        # bench machine a full pass took 50-150 ms and was the bulk of the p99 latency.
        gc.collect()
        gc.freeze()
        logger.info("serving %s", ", ".join(f"{m.name} v{m.version}" for m in self.scorer.all_models))

    _start_error: BaseException | None = None

    def _start_scoring_process(self) -> None:
        try:
            warm = parse_body(json.dumps(example_record()).encode("utf-8"), self.settings.max_records)
            result = self._scoring_process.start([(warm.rows, warm.procedure_ids, warm.errors)])
            if result.answers[0][0] != 200:
                raise RuntimeError(f"the scoring process answered {result.answers[0][0]} to the example record")
        except BaseException as exc:  # noqa: BLE001 - re-raised by __init__, in its thread
            self._start_error = exc

    @bentoml.on_shutdown
    def _stop_scoring_process(self) -> None:
        if self._scoring_process is not None:
            self._scoring_process.close()
        if self.shadow is not None:
            self.shadow.close()
        if self.prediction_log is not None:  # what is queued is written (or spooled) before the exit
            self.log_metrics.stop()
            self.prediction_log.close(timeout=20)

    def _warm_up(self) -> None:
        """Score and explain the example record once: the first real request is then not
        the one paying for lazy initialisation (SHAP explainers, XGBoost), and a broken
        model stops the start instead of failing requests."""
        flat = records_frame([example_record()])
        self.scorer.score(flat, ["warm-up"], explain=True)

    def __is_ready__(self) -> bool:
        return len(getattr(self, "models", [])) == len(OUTCOMES)

    @bentoml.api(route="/predict", input_spec=RecordsInput, output_spec=PredictResponse)
    async def predict(self, body: ParsedRequest, ctx: bentoml.Context) -> Response:
        """Per outcome: the risk curve (horizon in months -> calibrated probability, death competing, at
        3, 6, 12 and 24 months), the headline 24-month probability and its risk band, the model version
        and missing-input handling; for one record or a list. Any field error refuses the whole request (422)."""
        return await self._answer(body, ctx, explain=False)

    @bentoml.api(route="/explain", input_spec=RecordsInput, output_spec=ExplainResponse)
    async def explain(self, body: ParsedRequest, ctx: bentoml.Context) -> Response:
        """As /predict, plus per outcome the explanation of the risk at one horizon (query parameter
        horizon_months: 3, 6, 12 or 24; default 24): the SHAP base value (log-odds at that horizon), every
        feature's value with unit and contribution (log-odds), and the top factors raising and lowering the risk."""
        return await self._answer(body, ctx, explain=True)

    @model_app.get("/model")
    def model_info(self) -> dict[str, Any]:
        """Served model versions, held-out metrics, horizon, risk bands, record schema and an example request."""
        return self._info

    # ------------------------------------------------------------------ internals
    async def _answer(self, parsed: ParsedRequest, ctx: bentoml.Context, explain: bool) -> Response:
        info = ctx.request.scope.get("state", {}).get("audit")
        info = info if info is not None else {}
        info["outcomes"] = self.scorer.outcomes
        info["model_versions"] = self.scorer.versions
        if not parsed.ok:
            info["n_errors"] = len(parsed.errors)
            ctx.response.status_code = parsed.status  # BentoML copies this onto the response
            return _json(parsed.status, error_body(parsed.message or parsed.errors[0]["error"], parsed.errors))
        horizon = parsed.horizon_months if parsed.horizon_months is not None else SERVED_HEADLINE_MONTHS
        batcher = self._explain_batchers[float(horizon)] if explain else self._predict_batcher
        status, payload, n_errors = await batcher.submit(parsed.rows, parsed.procedure_ids, parsed.errors)
        info["n_records"] = len(parsed.rows)
        info["procedure_ids"] = [p for p in parsed.procedure_ids if p]
        info["n_errors"] = n_errors
        ctx.response.status_code = status
        if status == 200 and self.prediction_log is not None:
            self._log_answer(ctx, parsed, payload)
        return Response(payload, status_code=status, media_type="application/json")

    def _log_answer(self, ctx: bentoml.Context, parsed: ParsedRequest, payload: bytes) -> None:
        """Queue the answer for the prediction log (returns at once; the page's what-if
        copies of a record are not predictions and are left out)."""
        headers = ctx.request.headers
        if headers.get("x-refracture-purpose") == WHAT_IF:
            return
        source = PAGE_SOURCE if headers.get("x-refracture-source") == PAGE_SOURCE else "api"
        self._log_rows(payload, parsed.rows, source, ctx.request.scope.get("state", {}))

    def _log_rows(self, payload: bytes, rows: list, source: str, state: dict[str, Any]) -> None:
        """Queue one answered request (``source``: api, page, fhir, cds) for the prediction log,
        and its records for the shadow challengers."""
        caller = state.get("caller")  # serving.http.callers.Caller: its client's name, never a secret
        answered = AnsweredPredictions(payload, rows, source, state.get("request_id"),
                                       getattr(caller, "client", None), self.prediction_log.settings.store_inputs)
        if self.prediction_log.submit(answered) and self.shadow is not None:
            self.shadow.submit(rows, answered.prediction_ids)

    def _process(self, jobs: list, explain: bool, horizon_months: float | None = None) -> list[tuple[int, bytes, int]]:
        """Check and score a batch of requests (runs in the batcher's thread), in the
        scoring process when there is one (``serving.http.scoring_process``), else here; then
        count the batch on the drift metrics."""
        batch = [(j.rows, j.procedure_ids, j.prior_errors) for j in jobs]
        self._batch_requests.labels(endpoint="explain" if explain else "predict").observe(len(jobs))
        if self._scoring_process is not None:
            result = self._scoring_process.run(batch, explain, horizon_months)
        else:
            result = process_batch(self.scorer, self.drift.counter, batch, explain, horizon_months)
        self.drift.add(result.drift)
        return result.answers


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")).encode("utf-8"), status_code=status,
                    media_type="application/json")


def _model_info(models: list, settings, scorer: ServedModels) -> dict[str, Any]:
    """The body of GET /model (computed once at start; the example answers are the served
    models' own, for the example records)."""
    outcomes = {}
    for m in models:
        low, high = settings.risk_bands[m.outcome]
        outcomes[m.outcome] = {
            "model": m.ref,
            "source": m.source,
            "model_type": m.model.model_type,
            "feature_set": m.model.feature_set,
            "horizon_months": float(m.model.horizon_months),
            "horizons_months": [float(h) for h in m.model.horizons_months],
            "estimand": m.model.estimand,
            "metrics": {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in dict(m.model.metrics).items()},
            "risk_bands": {"low": f"probability < {low:g}", "intermediate": f"{low:g} <= probability < {high:g}",
                           "high": f"probability >= {high:g}", "thresholds": [low, high]},
            "features": [
                {"name": n, "display_name": FEATURES_BY_NAME[n].display() if n in FEATURES_BY_NAME else n,
                 "unit": FEATURES_BY_NAME[n].unit if n in FEATURES_BY_NAME else ""}
                for n in m.model.feature_names
            ],
        }
    context = {}
    if scorer.death is not None:
        d = scorer.death
        context["death"] = {
            "model": d.ref, "source": d.source, "model_type": d.model.model_type, "feature_set": d.model.feature_set,
            "horizon_months": CONTEXT_HORIZON_MONTHS, "estimand": d.model.estimand, "meaning": DEATH_ESTIMAND_SENTENCE,
            "metrics": {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in dict(d.model.metrics).items()},
        }
    horizons = sorted({o["horizon_months"] for o in outcomes.values()})
    examples = example_records()
    answers = scorer.score(records_frame([e["record"] for e in examples]), [e["record"]["procedure"]["procedure_id"]
                                                                            for e in examples])
    return {
        "service": "refracture-risk",
        "response_schema_version": RESPONSE_SCHEMA_VERSION,
        "estimand": ESTIMAND_SENTENCE,
        "horizon_months": horizons[0] if len(horizons) == 1 else horizons,
        "horizons_months": [float(h) for h in SERVED_HORIZONS_MONTHS],
        "outcomes": outcomes,
        # The probability of death by 24 months, shown beside the outcomes (``context.death``
        # of each answer); empty when no death model is registered.
        "context": context,
        "limits": {"max_records_per_request": settings.max_records, "max_body_bytes": settings.max_body_bytes},
        "record_schema_version": SCHEMA_VERSION,
        "feature_schema": [
            {"field": f.path, "flat_name": f.flat_name, "kind": f.spec.kind, "unit": f.spec.unit,
             "allowed": f.spec.range_text, "required": f.required, "nullable": not f.required,
             "definition": f.spec.definition}
            for f in RECORD_FIELDS
        ],
        "example_request": example_record(),
        "example_response": {"schema_version": RESPONSE_SCHEMA_VERSION, "predictions": answers[:1]},
        "examples": [{"name": e["name"], "label": e["label"], "why": e["why"], "request": e["record"],
                      "response": {"schema_version": RESPONSE_SCHEMA_VERSION, "predictions": [dict(a, record=0)]}}
                     for e, a in zip(examples, answers)],
    }


def _spec() -> dict[str, Any]:
    return patch_spec(RefractureRisk.openapi_spec.asdict())


def _routes(settings) -> tuple[Route, ...]:
    """The guard's routes with their own authentication or error format (``serving.http.callers``):
    ``/fhir`` answers its refusals as FHIR OperationOutcomes, its callers authenticated as ``/predict``'s
    (the default route's authenticator);
    ``/cds-services`` takes the CDS client's signed JWT (its keys fetched once at start, in a thread)."""
    cds_auth = CdsClientAuthenticator(get_cds_settings())
    threading.Thread(target=cds_auth.warm, name="cds-client-keys", daemon=True).start()
    return (Route("/fhir", render_error=render_guard_error),
            Route("/cds-services", cds_auth))


def _add_guard() -> None:
    # Outside the guard: a browser's CORS preflight carries no credentials (serving.cds_hooks.cors).
    RefractureRisk.add_asgi_middleware(CdsCorsMiddleware)
    RefractureRisk.add_asgi_middleware(GuardMiddleware, spec_provider=_spec, routes=_routes)
    install()  # request-head limits and bounded metric labels (serving.http.server)


_add_guard()
