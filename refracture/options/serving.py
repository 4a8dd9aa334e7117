"""Options of the serving commands: serve, predict, bento (work: ``refracture.commands.serving``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refracture.options.data import EXCLUDE_HELP


def serve(
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=1, max=65535)] = 3000,
    host: Annotated[str, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes the service beyond this machine.")] = "127.0.0.1",
    insecure_dev: Annotated[bool, typer.Option("--insecure-dev", help="Run without an API key (local development only).")] = False,
    workers: Annotated[int, typer.Option("--workers", help="Server processes (each loads the models).", min=1, max=64)] = 1,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate chain (PEM); with --tls-key.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="The certificate's private key (PEM).")] = None,
) -> None:
    """Serve the champion models over HTTP or HTTPS (BentoML). Needs a way for callers to
    authenticate (REFRACTURE_API_KEY, REFRACTURE_CLIENTS_FILE or REFRACTURE_OIDC_ISSUER) unless --insecure-dev."""
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key", param_hint="--tls-cert/--tls-key")
    for option, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not path.is_file():
            raise typer.BadParameter(f"{path} is not a file", param_hint=option)


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
    source = source_of(input, raw, engine, fhir_ndjson)
    if isinstance(source, Path) and not source.exists():  # a URI is for Spark to open
        raise typer.BadParameter(f"{source} does not exist", param_hint="--input" if input is not None else "--raw")
    if engine == "pandas" and Path(output).suffix not in (".csv", ".parquet"):
        raise typer.BadParameter("write .csv or .parquet", param_hint="--output")
    if engine == "spark" and isinstance(source, Path) and input is not None and not (source.is_dir() or source.suffix == ".parquet"):
        raise typer.BadParameter("--engine spark reads Parquet (a file or a folder)", param_hint="--input")
    if exclude_invalid and raw is None:
        raise typer.BadParameter("--exclude-invalid leaves out broken procedures of a raw export: give --raw DIR "
                                 "(a records file with a field error is refused whole)", param_hint="--exclude-invalid")
    targets = ((output, "--output"), (risk_assessments_target(output, fhir_ndjson, risk_assessments), "--risk-assessments"))
    for target, hint in targets:  # a URI output is checked by Spark, before it writes
        if target is not None and "://" not in str(target) and Path(target).exists() and not overwrite:
            raise typer.BadParameter(f"{target} exists: give --overwrite to replace it", param_hint=hint)


def risk_assessments_target(output: str, fhir_ndjson: Path | None, risk_assessments: Path | None) -> Path | None:
    """Where ``predict --fhir-ndjson`` writes its RiskAssessment NDJSON (None without --fhir-ndjson)."""
    if fhir_ndjson is None:
        return None
    return risk_assessments or Path(output).parent / "RiskAssessment.ndjson"


def source_of(input: str | None, raw: Path | None, engine: str, fhir_ndjson: Path | None = None) -> str | Path:
    """What ``predict`` reads: the raw export or FHIR Bulk folder, the input file, or a URI for Spark to open."""
    return (fhir_ndjson or raw) if input is None else (input if engine == "spark" and "://" in input else Path(input))


def bento(
    build: Annotated[bool, typer.Option("--build/--no-build", help="Run `bentoml build` after exporting the models.")] = True,
) -> None:
    """Pin the champion versions into the BentoML model store and build a Bento that runs without the registry."""
