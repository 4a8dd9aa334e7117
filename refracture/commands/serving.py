"""Serving commands: serve (HTTP), predict (batch files, no HTTP), bento (build a Bento)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from features.io import read_raw
from features.raw_records import scorable_records
from features.validate import RawDataError
from modelstore.errors import ConfigError
from modelstore.tracking import TrackingUnavailable, check_tracking, configure_tracking
from serving.batch.pandas_engine import BatchInputError, score_file
from serving.config import ENV_INSECURE_DEV, ENV_MODEL_VERSIONS, ServingSettings
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
    except ConfigError as exc:
        _fail(str(exc), code=2)
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


def predict(
    output: Annotated[str, typer.Option("--output", help="Output: a .csv or .parquet file (--engine pandas), a folder of Parquet parts (--engine spark; a path or a URI such as s3a://...).")],
    input: Annotated[str | None, typer.Option("--input", help="Flat records: .csv, .parquet or a Parquet folder (one column per record field), or nested records (.json list); with --engine spark, Parquet (a path or a URI). Any field error refuses the whole file.")] = None,
    raw: Annotated[Path | None, typer.Option("--raw", help="A raw export folder (patients, procedures, imaging, events). Records whose rows break the contract are reported and left out; the rest are scored.")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Add each outcome's base value and per-feature SHAP contributions (log-odds).")] = False,
    engine: Annotated[str, typer.Option("--engine", help="pandas (this process) or spark (mapInPandas, same scorer; Parquet in, Parquet folder out).")] = "pandas",
    master: Annotated[str | None, typer.Option("--master", help="Spark master for --engine spark (default local[*]; under spark-submit, the one it sets).")] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Records scored per vectorised call (per Arrow batch on Spark).", min=1)] = 50_000,
) -> None:
    """Score procedure records with the champion models, without HTTP (vectorised, in chunks)."""
    if engine not in ("pandas", "spark"):
        raise typer.BadParameter("use pandas or spark", param_hint="--engine")
    if (input is None) == (raw is None):
        raise typer.BadParameter("give either --input FILE or --raw DIR", param_hint="--input/--raw")
    source = raw if input is None else (input if engine == "spark" and "://" in input else Path(input))
    if isinstance(source, Path) and not source.exists():  # a URI is for Spark to open
        raise typer.BadParameter(f"{source} does not exist", param_hint="--input" if input is not None else "--raw")
    if engine == "pandas" and Path(output).suffix not in (".csv", ".parquet"):
        raise typer.BadParameter("write .csv or .parquet", param_hint="--output")
    if engine == "spark" and isinstance(source, Path) and input is not None and not (source.is_dir() or source.suffix == ".parquet"):
        raise typer.BadParameter("--engine spark reads Parquet (a file or a folder)", param_hint="--input")
    records = _raw_records(raw) if raw is not None else None
    try:
        check_tracking(configure_tracking())
        models = load_from_registry()
    except (TrackingUnavailable, ModelsUnavailable) as exc:
        _fail(str(exc))
    try:
        if engine == "spark":
            summary = _predict_on_spark(models, source if input is not None else None, records, output, explain,
                                        chunk_size, master)
        else:
            summary = score_file(models, source, Path(output), explain=explain, chunk_size=chunk_size, console=console,
                                 records=records)
    except BatchInputError as exc:
        for line in exc.lines():
            console.print(line, markup=False, highlight=False)
        _fail(f"{source}: nothing was written")
    console.print(f"[green]wrote[/green] {output}: {summary}")


def _raw_records(raw: Path):
    """Flat records of a raw export's sound procedures; the others reported by table, row and column."""
    try:
        scorable = scorable_records(read_raw(raw))
    except RawDataError as exc:
        console.print(str(exc), markup=False, highlight=False)
        _fail(f"{raw}: the export cannot be scored as a whole; nothing was written")
    if scorable.violations:
        console.print(f"{len(scorable.violations)} violation(s) in {raw}:", markup=False, highlight=False)
        for line in scorable.report_lines():
            console.print(line, markup=False, highlight=False)
    return scorable.records


def _predict_on_spark(models, input: str | Path | None, records, output: str, explain: bool, chunk_size: int,
                      master: str | None) -> str:
    from pyspark.sql import SparkSession

    from serving.batch.spark_engine import read_parquet_records, records_frame_on_spark, score_on_spark, spark_session

    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started this driver
    # A session this command did not start (spark-submit's, a notebook's) is left running.
    ours = SparkSession.getActiveSession() is None and not under_submit
    spark = spark_session(master or (None if under_submit else "local[*]"))
    try:
        frame, n = read_parquet_records(spark, input) if records is None else records_frame_on_spark(spark, records)
        return score_on_spark(spark, models, frame, n, output, explain=explain, chunk_size=chunk_size)
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
