"""Options of the FHIR commands: fhir-export, fhir-records, fhir-docs (work: ``refracture.commands.fhir``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def fhir_export(
    raw: Annotated[Path, typer.Option("--raw", help="Raw export folder (patients, procedures, imaging, events).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write <ResourceType>.ndjson and bundles/<procedure_id>.json to.")],
    bundles: Annotated[bool, typer.Option("--bundles/--no-bundles", help="Also write one Bundle per procedure.")] = True,
) -> None:
    """Write a raw export as FHIR R4: a Bulk Data export (one NDJSON file per resource type)
    and one Bundle per procedure (the mapping of docs/fhir.md, in reverse)."""


def fhir_records(
    ndjson: Annotated[Path, typer.Option("--ndjson", help="FHIR Bulk Data export folder (<ResourceType>.ndjson files).")],
    out: Annotated[Path, typer.Option("--out", help="Flat records file to write (.parquet or .csv), for `refracture predict --input`.")],
    validate: Annotated[bool, typer.Option("--validate-models", help="Also check every resource against the FHIR R4 models (slow).")] = False,
) -> None:
    """Read a FHIR Bulk Data export with the mapping: every refused resource by file, line and
    element, and the accepted procedures written as flat records."""


def fhir_docs(
    out: Annotated[Path, typer.Option("--out", help="Markdown file to write.")] = Path("docs/fhir.md"),
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if the file differs from the mapping instead of writing it.")] = False,
) -> None:
    """Generate docs/fhir.md from the FHIR mapping (never edit it by hand)."""
