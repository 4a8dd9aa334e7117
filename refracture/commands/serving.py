"""Serving commands: serve (HTTP), predict (batch files, no HTTP), bento (build a Bento)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

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
from refracture.commands.data import EXCLUDE_HELP, report_path, scorable_or_exit, write_exclusion_report
from serving.batch.fhir_output import write_risk_assessments
from serving.batch.pandas_engine import BatchInputError, score_file
from serving.batch.prediction_log import log_scored
from serving.config import ENV_INSECURE_DEV, ENV_MODEL_VERSIONS, ServingSettings, prediction_log_settings
from serving.scoring.loading import ModelsUnavailable, export_to_bentoml, load_from_registry, resolve_pins

console = Console(stderr=True)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVICE_IMPORT = "serving.service:RefractureRisk"


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error[/red]: {message}")
    raise typer.Exit(code=code)


def serve(
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=1, max=65535)] = 3000,
    host: Annotated[str, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes the service beyond this machine.")] = "127.0.0.1",
    insecure_dev: Annotated[bool, typer.Option("--insecure-dev", help="Run without an API key (local development only).")] = False,
    workers: Annotated[int, typer.Option("--workers", help="Server processes (each loads the models).", min=1, max=64)] = 1,
) -> None:
    """Serve the champion models over HTTP (BentoML). Needs REFRACTURE_API_KEY unless --insecure-dev."""
    env = dict(os.environ)
    if insecure_dev:
        env[ENV_INSECURE_DEV] = "1"
    try:
        settings = ServingSettings.from_env(env)
        log_settings = prediction_log_settings(env, settings.insecure_dev)
    except ConfigError as exc:
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
    mode = "[yellow]INSECURE DEV MODE (no API key)[/yellow]" if settings.insecure_dev else "bearer key required"
    console.print(f"serving {served} on http://{host}:{port} ({mode}); docs at /, OpenAPI at /docs.json")
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


def predict(
    output: Annotated[str, typer.Option("--output", help="Output: a .csv or .parquet file (--engine pandas), a folder of Parquet parts (--engine spark; a path or a URI such as s3a://...).")],
    input: Annotated[str | None, typer.Option("--input", help="Flat records: .csv, .parquet or a Parquet folder (one column per record field), or nested records (.json list); with --engine spark, Parquet (a path or a URI). Any field error refuses the whole file.")] = None,
    raw: Annotated[Path | None, typer.Option("--raw", help="A raw export folder (patients, procedures, imaging, events). Errors in rows a record uses stop the scoring (see --exclude-invalid); errors in what records do not use (events, follow-up) and warnings are reported.")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Add each outcome's base value and per-feature SHAP contributions (log-odds).")] = False,
    engine: Annotated[str, typer.Option("--engine", help="pandas (this process) or spark (mapInPandas, same scorer; Parquet in, Parquet folder out).")] = "pandas",
    master: Annotated[str | None, typer.Option("--master", help="Spark master for --engine spark (default local[*]; under spark-submit, the one it sets).")] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Records scored per vectorised call (per Arrow batch on Spark).", min=1)] = 50_000,
    exclude_invalid: Annotated[bool, typer.Option("--exclude-invalid", help="With --raw: " + EXCLUDE_HELP + " The report "
                                                  "is written beside --output (<name>.exclusions.csv) with its count and "
                                                  "SHA-256 printed.")] = False,
    fhir_ndjson: Annotated[Path | None, typer.Option("--fhir-ndjson", help="A FHIR Bulk Data export folder (<ResourceType>.ndjson; docs/fhir.md). Refused resources are reported by file, line and element; the other procedures are scored, and RiskAssessment.ndjson is written.")] = None,
    risk_assessments: Annotated[Path | None, typer.Option("--risk-assessments", help="With --fhir-ndjson: where to write the RiskAssessment NDJSON (default: RiskAssessment.ndjson beside --output).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output (and RiskAssessment file); without it an existing one is refused before anything is scored.")] = False,
) -> None:
    """Score procedure records with the champion models, without HTTP (vectorised, in chunks)."""
    if engine not in ("pandas", "spark"):
        raise typer.BadParameter("use pandas or spark", param_hint="--engine")
    if sum(x is not None for x in (input, raw, fhir_ndjson)) != 1:
        raise typer.BadParameter("give one of --input FILE, --raw DIR or --fhir-ndjson DIR", param_hint="--input/--raw/--fhir-ndjson")
    source = (fhir_ndjson or raw) if input is None else (input if engine == "spark" and "://" in input else Path(input))
    if isinstance(source, Path) and not source.exists():  # a URI is for Spark to open
        raise typer.BadParameter(f"{source} does not exist", param_hint="--input" if input is not None else "--raw")
    if engine == "pandas" and Path(output).suffix not in (".csv", ".parquet"):
        raise typer.BadParameter("write .csv or .parquet", param_hint="--output")
    if engine == "spark" and isinstance(source, Path) and input is not None and not (source.is_dir() or source.suffix == ".parquet"):
        raise typer.BadParameter("--engine spark reads Parquet (a file or a folder)", param_hint="--input")
    if exclude_invalid and raw is None:
        raise typer.BadParameter("--exclude-invalid leaves out broken procedures of a raw export: give --raw DIR "
                                 "(a records file with a field error is refused whole)", param_hint="--exclude-invalid")
    ra_target = (risk_assessments or Path(output).parent / "RiskAssessment.ndjson") if fhir_ndjson is not None else None
    for target, hint in ((output, "--output"), (ra_target, "--risk-assessments")):
        if target is not None and "://" not in str(target) and Path(target).exists() and not overwrite:
            raise typer.BadParameter(f"{target} exists: give --overwrite to replace it", param_hint=hint)
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


def bento(
    build: Annotated[bool, typer.Option("--build/--no-build", help="Run `bentoml build` after exporting the models.")] = True,
) -> None:
    """Pin the champion versions into the BentoML model store and build a Bento that runs without the registry."""
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
