"""Exports that record deaths as registries do, trained and checked against the truth:
shared by ``tests/training/test_registry_deaths.py`` and ``bench/bench_registry_deaths.py``.

An export of the frail site D profile (``site-d-frail-registry-pkp``: deaths linked from a
registry, nearly all after the last clinic visit; fractures ascertained until death or
the data cut) is written with an ``export.yaml`` (what the profile states, or another
reading to measure what it costs), every target is trained through the stages
``refracture train`` runs (``training.data``, ``training.fitting``, ``training.selection``;
MLflow left out), and the selected models score a fresh cohort of the same profile whose
true risks are known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from features.ascertainment import EXPORT_METADATA_FILE, ExportMetadata, metadata_text
from features.assemble import build_training_set
from features.catalog import feature_names
from features.io import write_frame_atomic, write_raw, write_text_atomic
from features.labels import TARGETS
from features.simulator import Profile, load_profile, simulate
from features.simulator.export import export_metadata
from features.validate import validate_raw
from training.config import TrainConfig
from training.data import outcome_data, prepare
from training.fitting import fit_candidate
from training.progress import NullProgress
from training.selection import select

PROFILE = "site-d-frail-registry-pkp"
#: How the same export can be read: as its export.yaml states it; with no export.yaml (the
#: default); and with an export.yaml saying deaths and fractures were ascertained until the
#: last contact (a clinic without registry linkage would state it).
READINGS = ("stated", "no_file", "last_contact")


def reading_metadata(profile, reading: str) -> ExportMetadata | None:
    """The ``export.yaml`` written for ``reading`` (None: no file)."""
    if reading == "stated":
        return export_metadata(profile)
    if reading == "no_file":
        return None
    if reading == "last_contact":
        return ExportMetadata(site=profile.name, data_cut=profile.followup.data_cut,
                              deaths_ascertained_until="last_contact", fractures_ascertained_until="last_contact")
    raise ValueError(f"unknown reading {reading!r}; choose from {READINGS}")


def write_export(folder: Path, n: int, seed: int, reading: str = "stated", profile_name=PROFILE) -> Path:
    """Simulate ``n`` procedures and write them as a raw export with ``truth.parquet`` and the
    ``export.yaml`` of ``reading`` (``profile_name``: a shipped name or a loaded profile)."""
    profile = profile_name if isinstance(profile_name, Profile) else load_profile(profile_name)
    tables, truth = simulate(profile, n_procedures=n, seed=seed)
    write_raw(tables, folder)
    write_frame_atomic(truth, folder / "truth.parquet")
    meta = reading_metadata(profile, reading)
    if meta is not None:
        write_text_atomic(metadata_text(meta), folder / EXPORT_METADATA_FILE)
    return folder


def train_targets(folder: Path, targets=TARGETS, **cfg_kwargs) -> dict:
    """The selected model of every target trained on the export in ``folder``."""
    cfg = TrainConfig(raw_dir=folder, outcomes=tuple(targets), register=False, **cfg_kwargs)
    prep = prepare(cfg)
    models = {}
    for target in targets:
        data = outcome_data(prep, target, cfg)
        results = {m: fit_candidate(m, cfg, data, None, {}, NullProgress()) for m in cfg.candidates}
        chosen, _ = select(results)
        models[target] = results[chosen].model
    return models


def mean_risk_against_truth(models: dict, n: int, seed: int, profile_name=PROFILE,
                            months: float = 24.0) -> dict[str, tuple[float, float]]:
    """{target: (mean predicted risk, mean true risk)} by ``months`` on a fresh cohort."""
    profile = profile_name if isinstance(profile_name, Profile) else load_profile(profile_name)
    tables, truth = simulate(profile, n_procedures=n, seed=seed)
    ts = build_training_set(validate_raw(tables), "postop")
    truth = truth.set_index("procedure_id").reindex(ts.index)
    out = {}
    for target, model in models.items():
        p = model.curve_from_features(ts[feature_names(model.feature_set)])[f"p_{months:g}m"].to_numpy()
        out[target] = (float(p.mean()), float(np.mean(truth[f"p_{target}_{months:g}m"].to_numpy(dtype="float64"))))
    return out
