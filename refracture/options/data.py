"""Options of the data commands: synth, validate, features, records, dictionary (work: ``refracture.commands.data``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

#: ``refracture features --feature-set`` (``features.catalog.FEATURE_SETS``; a test keeps them equal).
FEATURE_SET_NAMES = ("preop", "postop")
#: ``refracture synth --format``.
SYNTH_FORMATS = ("csv", "parquet")
#: The ``--exclude-invalid`` option of every command that uses an export (one wording).
EXCLUDE_HELP = ("Leave out the procedures that hold errors (and only those: a patient's error excludes all their "
                "procedures, an imaging row's its procedure) instead of stopping; an exclusion report (table, row key, "
                "column, rule, severity) lists them. Warnings never stop work.")


def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the raw export, its export.yaml and truth.parquet to.")],
    n: Annotated[int, typer.Option("--n", help="Number of procedures (treated levels).", min=10, max=5_000_000)] = 5000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same bytes.")] = 0,
    profile: Annotated[str, typer.Option("--profile", help="Site profile: xiong2021-pvp, yassavoly2025-pkp, site-c-older-frail-pkp, site-d-frail-registry-pkp, or a YAML path.")] = "xiong2021-pvp",
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    draw_effects: Annotated[bool, typer.Option("--draw-effects", help="Draw each published effect from its 95 % CI (seeded by --seed).")] = False,
    data_cut: Annotated[datetime | None, typer.Option(
        "--data-cut", formats=["%Y-%m-%d"],
        help="Draw the export on this date (YYYY-MM-DD) instead of the profile's cut: the same patients and outcomes "
             "as with this seed at any cut, the procedures done before it, follow-up to it (a later export of the "
             "same site; export.yaml states it).")] = None,
) -> None:
    """Simulate a cohort calibrated to published evidence, written as a raw export plus true risks."""
    if fmt not in SYNTH_FORMATS:
        raise typer.BadParameter("choose csv or parquet", param_hint="--format")


def validate(
    raw: Annotated[Path, typer.Option("--raw", help="Folder with patients, procedures, imaging, events (.csv or .parquet), "
                                      "and optionally export.yaml (how far deaths and fractures were ascertained).")],
    report: Annotated[Path | None, typer.Option("--report", help="Also write every error and warning (uncapped) to this CSV: "
                                                "table, row key, column, rule, severity, message, excluded procedures.")] = None,
) -> None:
    """Check a raw export against the data contract: errors (values that cannot be used) and
    warnings (implausible values, used) by table, row and column; exit 1 only on errors.

    Then its export.yaml against the tables: a bad field, or a date after its data cut, is an error too."""


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
    if feature_set not in FEATURE_SET_NAMES:
        raise typer.BadParameter(f"choose one of {', '.join(FEATURE_SET_NAMES)}", param_hint="--feature-set")
    if out.suffix != ".parquet":
        raise typer.BadParameter("the training set is written as Parquet: use a .parquet file name", param_hint="--out")


def records(
    raw: Annotated[Path, typer.Option("--raw", help="Raw export folder (patients, procedures, imaging, events).")],
    out: Annotated[Path, typer.Option("--out", help="A .parquet or .csv file, or a folder (any other name) of Parquet parts, "
                                                    "as `refracture predict --input` and both engines read them.")],
    exclude_invalid: Annotated[bool, typer.Option("--exclude-invalid", help=EXCLUDE_HELP + " The report is written "
                                                  "beside --out (<name>.exclusions.csv).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
) -> None:
    """Write a raw export's procedures as flat records (one row per procedure, one column per field of the API's
    record, in its contract type; dates as calendar dates), for `refracture predict --input` on either engine.

    The export is checked as for `predict --raw`, with the same report and the same --exclude-invalid."""
    if out.suffix not in (".parquet", ".csv", "") and not out.is_dir():
        raise typer.BadParameter("write a .parquet or .csv file, or a folder (a name without a suffix)", param_hint="--out")
    if out.exists() and not overwrite:
        raise typer.BadParameter(f"{out} exists: give --overwrite to replace it", param_hint="--out")


def dictionary(
    out: Annotated[Path, typer.Option("--out", help="Markdown file to write.")] = Path("docs/data-dictionary.md"),
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if the file differs from the schema instead of writing it.")] = False,
) -> None:
    """Generate the data dictionary from the schema (never edit it by hand)."""
