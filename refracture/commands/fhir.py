"""FHIR commands: fhir-export (a raw export as FHIR Bulk Data NDJSON and Bundles) and
fhir-docs (docs/fhir.md from the mapping)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from features.fhir.bulk import BulkInputError, read_bulk_ndjson
from features.fhir.docs import fhir_markdown
from features.fhir.export import BUNDLE_DIR, RESOURCE_TYPES, export_resources, procedure_bundles
from features.fhir.parse import record_frame
from features.io import read_raw, tmp_dir_beside, write_frame_atomic
from features.validate import RawDataError, validate_raw
from refracture.commands.data import _report_violations

console = Console(stderr=True)


def fhir_export(
    raw: Annotated[Path, typer.Option("--raw", help="Raw export folder (patients, procedures, imaging, events).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write <ResourceType>.ndjson and bundles/<procedure_id>.json to.")],
    bundles: Annotated[bool, typer.Option("--bundles/--no-bundles", help="Also write one Bundle per procedure.")] = True,
) -> None:
    """Write a raw export as FHIR R4: a Bulk Data export (one NDJSON file per resource type)
    and one Bundle per procedure (the mapping of docs/fhir.md, in reverse)."""
    try:
        tables = validate_raw(read_raw(raw))
    except RawDataError as exc:
        _report_violations(exc)
        raise typer.Exit(code=1) from None
    tmp = tmp_dir_beside(out)
    try:
        counts = write_fhir(tables, tmp, bundles)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    summary = ", ".join(f"{t} {n}" for t, n in counts.items() if n)
    console.print(f"[green]wrote[/green] {out}: {summary}" + (f"; {BUNDLE_DIR}/ one Bundle per procedure" if bundles else ""))


def write_fhir(tables, folder: Path, bundles: bool = True) -> dict[str, int]:
    """Write the export's resources under ``folder``; returns resources per type."""
    files = {t: (folder / f"{t}.ndjson").open("wb") for t in RESOURCE_TYPES}
    counts = dict.fromkeys(RESOURCE_TYPES, 0)
    if bundles:
        (folder / BUNDLE_DIR).mkdir()
    try:
        patient: list[dict] = []
        for resource in [*export_resources(tables), None]:
            if resource is None or resource["resourceType"] == "Patient":
                if bundles and patient:
                    for procedure_id, bundle in procedure_bundles(patient):
                        (folder / BUNDLE_DIR / f"{_safe(procedure_id)}.json").write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
                patient = []
            if resource is None:
                break
            patient.append(resource)
            files[resource["resourceType"]].write(orjson.dumps(resource) + b"\n")
            counts[resource["resourceType"]] += 1
    finally:
        for fh in files.values():
            fh.close()
    for t, n in counts.items():
        if not n:
            (folder / f"{t}.ndjson").unlink()
    return counts


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:120]


def fhir_docs(
    out: Annotated[Path, typer.Option("--out", help="Markdown file to write.")] = Path("docs/fhir.md"),
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if the file differs from the mapping instead of writing it.")] = False,
) -> None:
    """Generate docs/fhir.md from the FHIR mapping (never edit it by hand)."""
    text = fhir_markdown()
    if check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            console.print(f"[red]{out} is out of date[/red]: run `refracture fhir-docs --out {out}`")
            raise typer.Exit(code=1)
        console.print(f"{out} is up to date")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    console.print(f"[green]wrote[/green] {out}")


def fhir_records(
    ndjson: Annotated[Path, typer.Option("--ndjson", help="FHIR Bulk Data export folder (<ResourceType>.ndjson files).")],
    out: Annotated[Path, typer.Option("--out", help="Flat records file to write (.parquet or .csv), for `refracture predict --input`.")],
    validate: Annotated[bool, typer.Option("--validate-models", help="Also check every resource against the FHIR R4 models (slow).")] = False,
) -> None:
    """Read a FHIR Bulk Data export with the mapping: every refused resource by file, line and
    element, and the accepted procedures written as flat records."""
    try:
        parsed = read_bulk_ndjson(ndjson, validate=validate)
    except BulkInputError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=1) from None
    for problem in parsed.problems[:200]:
        console.print(f"  - {problem}", markup=False)
    if len(parsed.problems) > 200:
        console.print(f"  ... and {len(parsed.problems) - 200} more")
    frame = record_frame(parsed)
    write_frame_atomic(frame, out)
    console.print(f"[green]wrote[/green] {out}: {len(frame)} of {len(parsed.records)} procedure records accepted "
                  f"({len(parsed.refused)} refused)")
