"""FHIR commands: fhir-export (a raw export as FHIR Bulk Data NDJSON and Bundles) and
fhir-docs (docs/fhir.md from the mapping)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import typer
from rich.console import Console

from features.fhir.bulk import BulkInputError, read_bulk_ndjson
from features.fhir.docs import fhir_markdown
from features.fhir.export import BUNDLE_DIR, RESOURCE_TYPES, export_resources, procedure_bundles
from features.fhir.parse import record_frame
from features.io import read_raw, tmp_dir_beside, write_frame_atomic
from features.validate import RawDataError, validate_raw
from refracture.commands.data import _report_violations, write_generated

console = Console(stderr=True)


def fhir_export(*, raw: Path, out: Path, bundles: bool) -> None:
    """``refracture fhir-export``: the export's resources as NDJSON (and Bundles) into ``out``, replaced whole."""
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


def fhir_docs(*, out: Path, check: bool) -> None:
    """``refracture fhir-docs``: write docs/fhir.md from the mapping, or with ``check`` exit 1 if it is stale."""
    write_generated(fhir_markdown(), out, check, "refracture fhir-docs")


def fhir_records(*, ndjson: Path, out: Path, validate: bool) -> None:
    """``refracture fhir-records``: the accepted procedures of a Bulk export as flat records in ``out``."""
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
