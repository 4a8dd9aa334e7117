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
from features.exclusion import CheckedExport, ExclusionReport, checked_export, exclusion_report
from features.io import read_raw, write_bytes_atomic, write_frame_atomic, write_records
from features.raw_records import ScorableRecords, scorable_records
from features.validate import RawCheck, RawDataError, Violation, capped, check_raw, rule_text
from refracture.commands.synth import DataCutError, run_synth

console = Console(stderr=True)

#: The ``--exclude-invalid`` option of every command that uses an export (one wording).
EXCLUDE_HELP = ("Leave out the procedures that hold errors (and only those: a patient's error excludes all their "
                "procedures, an imaging row's its procedure) instead of stopping; an exclusion report (table, row key, "
                "column, rule, severity) lists them. Warnings never stop work.")
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


def validate(
    raw: Annotated[Path, typer.Option("--raw", help="Folder with patients, procedures, imaging, events (.csv or .parquet).")],
    report: Annotated[Path | None, typer.Option("--report", help="Also write every error and warning (uncapped) to this CSV: "
                                                "table, row key, column, rule, severity, message, excluded procedures.")] = None,
) -> None:
    """Check a raw export against the data contract: errors (values that cannot be used) and
    warnings (implausible values, used) by table, row and column; exit 1 only on errors."""
    check, full = _check(raw)
    report_check(check, full)
    if report is not None:
        write_exclusion_report(full, report)
    if check.errors:
        raise typer.Exit(code=1)
    counts = ", ".join(f"{name} {len(df)}" for name, df in check.tables().items())
    note = f"; {len(check.warnings)} warning(s)" if check.warnings else ""
    console.print(f"[green]valid[/green]: {counts} rows{note}")


def features(
    raw: Annotated[Path, typer.Option("--raw", help="Raw export folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output Parquet file (one row per procedure_id).")],
    feature_set: Annotated[str, typer.Option("--feature-set", help="preop or postop.")] = "postop",
    horizon_months: Annotated[float, typer.Option("--horizon-months", help="Label horizon in months.", min=1, max=120)] = 24.0,
    exclude_invalid: Annotated[bool, typer.Option("--exclude-invalid", help=EXCLUDE_HELP + " The report is written "
                                                  "beside --out (<name>.exclusions.csv); its count and SHA-256 are "
                                                  "stored in the Parquet file's metadata.")] = False,
) -> None:
    """Build a training set: the feature set's features plus outcome labels, keyed by procedure_id."""
    if feature_set not in FEATURE_SETS:
        raise typer.BadParameter(f"choose one of {', '.join(FEATURE_SETS)}", param_hint="--feature-set")
    if out.suffix != ".parquet":
        raise typer.BadParameter("the training set is written as Parquet: use a .parquet file name", param_hint="--out")
    checked = load_checked(raw, exclude_invalid)
    training_set = build_training_set(checked.tables, feature_set, horizon_months=horizon_months)
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


def records(
    raw: Annotated[Path, typer.Option("--raw", help="Raw export folder (patients, procedures, imaging, events).")],
    out: Annotated[Path, typer.Option("--out", help="A .parquet or .csv file, or a folder (any other name) of Parquet parts, "
                                                    "as `refracture predict --input` and both engines read them.")],
    exclude_invalid: Annotated[bool, typer.Option("--exclude-invalid", help=EXCLUDE_HELP + " The report is written "
                                                  "beside --out (<name>.exclusions.csv).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
) -> None:
    """Write a raw export's procedures as flat records (one row per procedure, one column per
    field of the API's record, in its contract type; dates as calendar dates), for
    `refracture predict --input` on either engine. The export is checked as for
    `predict --raw`, with the same report and the same --exclude-invalid."""
    if out.suffix not in (".parquet", ".csv", "") and not out.is_dir():
        raise typer.BadParameter("write a .parquet or .csv file, or a folder (a name without a suffix)", param_hint="--out")
    if out.exists() and not overwrite:
        raise typer.BadParameter(f"{out} exists: give --overwrite to replace it", param_hint="--out")
    scorable = scorable_or_exit(raw, exclude_invalid)
    written = write_records(scorable.records, out, overwrite=overwrite)
    where = f"{len(written)} Parquet part(s) in {out}" if out.suffix == "" else str(out)
    console.print(f"[green]wrote[/green] {where}: {len(scorable.records)} of {scorable.n_procedures} procedure records")
    if exclude_invalid or scorable.violations:
        write_exclusion_report(scorable.report, report_path(out))


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
