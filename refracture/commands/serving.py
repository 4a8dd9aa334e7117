"""Serving commands: serve (HTTP), predict (batch files, no HTTP), bento (build a Bento); options and
help: ``refracture.options.serving``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console

from features.io import read_raw
from features.raw_records import scorable_records
from features.validate import RawDataError
from modelstore.errors import ConfigError
from modelstore.tracking import TrackingUnavailable, check_tracking, configure_tracking
from refracture.options.serving import source_of
from serving.batch.pandas_engine import BatchInputError, score_file
from serving.config import ENV_INSECURE_DEV, ENV_MODEL_VERSIONS, ServingSettings
from serving.scoring.loading import ModelsUnavailable, export_to_bentoml, load_from_registry, resolve_pins

console = Console(stderr=True)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVICE_IMPORT = "serving.service:RefractureRisk"


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error[/red]: {message}")
    raise typer.Exit(code=code)


def serve(*, port: int, host: str, insecure_dev: bool, workers: int) -> None:
    """``refracture serve``: resolve the champion versions once, then become the BentoML server (exec)."""
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


def predict(*, output: str, input: str | None, raw: Path | None, explain: bool, engine: str,
            master: str | None, chunk_size: int) -> None:
    """``refracture predict``: score ``input`` (or ``raw``) with the champions into ``output``."""
    source = source_of(input, raw, engine)
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
