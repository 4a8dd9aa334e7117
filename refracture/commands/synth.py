"""``refracture synth``: simulate a cohort and write it as a raw export plus its truth.

The export is validated against the raw contract *before* anything is written, so a
simulator bug can never leave an invalid export on disk. Beside the tables go:

- ``truth.parquet``: per procedure, the true crude (absolute) risk of each outcome by 3,
  6, 12 and 24 months with death as a competing risk (``p_<outcome>_<m>m``), the true
  probability of death by 24 months (``p_death_24m``), and ``p_<outcome>`` (deprecated
  alias of ``p_<outcome>_24m``);
- ``simulation.json``: the provenance training reads (``training.pipeline.read_profile``):
  profile name, seed, n, whether effects were drawn (and with which seed), horizons;
- ``export.yaml``: the export's site metadata, as a hospital writes it: the data cut and
  how far deaths and fractures were ascertained (``features.ascertainment``; from the
  profile's ``followup.recording``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import date, datetime
from pathlib import Path

import typer
from rich.console import Console

from features.ascertainment import EXPORT_METADATA_FILE, metadata_text
from features.io import tmp_file_beside, write_frame_atomic, write_raw, write_text_atomic
from features.simulator import load_profile, simulate
from features.simulator.export import export_metadata
from features.simulator.outcomes import TRUTH_HORIZONS_MONTHS
from features.validate import validate_raw

logger = logging.getLogger(__name__)


class DataCutError(ValueError):
    """The data cut asked for is before anyone could have been treated."""


def simulation_metadata(profile_name: str, seed: int, n: int, draw_effects: bool, effects_seed: int | None,
                        horizons_months: list[int], data_cut: date | None = None) -> dict:
    """The provenance record written to ``simulation.json`` (``data_cut`` only when the
    export was drawn on another date than the profile's)."""
    return {
        "profile": profile_name,
        "seed": seed,
        "n": n,
        "draw_effects": draw_effects,
        "effects_seed": effects_seed,
        "truth_horizons_months": horizons_months,
        "estimand": "crude cumulative incidence, death as a competing risk",
        **({"data_cut": data_cut.isoformat()} if data_cut else {}),
    }


def _write_json_atomic(data: dict, path: Path) -> None:
    tmp = tmp_file_beside(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_synth(n: int, seed: int, profile: str, out: Path, fmt: str = "csv", draw_effects: bool = False,
              data_cut: date | None = None) -> None:
    """Simulate ``n`` treated levels from ``profile`` (a shipped name or a YAML path) with
    ``seed``, validate, and write ``<table>.<fmt>``, ``truth.parquet``,
    ``simulation.json`` and ``export.yaml`` to ``out``. ``draw_effects``: draw every odds ratio with a
    published CI from that CI first (seeded by ``seed``: the same seed gives the same world).
    ``data_cut``: draw the export on that date (``features.simulator.simulate``).

    Raises ``features.validate.RawDataError`` (and writes nothing) if the simulated export
    breaks the contract. Prints a one-line summary.
    """


    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unsupported format {fmt!r}: use csv or parquet")
    started = time.perf_counter()
    spec = load_profile(profile)
    effects_seed = seed if draw_effects else None
    if data_cut is not None and data_cut <= spec.followup.enrolment_start:
        raise DataCutError(f"{data_cut} is not after the profile's enrolment start {spec.followup.enrolment_start}")
    tables, truth = simulate(spec, n_procedures=n, seed=seed, effects_seed=effects_seed, data_cut=data_cut)
    validate_raw(tables)  # raises RawDataError listing every violation; nothing written yet
    out = Path(out)
    write_raw(tables, out, fmt)
    write_frame_atomic(truth, out / "truth.parquet")
    write_text_atomic(metadata_text(export_metadata(spec, data_cut)), out / EXPORT_METADATA_FILE)
    _write_json_atomic(simulation_metadata(spec.name, seed, n, draw_effects, effects_seed, list(TRUTH_HORIZONS_MONTHS),
                                           data_cut),
                       out / "simulation.json")
    elapsed = time.perf_counter() - started
    logger.debug("synth: profile=%s n=%d seed=%d draw_effects=%s out=%s", spec.name, n, seed, draw_effects, out)
    risk = ", ".join(f"{o.split('_')[0]} {truth[f'p_{o}_24m'].mean():.1%}"
                     for o in ("cemented_refracture", "adjacent_fracture", "remote_fracture"))
    Console(soft_wrap=True).print(
        f"[green]synth[/green] {spec.name}{' (effects drawn)' if draw_effects else ''}: "
        f"{len(tables['patients']):,} patients, {len(tables['procedures']):,} levels, {len(tables['events']):,} new fractures "
        f"(true 24-month absolute risk: {risk}; death {truth['p_death_24m'].mean():.1%}) "
        f"-> {out} \\[{fmt}, seed {seed}, {elapsed:.1f} s]"
    )


def synth(*, out: Path, n: int, seed: int, profile: str, fmt: str, draw_effects: bool, data_cut: datetime | None) -> None:
    """``refracture synth`` (options and help: ``refracture.options.data.synth``)."""
    try:
        run_synth(n=n, seed=seed, profile=profile, out=out, fmt=fmt, draw_effects=draw_effects,
                  data_cut=data_cut.date() if data_cut else None)
    except DataCutError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data-cut") from None
