"""Data commands: validate, features, dictionary (options and help: ``refracture.options.data``); synth is in
``refracture.commands.synth`` (the simulator is imported only for it)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from features.assemble import build_training_set
from features.dictionary import data_dictionary_markdown
from features.io import read_raw, write_frame_atomic
from features.validate import RawDataError, validate_raw

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


def validate(*, raw: Path) -> None:
    """``refracture validate``: print the export's row counts, or every violation and exit 1."""
    tables = _load_valid(raw)
    counts = ", ".join(f"{name} {len(df)}" for name, df in tables.items())
    console.print(f"[green]valid[/green]: {counts} rows")


def features(*, raw: Path, out: Path, feature_set: str, horizon_months: float) -> None:
    """``refracture features``: write the training set of a valid export to ``out`` (Parquet)."""
    tables = _load_valid(raw)
    training_set = build_training_set(tables, feature_set, horizon_months=horizon_months)
    write_frame_atomic(training_set.reset_index(), out)
    console.print(f"[green]wrote[/green] {out}: {len(training_set)} procedures, feature set {feature_set}, "
                  f"horizon {horizon_months:g} months")


def dictionary(*, out: Path, check: bool) -> None:
    """``refracture dictionary``: write the data dictionary to ``out``, or with ``check`` exit 1 if it is stale."""
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
