"""Data commands: validate, features, records, dictionary (options and help: ``refracture.options.data``); synth is in
``refracture.commands.synth`` (the simulator is imported only for it)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from features.ascertainment import Ascertainment, checked, followup_notes
from features.assemble import build_training_set
from features.dictionary import data_dictionary_markdown
from features.exclusion import CheckedExport, ExclusionReport, checked_export, exclusion_report
from features.io import read_export_metadata, read_raw, write_bytes_atomic, write_frame_atomic, write_records
from features.raw_records import ScorableRecords, scorable_records
from features.validate import RawCheck, RawDataError, Violation, capped, check_raw, rule_text

console = Console(stderr=True)

#: The commands that take ``--exclude-invalid``, as a stopped command names them.
_CONTINUE = "train, site-report, recalibrate, features, records and predict --raw take --exclude-invalid"


def _violation_table(violations: list[Violation], title: str, style: str) -> Table:
    table = Table(title=title, title_style=style, show_lines=False)
    for col in ("table", "row key", "column", "problem"):
        table.add_column(col, overflow="fold")
    for v in violations:
        table.add_row(v.table, v.row, v.column, v.message)
    return table


def _report_violations(exc: RawDataError) -> None:
    """Print a refused export's errors (and its warnings, apart)."""
    console.print(_violation_table(exc.violations, f"{len(exc.violations)} violation(s)", "bold red"))
    if exc.warnings:
        console.print(_violation_table(exc.warnings, f"{len(exc.warnings)} warning(s)", "yellow"))


def _rule_counts(violations: list[Violation]) -> str:
    counts: dict[str, int] = {}
    for v in violations:
        counts[v.rule] = counts.get(v.rule, 0) + 1
    return ", ".join(f"{rule_text(rule)} {n}" for rule, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def report_check(check: RawCheck, report: ExclusionReport) -> None:
    """Print a checked export: its errors, then its warnings, each in a table (at most 20
    rows per rule and column, then a count), then what the errors mean for the work."""
    errors, warnings = check.errors, check.warnings
    if errors:
        console.print(_violation_table(capped(errors), f"{len(errors)} error(s): values that cannot be used", "bold red"))
    if warnings:
        console.print(_violation_table(capped(warnings), f"{len(warnings)} warning(s): implausible values, used as they "
                                       "are", "yellow"))
    if check.structural:
        console.print("[red]the export cannot be used as a whole[/red] (a table or column is missing or empty): fix it "
                      "and run again")
    elif errors:
        console.print(f"[red]{len(errors)} error(s)[/red] in {len(report.excluded)} of {report.n_procedures} procedures: "
                      f"fix those rows, or leave those procedures out ({_CONTINUE}).")


def _check(raw: Path) -> tuple[RawCheck, ExclusionReport]:
    """Read and check a raw export; an unreadable file or folder is printed and exits 1."""
    try:
        check = check_raw(read_raw(raw))
    except RawDataError as exc:
        _report_violations(exc)
        raise typer.Exit(code=1) from None
    return check, exclusion_report(check)


def load_checked(raw: Path, exclude_invalid: bool = False) -> CheckedExport:
    """Read and check a raw export under the command's policy: on errors (without
    ``--exclude-invalid``, or errors no row owns) print exactly what `refracture validate`
    prints and exit 1, nothing written; else say what was left out and what is questioned."""
    check, report = _check(raw)
    if check.errors and (not exclude_invalid or check.structural):
        report_check(check, report)
        raise typer.Exit(code=1)
    checked = checked_export(check, exclude_invalid)
    if checked.report.excluded:
        console.print(f"[yellow]excluded[/yellow] {len(checked.report.excluded)} of {checked.report.n_procedures} "
                      f"procedures for {len(checked.report.errors)} error(s) ({_rule_counts(checked.report.errors)})")
    if checked.report.warnings:
        console.print(f"[yellow]{len(checked.report.warnings)} warning(s)[/yellow], values used as they are "
                      f"({_rule_counts(checked.report.warnings)}); `refracture validate` lists them")
    return checked


def report_path(output: Path) -> Path:
    """Where the exclusion report of an output file goes: beside it, ``<name>.exclusions.csv``."""
    output = Path(output)
    stem = output.stem if output.suffix in (".csv", ".parquet") else output.name
    return output.with_name(f"{stem}.exclusions.csv")


def write_exclusion_report(report: ExclusionReport, path: Path) -> Path:
    """Write the report's CSV (the bytes its fingerprint is of) and say so."""
    write_bytes_atomic(report.csv_bytes(), path)
    announce_report(report, path)
    return path


def announce_report(report: ExclusionReport, path: Path | str) -> None:
    """Say where the exclusion report is, what it holds and its fingerprint."""
    console.print(f"exclusion report {path}: {len(report.excluded)} procedures excluded, {len(report.warnings)} "
                  f"warning(s), sha256 {report.fingerprint}")


def load_ascertainment(raw: Path, tables) -> Ascertainment:
    """The export's ``export.yaml`` checked against its validated tables (the default when
    it has none), its notes printed; or print every problem and exit 1."""
    try:
        asc = checked(read_export_metadata(raw), tables)
    except RawDataError as exc:
        _report_violations(exc)
        raise typer.Exit(code=1) from None
    console.print(f"follow-up: {asc.describe()}")
    for note in followup_notes(asc, tables):
        console.print(f"[yellow]note[/yellow]: {note}")
    return asc


def validate(*, raw: Path, report: Path | None) -> None:
    """``refracture validate``: print the export's errors and warnings; exit 1 only on errors;
    then check its export.yaml against the tables and print the follow-up it states."""
    check, full = _check(raw)
    report_check(check, full)
    if report is not None:
        write_exclusion_report(full, report)
    if check.errors:
        raise typer.Exit(code=1)
    load_ascertainment(raw, check.tables())
    counts = ", ".join(f"{name} {len(df)}" for name, df in check.tables().items())
    note = f"; {len(check.warnings)} warning(s)" if check.warnings else ""
    console.print(f"[green]valid[/green]: {counts} rows{note}")


def features(*, raw: Path, out: Path, feature_set: str, horizon_months: float, exclude_invalid: bool) -> None:
    """``refracture features``: write the training set of an export to ``out`` (Parquet), its
    exclusion report beside it when rows were left out or questioned."""
    checked = load_checked(raw, exclude_invalid)
    training_set = build_training_set(checked.tables, feature_set, horizon_months=horizon_months,
                                      ascertainment=load_ascertainment(raw, checked.tables))
    metadata = None
    if exclude_invalid or checked.report.violations:
        path = write_exclusion_report(checked.report, report_path(out))
        metadata = {f"refracture.{k}": v for k, v in checked.report.summary().items()}
        metadata["refracture.exclusion_report"] = path.name
    write_frame_atomic(training_set.reset_index(), out, metadata=metadata)
    console.print(f"[green]wrote[/green] {out}: {len(training_set)} procedures, feature set {feature_set}, "
                  f"horizon {horizon_months:g} months")


def scorable_or_exit(raw: Path, exclude_invalid: bool = False) -> ScorableRecords:
    """A raw export's records for scoring (``features.raw_records``): every violation reported
    by table, row and column as ``refracture validate`` prints them; the procedures whose
    rows hold errors left out with ``exclude_invalid``, else nothing is written (exit 1), as
    also when the export as a whole cannot be used (a table or column missing, a file
    unreadable). The one report of ``records`` and ``predict --raw``."""
    try:
        scorable = scorable_records(read_raw(raw))
    except RawDataError as exc:
        console.print(str(exc), markup=False, highlight=False)
        console.print(f"[red]error[/red]: {raw}: the export cannot be scored as a whole; nothing was written")
        raise typer.Exit(code=1) from None
    if scorable.violations:
        console.print(f"{len(scorable.violations)} violation(s) in {raw}:", markup=False, highlight=False)
        for line in scorable.report_lines()[:-1]:
            console.print(line, markup=False, highlight=False)
    if scorable.excluded and not exclude_invalid:
        console.print(f"[red]error[/red]: {len(scorable.excluded)} of {scorable.n_procedures} procedure records hold "
                      "errors: fix those rows, or run again with --exclude-invalid to score the others (an exclusion "
                      "report lists them); nothing was written")
        raise typer.Exit(code=1)
    if scorable.violations:
        console.print(scorable.report_lines()[-1], markup=False, highlight=False)
    return scorable


def records(*, raw: Path, out: Path, exclude_invalid: bool, overwrite: bool) -> None:
    """``refracture records``: the export's sound procedures as flat records in ``out`` (options and
    the refusal of an existing ``out``: ``refracture.options.data.records``)."""
    scorable = scorable_or_exit(raw, exclude_invalid)
    written = write_records(scorable.records, out, overwrite=overwrite)
    where = f"{len(written)} Parquet part(s) in {out}" if out.suffix == "" else str(out)
    console.print(f"[green]wrote[/green] {where}: {len(scorable.records)} of {scorable.n_procedures} procedure records")
    if exclude_invalid or scorable.violations:
        write_exclusion_report(scorable.report, report_path(out))


def dictionary(*, out: Path, check: bool) -> None:
    """``refracture dictionary``: write the data dictionary to ``out``, or with ``check`` exit 1 if it is stale."""
    write_generated(data_dictionary_markdown(), out, check, "refracture dictionary")


def write_generated(text: str, out: Path, check: bool, command: str) -> None:
    """Write a generated document, or with ``check`` exit 1 when ``out`` differs from ``text``
    (naming the ``command`` that regenerates it)."""
    if check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            console.print(f"[red]{out} is out of date[/red]: run `{command} --out {out}`")
            raise typer.Exit(code=1)
        console.print(f"{out} is up to date")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    console.print(f"[green]wrote[/green] {out}")
