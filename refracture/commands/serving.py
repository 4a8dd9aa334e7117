"""Serving commands: serve (HTTP), predict (batch files, no HTTP), bento (build a Bento); options and
help: ``refracture.options.serving``."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from features.fhir.bulk import BulkInputError, read_bulk_ndjson
from features.fhir.parse import record_frame
from modelstore.errors import ConfigError
from modelstore.tracking import TrackingUnavailable, check_tracking, configure_tracking
from predictionlog.log import PredictionLog
from predictionlog.settings import PredictionLogSettings
from predictionlog.store import PredictionStore
from refracture.commands.data import report_path, scorable_or_exit, write_exclusion_report
from refracture.options.serving import risk_assessments_target, source_of
from serving.auth.clients import RegistryError, read_registry
from serving.batch.fhir_output import write_risk_assessments
from serving.batch.pandas_engine import BatchInputError, score_file
from serving.batch.prediction_log import log_scored
from serving.config import (ENV_INSECURE_DEV, ENV_MODEL_VERSIONS, ENV_TLS_CERT, ENV_TLS_KEY, ServingSettings,
                            prediction_log_settings)
from serving.scoring.loading import ModelsUnavailable, export_to_bentoml, load_from_registry, resolve_pins

console = Console(stderr=True)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVICE_IMPORT = "serving.service:RefractureRisk"


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error[/red]: {message}")
    raise typer.Exit(code=code)


def serve(*, port: int, host: str, insecure_dev: bool, workers: int, tls_cert: Path | None, tls_key: Path | None) -> None:
    """``refracture serve``: resolve the champion versions once, then become the BentoML server (exec)."""
    env = dict(os.environ)
    if insecure_dev:
        env[ENV_INSECURE_DEV] = "1"
    if tls_cert is not None:  # both given and files (the options checked them)
        env[ENV_TLS_CERT], env[ENV_TLS_KEY] = str(tls_cert.resolve()), str(tls_key.resolve())
    try:
        settings = ServingSettings.from_env(env)
        log_settings = prediction_log_settings(env, settings.insecure_dev)
        if settings.clients_file is not None:
            read_registry(settings.clients_file)  # an invalid registry stops here, not in every worker
    except (ConfigError, RegistryError) as exc:
        _fail(str(exc), code=2)
    if log_settings.enabled:
        _migrate_prediction_store(log_settings)
    else:
        console.print("[yellow]prediction log off[/yellow]: predictions are not remembered (docs/prediction-log.md)")
    uri = configure_tracking()
    try:
        check_tracking(uri)
        pins = resolve_pins(settings.model_versions or None)
    except (TrackingUnavailable, ModelsUnavailable) as exc:
        _fail(str(exc))
    # Resolve the alias once, here, so every worker serves the same versions even if the
    # champion moves while they start.
    env["MLFLOW_TRACKING_URI"] = uri
    env[ENV_MODEL_VERSIONS] = ",".join(f"{p.outcome}={p.version}" for p in pins)
    env["REFRACTURE_WORKERS"] = str(workers)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    served = ", ".join(f"{p.name} v{p.version}" for p in pins)
    mode = "[yellow]INSECURE DEV MODE (no API key)[/yellow]" if settings.insecure_dev else "bearer key or token required"
    scheme = "https" if env.get(ENV_TLS_CERT) else "http"
    console.print(f"serving {served} on {scheme}://{host}:{port} ({mode}); docs at /, OpenAPI at /docs.json")
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE_IMPORT, "--host", host, "--port", str(port),
           "--working-dir", str(PROJECT_ROOT)]
    # Become the server (exec) rather than start it as a child: a process manager or a
    # container runtime signals only the process it started, and SIGTERM/SIGINT must reach
    # the server itself, which drains, stops its workers and frees the port.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)


def _migrate_prediction_store(log_settings) -> None:
    """Bring the prediction store to the newest schema once, here, before the workers
    start (they only check it). A store that does not answer yet is not a reason to stay
    down: the workers spool until it does (migrate then with `refracture predictions migrate`)."""
    store = PredictionStore(log_settings.url)
    try:
        store.migrate()
    except SQLAlchemyError as exc:
        console.print(f"[yellow]prediction store {store!r} not reachable[/yellow] ({type(exc).__name__}): predictions are "
                      f"spooled to {log_settings.spool_dir} until it is; then run `refracture predictions migrate`")
    finally:
        store.dispose()


def predict(*, output: str, input: str | None, raw: Path | None, explain: bool, engine: str, master: str | None,
            chunk_size: int, exclude_invalid: bool, fhir_ndjson: Path | None, risk_assessments: Path | None,
            overwrite: bool) -> None:
    """``refracture predict``: score ``input``, ``raw`` or ``fhir_ndjson`` with the champions into ``output``
    (the options were checked by ``refracture.options.serving.predict``, an existing output refused there)."""
    source = source_of(input, raw, engine, fhir_ndjson)
    ra_target = risk_assessments_target(output, fhir_ndjson, risk_assessments)
    scorable = scorable_or_exit(raw, exclude_invalid) if raw is not None else None
    records = scorable.records if scorable is not None else None
    sources = None
    started = dt.datetime.now(dt.timezone.utc)
    if fhir_ndjson is not None:
        records, sources = _fhir_records(fhir_ndjson, started)
    try:
        check_tracking(configure_tracking())
        models = load_from_registry()
    except (TrackingUnavailable, ModelsUnavailable) as exc:
        _fail(str(exc))
    try:
        if engine == "spark":
            summary = _predict_on_spark(models, source if input is not None else None, records, output, explain,
                                        chunk_size, master, overwrite)
        else:
            log = _batch_prediction_log()
            kind = "fhir" if fhir_ndjson is not None else "batch"
            on_scored = (lambda flat, out: log_scored(log, models, flat, out, source=kind)) if log is not None else None
            try:
                summary = score_file(models, source, Path(output), explain=explain, chunk_size=chunk_size,
                                     console=console, records=records, on_scored=on_scored)
            finally:
                if log is not None:
                    log.close(timeout=600)
                    c = log.counters()
                    console.print(f"prediction log: {c['written']} written, {c['spooled']} spooled (replayed when the "
                                  f"store is back), {c['dropped']} dropped")
    except BatchInputError as exc:
        for line in exc.lines():
            console.print(line, markup=False, highlight=False)
        _fail(f"{source}: nothing was written")
    except FileExistsError as exc:  # a URI output Spark found in place
        _fail(f"{exc}: give --overwrite to replace it", code=2)
    console.print(f"[green]wrote[/green] {output}: {summary}")
    if scorable is not None and (exclude_invalid or scorable.violations):
        if "://" in output:
            console.print(f"exclusion report not written beside a remote output: {len(scorable.excluded)} procedures "
                          f"excluded, sha256 {scorable.report.fingerprint} (`refracture validate --raw {raw} --report FILE` "
                          "writes it)")
        else:
            write_exclusion_report(scorable.report, report_path(Path(output)))
    if sources is not None:
        n = write_risk_assessments(_read_scored(output, engine), sources, ra_target, started.isoformat(timespec="seconds"))
        console.print(f"[green]wrote[/green] {ra_target}: {n} RiskAssessment resources")


def _fhir_records(folder: Path, now: dt.datetime):
    """Flat records of a Bulk FHIR export's sound procedures and their sources; the refused
    resources reported by file, line and element."""
    try:
        parsed = read_bulk_ndjson(folder, now=now)
    except BulkInputError as exc:
        _fail(str(exc))
    if parsed.problems:
        console.print(f"{len(parsed.problems)} problem(s) in {folder}:", markup=False, highlight=False)
        for problem in parsed.problems[:200]:
            console.print(f"  - {problem}", markup=False, highlight=False)
        if len(parsed.problems) > 200:
            console.print(f"  ... and {len(parsed.problems) - 200} more", markup=False, highlight=False)
    records, sources = parsed.accepted()
    console.print(f"{len(records)} of {len(parsed.records)} procedure records accepted from {folder}",
                  markup=False, highlight=False)
    return record_frame(parsed), {str(r["procedure"]["procedure_id"]): s for r, s in zip(records, sources)}


def _read_scored(output: str, engine: str):
    path = Path(output)
    if engine == "pandas" and path.suffix == ".csv":
        return pd.read_csv(path, dtype={"procedure_id": str})
    return pd.read_parquet(path)


def _batch_prediction_log():
    """The prediction log for a batch run (pandas engine), or None: off by setting, or no
    site secret (said, and the file is still scored). Spark's executors do not log: a
    cluster's output folder is scored far from the store; log it with the pandas engine."""
    try:
        settings = PredictionLogSettings.from_env(need_secret=False)
    except ConfigError as exc:
        _fail(str(exc), code=2)
    if not settings.enabled:
        return None
    if settings.secret is None:
        console.print("[yellow]prediction log off for this run[/yellow]: no site secret (REFRACTURE_PREDICTION_SECRET_FILE; "
                      "docs/prediction-log.md)")
        return None
    _migrate_prediction_store(settings)
    return PredictionLog.open(settings)


def _predict_on_spark(models, input: str | Path | None, records, output: str, explain: bool, chunk_size: int,
                      master: str | None, overwrite: bool = False) -> str:
    from pyspark.sql import SparkSession

    from serving.batch.spark_engine import read_parquet_records, records_frame_on_spark, score_on_spark, spark_session

    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started this driver
    # A session this command did not start (spark-submit's, a notebook's) is left running.
    ours = SparkSession.getActiveSession() is None and not under_submit
    # py4j logs every command it sends the JVM (DEBUG) and every connection it closes (INFO).
    logging.getLogger("py4j").setLevel(logging.WARNING)
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)  # `refracture --verbose`: Spark's own log as it is
    spark = spark_session(master or (None if under_submit else "local[*]"), quiet=not verbose)
    try:
        frame, n = read_parquet_records(spark, input) if records is None else records_frame_on_spark(spark, records)
        return score_on_spark(spark, models, frame, n, output, explain=explain, chunk_size=chunk_size, overwrite=overwrite)
    finally:
        if ours:
            spark.stop()


def bento(*, build: bool) -> None:
    """``refracture bento``: pin the champions into the BentoML model store, then (``build``) ``bentoml build``."""
    try:
        check_tracking(configure_tracking())
        pins = resolve_pins()
    except (TrackingUnavailable, ModelsUnavailable) as exc:
        _fail(str(exc))
    manifest = export_to_bentoml(pins)
    for outcome, entry in manifest.items():
        console.print(f"{outcome}: {entry['name']} v{entry['version']} -> BentoML model {entry['tag']}")
    if build:
        code = subprocess.call([sys.executable, "-m", "bentoml", "build", str(PROJECT_ROOT)], cwd=PROJECT_ROOT)
        if code != 0:
            _fail("bentoml build failed", code)
