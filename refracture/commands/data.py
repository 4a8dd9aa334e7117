"""Data commands: synth, validate, features, records, dictionary."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from features.assemble import build_training_set
from features.catalog import FEATURE_SETS
from features.dictionary import data_dictionary_markdown
from features.io import read_raw, write_frame_atomic, write_records
from features.raw_records import scorable_records
from features.validate import RawDataError, validate_raw
from refracture.commands.synth import DataCutError, run_synth

console = Console(stderr=True)


def _report_violations(exc) -> None:
    table = Table(title=f"{len(exc.violations)} violation(s)", show_lines=False)
    for col in ("table", "row key", "column", "problem"):
        table.add_column(col, overflow="fold")
    for v in exc.violations:
        table.add_row(v.table, v.row, v.column, v.message)
    console.print(table)


def _load_valid(raw: Path):
    """Read and validate a raw export, or print every violation and exit 1."""
    try:
        return validate_raw(read_raw(raw))
    except RawDataError as exc:
        _report_violations(exc)
        raise typer.Exit(code=1) from None


def validate(
    raw: Annotated[Path, typer.Option("--raw", help="Folder with patients, procedures, imaging, events (.csv or .parquet).")],
) -> None:
    """Check a raw export against the data contract; list every violation by table, row and column."""
    tables = _load_valid(raw)
    counts = ", ".join(f"{name} {len(df)}" for name, df in tables.items())
    console.print(f"[green]valid[/green]: {counts} rows")


def features(
    raw: Annotated[Path, typer.Option("--raw", help="Raw export folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output Parquet file (one row per procedure_id).")],
    feature_set: Annotated[str, typer.Option("--feature-set", help="preop or postop.")] = "postop",
    horizon_months: Annotated[float, typer.Option("--horizon-months", help="Label horizon in months.", min=1, max=120)] = 24.0,
) -> None:
    """Build a training set: the feature set's features plus outcome labels, keyed by procedure_id."""
    if feature_set not in FEATURE_SETS:
        raise typer.BadParameter(f"choose one of {', '.join(FEATURE_SETS)}", param_hint="--feature-set")
    if out.suffix != ".parquet":
        raise typer.BadParameter("the training set is written as Parquet: use a .parquet file name", param_hint="--out")
    tables = _load_valid(raw)
    training_set = build_training_set(tables, feature_set, horizon_months=horizon_months)
    write_frame_atomic(training_set.reset_index(), out)
    console.print(f"[green]wrote[/green] {out}: {len(training_set)} procedures, feature set {feature_set}, "
                  f"horizon {horizon_months:g} months")


def scorable_or_exit(raw: Path):
    """Flat records of a raw export's sound procedures, the others reported by table, row
    and column as ``refracture validate`` prints them (``features.raw_records``); exit 1
    when the export as a whole cannot be used (a table or column missing, a file unreadable).
    The one report of ``records`` and ``predict --raw``."""
    try:
        scorable = scorable_records(read_raw(raw))
    except RawDataError as exc:
        console.print(str(exc), markup=False, highlight=False)
        console.print(f"[red]error[/red]: {raw}: the export cannot be used as a whole; nothing was written")
        raise typer.Exit(code=1) from None
    if scorable.violations:
        console.print(f"{len(scorable.violations)} violation(s) in {raw}:", markup=False, highlight=False)
        for line in scorable.report_lines():
            console.print(line, markup=False, highlight=False)
    return scorable


def records(
    raw: Annotated[Path, typer.Option("--raw", help="Raw export folder (patients, procedures, imaging, events).")],
    out: Annotated[Path, typer.Option("--out", help="A .parquet or .csv file, or a folder (any other name) of Parquet parts, "
                                                    "as `refracture predict --input` and both engines read them.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
) -> None:
    """Write a raw export's procedures as flat records (one row per procedure, one column per
    record field, in its contract type; dates as calendar dates), for `refracture predict
    --input` on either engine and for the API's record shape. Procedures whose rows break
    the contract are reported, as by `predict --raw`, and left out."""
    if out.suffix not in (".parquet", ".csv", "") and not out.is_dir():
        raise typer.BadParameter("write a .parquet or .csv file, or a folder (a name without a suffix)", param_hint="--out")
    if out.exists() and not overwrite:
        raise typer.BadParameter(f"{out} exists: give --overwrite to replace it", param_hint="--out")
    scorable = scorable_or_exit(raw)
    written = write_records(scorable.records, out, overwrite=overwrite)
    where = f"{len(written)} Parquet part(s) in {out}" if out.suffix == "" else str(out)
    console.print(f"[green]wrote[/green] {where}: {len(scorable.records)} of {scorable.n_procedures} procedure records")


def dictionary(
    out: Annotated[Path, typer.Option("--out", help="Markdown file to write.")] = Path("docs/data-dictionary.md"),
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if the file differs from the schema instead of writing it.")] = False,
) -> None:
    """Generate the data dictionary from the schema (never edit it by hand)."""
    text = data_dictionary_markdown()
    if check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            console.print(f"[red]{out} is out of date[/red]: run `refracture dictionary --out {out}`")
            raise typer.Exit(code=1)
        console.print(f"{out} is up to date")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    console.print(f"[green]wrote[/green] {out}")


def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the raw export and truth.parquet to.")],
    n: Annotated[int, typer.Option("--n", help="Number of procedures (treated levels).", min=10, max=5_000_000)] = 5000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same bytes.")] = 0,
    profile: Annotated[str, typer.Option("--profile", help="Site profile: xiong2021-pvp, yassavoly2025-pkp, site-c-older-frail-pkp, or a YAML path.")] = "xiong2021-pvp",
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    draw_effects: Annotated[bool, typer.Option("--draw-effects", help="Draw each published effect from its 95 % CI (seeded by --seed).")] = False,
    data_cut: Annotated[datetime | None, typer.Option(
        "--data-cut", formats=["%Y-%m-%d"],
        help="Draw the export on this date (YYYY-MM-DD) instead of the profile's cut: the same patients and outcomes "
             "as with this seed at any cut, the procedures done before it, follow-up to it (a later export of the "
             "same site).")] = None,
) -> None:
    """Simulate a cohort calibrated to published evidence, written as a raw export plus true risks."""
    if fmt not in ("csv", "parquet"):
        raise typer.BadParameter("choose csv or parquet", param_hint="--format")
    try:
        run_synth(n=n, seed=seed, profile=profile, out=out, fmt=fmt, draw_effects=draw_effects,
                  data_cut=data_cut.date() if data_cut else None)
    except DataCutError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data-cut") from None
