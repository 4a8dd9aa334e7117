"""Serving commands: serve (HTTP), predict (batch files, no HTTP), bento (build a Bento)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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
    from serving.config import ENV_INSECURE_DEV, ENV_MODEL_VERSIONS, ConfigError, ServingSettings
    from serving.loading import ModelsUnavailable, resolve_pins
    from training.tracking import TrackingUnavailable, check_tracking, configure_tracking

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
    raise typer.Exit(code=_run_forwarding_signals(cmd, env))


def _run_forwarding_signals(cmd: list[str], env: dict[str, str]) -> int:
    """Run the BentoML server and pass SIGTERM/SIGHUP on to it: a supervisor (systemd,
    scripts/tracking-stack.sh, a test) that stops `refracture serve` must not leave the
    server and its workers running. Ctrl-C reaches both through the terminal."""
    import signal

    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, _frame):
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    interrupted = False
    try:
        while True:
            try:
                code = proc.wait()
                return 0 if interrupted else code
            except KeyboardInterrupt:
                interrupted = True  # the server got the same Ctrl-C: wait for it to shut down
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def predict(
    input: Annotated[Path, typer.Option("--input", help="Flat records (.csv, .parquet: one column per record field) or nested records (.json list).")],
    output: Annotated[Path, typer.Option("--output", help="Output file (.csv or .parquet).")],
    explain: Annotated[bool, typer.Option("--explain", help="Add each outcome's base value and per-feature SHAP contributions (log-odds).")] = False,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Records scored per vectorised call.", min=1)] = 50_000,
) -> None:
    """Score a file of procedure records with the champion models, without HTTP (vectorised, in chunks)."""
    from serving.batch import BatchInputError, score_file
    from serving.loading import ModelsUnavailable, load_from_registry
    from training.tracking import TrackingUnavailable, check_tracking, configure_tracking

    if output.suffix not in (".csv", ".parquet"):
        raise typer.BadParameter("write .csv or .parquet", param_hint="--output")
    if not input.exists():
        raise typer.BadParameter(f"{input} does not exist", param_hint="--input")
    try:
        check_tracking(configure_tracking())
        models = load_from_registry()
    except (TrackingUnavailable, ModelsUnavailable) as exc:
        _fail(str(exc))
    try:
        summary = score_file(models, input, output, explain=explain, chunk_size=chunk_size, console=console)
    except BatchInputError as exc:
        for line in exc.lines():
            console.print(line)
        _fail(f"{input}: nothing was written")
    console.print(f"[green]wrote[/green] {output}: {summary}")


def bento(
    build: Annotated[bool, typer.Option("--build/--no-build", help="Run `bentoml build` after exporting the models.")] = True,
) -> None:
    """Pin the champion versions into the BentoML model store and build a Bento that runs without the registry."""
    from serving.loading import ModelsUnavailable, export_to_bentoml, resolve_pins
    from training.tracking import TrackingUnavailable, check_tracking, configure_tracking

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
