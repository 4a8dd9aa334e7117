"""Batch scoring of record files, without HTTP (``refracture predict``).

Same models, same checks, same scorer as the service: a file is read as flat records,
checked with ``features.records.inspect_records`` and scored chunk by chunk (one
vectorised call per outcome per chunk, ``check_and_score``: the Spark engine,
``serving.batch.spark_engine``, runs the same function on its Arrow batches), with a progress bar
on large files. As in the API, any field error refuses the whole file, listing the errors;
nothing is written; warnings (implausible but possible values) never refuse. An empty file
gives an empty output with every column. (A raw export, ``refracture predict --raw
--exclude-invalid``, is different: ``features.raw_records`` leaves out the broken records
and the rest are scored.)

Output, one row per input record, in input order: ``procedure_id``, ``horizon_months``
(the headline horizon), and per outcome ``<outcome>_probability`` (risk by the headline
horizon), one ``<outcome>_p_<m>m`` column per horizon of the risk curve (cumulative
incidence, death competing), ``<outcome>_risk_band`` and ``<outcome>_model_version``; with
``--explain`` also ``<outcome>_base_value`` and one ``<outcome>__<feature>`` column per
feature contribution (log-odds at the headline horizon). When a death model is served:
``death_p_24m`` (probability of death from any cause by 24 months, the API's
``context.death``) and ``death_model_version``; never explained.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from features.io import write_frame_atomic
from features.labels import DEATH_TARGET
from features.records import RECORD_FIELDS, inspect_records, records_frame
from modelstore.estimand import horizon_column
from modelstore.risk_bands import bands_of
from serving.config import DEFAULT_RISK_BANDS
from serving.scoring.served_models import CONTEXT_HORIZON_MONTHS, LoadedModel, ServedModels, use_threads

FLAT_NAMES = [f.flat_name for f in RECORD_FIELDS]
MAX_LISTED_ERRORS = 50


class BatchInputError(ValueError):
    """The input file cannot be scored; ``errors`` lists why (record = 0-based row)."""

    def __init__(self, errors: list[dict[str, Any]], n_records: int | None = None):
        self.errors = errors
        self.n_records = n_records
        super().__init__(f"{len(errors)} error(s) in the input")

    def lines(self) -> list[str]:
        out = [f"{len(self.errors)} error(s)" + (f" in {self.n_records} records" if self.n_records else "") + ":"]
        for e in self.errors[:MAX_LISTED_ERRORS]:
            where = f"record {e['record']}" if e.get("record") is not None else "file"
            allowed = f" (allowed: {e['allowed']})" if e.get("allowed") else ""
            out.append(f"  - {where} {e.get('field') or ''}: {e['error']}{allowed}")
        if len(self.errors) > MAX_LISTED_ERRORS:
            out.append(f"  ... and {len(self.errors) - MAX_LISTED_ERRORS} more")
        return out


def read_records(path: Path) -> pd.DataFrame:
    """Flat records from .csv/.parquet (columns = flat field names) or .json (nested records).

    Unknown columns are refused, as unknown fields are by the API; missing optional
    columns are missing values (required ones are then reported by the checks).
    """
    suffix = path.suffix.lower()
    try:
        if path.is_dir():  # a partitioned Parquet folder (read as one dataset, files in path order)
            flat = pd.read_parquet(path)
        elif suffix == ".csv":
            flat = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        elif suffix == ".parquet":
            flat = pd.read_parquet(path)
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            data = [data] if isinstance(data, dict) else data
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise BatchInputError([{"record": None, "field": "", "error": "expected a JSON list of nested procedure records", "allowed": ""}])
            unknown = sorted({f"{k}" for r in data for k in r if k not in ("patient", "procedure", "imaging")})
            if unknown:
                raise BatchInputError([{"record": None, "field": k, "error": "unknown field", "allowed": ""} for k in unknown])
            flat = records_frame(data)
        else:
            raise BatchInputError([{"record": None, "field": "", "error": f"unsupported file type {suffix!r}", "allowed": ".csv, .parquet, .json"}])
    except (ValueError, OSError) as exc:
        if isinstance(exc, BatchInputError):
            raise
        raise BatchInputError([{"record": None, "field": "", "error": f"cannot read {path.name}: {exc}"[:300], "allowed": ""}]) from None
    unknown = [c for c in flat.columns if c not in FLAT_NAMES]
    if unknown:
        raise BatchInputError([{"record": None, "field": c, "error": "unknown column (not a record field)", "allowed": ""} for c in unknown])
    # An empty file gives an empty output (``output_template``), as on Spark: a monthly
    # job whose export happens to be empty should not fail.
    return flat.reindex(columns=FLAT_NAMES).reset_index(drop=True)


def score_frame(models: list[LoadedModel], flat: pd.DataFrame, explain: bool = False,
                risk_bands: dict[str, tuple[float, float]] | None = None,
                typed: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Score checked flat records: one vectorised call per outcome (features computed once
    per feature set, by the model artifact). Returns the output columns described above;
    ``models`` may hold the death model (its columns come after the outcomes')."""
    bands = risk_bands or DEFAULT_RISK_BANDS
    scorer = ServedModels(models, risk_bands=bands)
    flat = flat.reset_index(drop=True)
    feats = scorer.features(flat, typed)
    out = pd.DataFrame({"procedure_id": flat["procedure_id"].astype(str).to_numpy()})
    out["horizon_months"] = float(scorer.models[0].model.horizon_months)
    for m in scorer.models:
        X = feats[m.outcome]
        expl = m.model.explain_features(X) if explain else None
        # With ``--explain`` the contributions add up to the log-odds of the curve's headline
        # column within 1e-5 (``modelstore.explain``); the curve reuses the score the
        # explainer computed for that check rather than routing the rows through the trees again.
        score = expl.score if expl is not None and expl.score is not None else m.model.score_from_features(X)
        curve = m.model.curve_from_score(score, X.index)
        p = curve[horizon_column(m.model.horizon_months)].to_numpy()
        out[f"{m.outcome}_probability"] = p
        for col in curve.columns:
            out[f"{m.outcome}_{col}"] = curve[col].to_numpy()
        out[f"{m.outcome}_risk_band"] = bands_of(p, bands[m.outcome])
        out[f"{m.outcome}_model_version"] = m.version
        if expl is not None:
            out[f"{m.outcome}_base_value"] = expl.base_value
            contrib = pd.DataFrame(expl.values, columns=[f"{m.outcome}__{n}" for n in expl.feature_names])
            out = pd.concat([out, contrib], axis=1)
    death = scorer.death_probability(feats)
    if death is not None:
        out[f"{DEATH_TARGET}_{horizon_column(CONTEXT_HORIZON_MONTHS)}"] = death
        out[f"{DEATH_TARGET}_model_version"] = scorer.death.version
    return out


def check_and_score(models: list[LoadedModel], chunk: pd.DataFrame, explain: bool = False
                    ) -> tuple[pd.DataFrame | None, list[dict[str, Any]]]:
    """The step both engines run on every chunk (``--engine pandas``) or Arrow batch
    (``--engine spark``): check flat records against the contract and, if all pass, score
    them. Returns (output frame, []) or (None, errors with 0-based positions in ``chunk``)."""
    chunk = chunk.reset_index(drop=True)
    inspected = inspect_records(chunk)
    if inspected.errors:
        return None, inspected.errors
    return score_frame(models, chunk, explain=explain, typed=inspected.typed), []


def output_template(models: list[LoadedModel], explain: bool = False) -> pd.DataFrame:
    """The output's columns and dtypes as a zero-row frame: what ``check_and_score``
    returns for the documented example record, so it follows the scorer's columns
    whatever they become (empty inputs, the Spark schema)."""
    from serving.scoring.examples import example_record

    scored, errors = check_and_score(models, records_frame([example_record()]), explain=explain)
    if errors:  # the example is valid by construction; a failure here is a bug, not bad input
        raise RuntimeError(f"the example record fails the contract: {errors}")
    return scored.iloc[0:0]


def batch_workers() -> int:
    """Chunks ``score_file`` scores at once: one per core, each on one XGBoost thread.
    XGBoost (TreeSHAP, leaf lookup) releases the GIL, and the feature work between its
    calls is single-threaded Python, so two chunks in flight keep both cores busy where one
    chunk with two XGBoost threads leaves one idle between calls. Measured in
    ``bench/bench_explain_batch.py`` (bench/README.md, issue 14 part 3): 2 x 1 was at least as
    fast as 1 x 2 with and without ``--explain``."""
    return max(1, os.cpu_count() or 1)


def score_file(models: list[LoadedModel], input_path: Path, output_path: Path, explain: bool = False,
               chunk_size: int = 50_000, console=None, records: pd.DataFrame | None = None,
               workers: int | None = None, on_scored=None) -> str:
    """Read, check and score ``input_path`` (or the flat ``records`` given instead, e.g.
    from a raw export); write ``output_path`` atomically. ``workers``: chunks scored
    concurrently (threads; default ``batch_workers``), each with ``cores // workers``
    XGBoost threads. ``on_scored(flat, output)``: called once the output is written (the
    prediction log). Returns a summary."""
    start = time.perf_counter()
    workers = batch_workers() if workers is None else max(1, int(workers))
    use_threads(models, max(1, (os.cpu_count() or 1) // workers))
    flat = read_records(Path(input_path)) if records is None else records.reset_index(drop=True)
    n = len(flat)
    chunks = [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]
    if workers > 1 and chunks:
        # Enough chunks to share between the workers (a file of one chunk is split too).
        step = max(1, min(chunk_size, -(-n // (workers * 2))))
        chunks = [(a, min(a + step, n)) for a in range(0, n, step)]
    errors: list[dict[str, Any]] = []
    parts: list[pd.DataFrame] = []
    show = console is not None and n > chunk_size
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not show, transient=True) as progress, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        task = progress.add_task("checking and scoring records", total=n)
        # ``map`` submits every chunk (views of ``flat``) and yields results in input order.
        results = pool.map(lambda ab: check_and_score(models, flat.iloc[ab[0]:ab[1]], explain=explain), chunks)
        for (a, b), (scored, chunk_errors) in zip(chunks, results):
            errors.extend({**e, "record": e["record"] + a} for e in chunk_errors)
            if not errors:
                parts.append(scored)
            progress.advance(task, b - a)
    if errors:
        raise BatchInputError(errors, n)
    result = pd.concat(parts, ignore_index=True) if parts else output_template(models, explain)
    write_frame_atomic(result, output_path)
    if on_scored is not None:
        on_scored(flat, result)
    seconds = time.perf_counter() - start
    versions = ", ".join(f"{m.outcome} v{m.version}" for m in models)
    return f"{n} records in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f} records/s); models {versions}"
