"""Options of the data commands: synth, validate, features, dictionary (work: ``refracture.commands.data``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

#: ``refracture features --feature-set`` (``features.catalog.FEATURE_SETS``; a test keeps them equal).
FEATURE_SET_NAMES = ("preop", "postop")
#: ``refracture synth --format``.
SYNTH_FORMATS = ("csv", "parquet")


def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the raw export and truth.parquet to.")],
    n: Annotated[int, typer.Option("--n", help="Number of procedures (treated levels).", min=10, max=5_000_000)] = 5000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same bytes.")] = 0,
    profile: Annotated[str, typer.Option("--profile", help="Site profile: xiong2021-pvp, yassavoly2025-pkp, site-c-older-frail-pkp, or a YAML path.")] = "xiong2021-pvp",
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    draw_effects: Annotated[bool, typer.Option("--draw-effects", help="Draw each published effect from its 95 % CI (seeded by --seed).")] = False,
) -> None:
    """Simulate a cohort calibrated to published evidence, written as a raw export plus true risks."""
    if fmt not in SYNTH_FORMATS:
        raise typer.BadParameter("choose csv or parquet", param_hint="--format")


def validate(
    raw: Annotated[Path, typer.Option("--raw", help="Folder with patients, procedures, imaging, events (.csv or .parquet).")],
) -> None:
    """Check a raw export against the data contract; list every violation by table, row and column."""


def features(
    raw: Annotated[Path, typer.Option("--raw", help="Raw export folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output Parquet file (one row per procedure_id).")],
    feature_set: Annotated[str, typer.Option("--feature-set", help="preop or postop.")] = "postop",
    horizon_months: Annotated[float, typer.Option("--horizon-months", help="Label horizon in months.", min=1, max=120)] = 24.0,
) -> None:
    """Build a training set: the feature set's features plus outcome labels, keyed by procedure_id."""
    if feature_set not in FEATURE_SET_NAMES:
        raise typer.BadParameter(f"choose one of {', '.join(FEATURE_SET_NAMES)}", param_hint="--feature-set")
    if out.suffix != ".parquet":
        raise typer.BadParameter("the training set is written as Parquet: use a .parquet file name", param_hint="--out")


def dictionary(
    out: Annotated[Path, typer.Option("--out", help="Markdown file to write.")] = Path("docs/data-dictionary.md"),
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if the file differs from the schema instead of writing it.")] = False,
) -> None:
    """Generate the data dictionary from the schema (never edit it by hand)."""
