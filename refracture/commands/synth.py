"""``refracture synth``: simulate a cohort and write it as a raw export plus its truth.

The export is validated against the raw contract *before* anything is written, so a
simulator bug can never leave an invalid export on disk. The truth (each treated level's
true probability of each outcome within the profile's horizon) goes to ``truth.parquet``
beside the tables.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def run_synth(n: int, seed: int, profile: str, out: Path, fmt: str = "csv") -> None:
    """Simulate ``n`` treated levels from ``profile`` (a shipped name or a YAML path) with
    ``seed``, validate, and write ``<table>.<fmt>`` files and ``truth.parquet`` to ``out``.

    Raises ``features.validate.RawDataError`` (and writes nothing) if the simulated export
    breaks the contract. Prints a one-line summary.
    """
    from rich.console import Console

    from features.simulator import load_profile, simulate
    from features.validate import validate_raw
    from features.io import write_frame_atomic, write_raw

    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unsupported format {fmt!r}: use csv or parquet")
    started = time.perf_counter()
    spec = load_profile(profile)
    tables, truth = simulate(spec, n_procedures=n, seed=seed)
    validate_raw(tables)  # raises RawDataError listing every violation; nothing written yet
    out = Path(out)
    write_raw(tables, out, fmt)
    write_frame_atomic(truth, out / "truth.parquet")
    elapsed = time.perf_counter() - started
    logger.info("synth: profile=%s n=%d seed=%d out=%s", spec.name, n, seed, out)
    Console(soft_wrap=True).print(
        f"[green]synth[/green] {spec.name}: {len(tables['patients']):,} patients, "
        f"{len(tables['procedures']):,} levels, {len(tables['events']):,} new fractures "
        f"(true {spec.horizon_months}-month risk: cemented {truth['p_cemented_refracture'].mean():.1%}, "
        f"adjacent {truth['p_adjacent_fracture'].mean():.1%}, remote {truth['p_remote_fracture'].mean():.1%}) "
        f"-> {out} [{fmt}, seed {seed}, {elapsed:.1f} s]"
    )
