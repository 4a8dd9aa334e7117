"""FHIR test helpers: a simulated export, its FHIR form, and record comparison."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from features.fhir.docs import example_bundle
from features.fhir.export import export_resources, procedure_bundles
from features.fhir.parse import parse_bundle, parse_resources
from features.io import read_raw, write_raw
from features.raw_records import scorable_records
from features.validate import validate_raw
from features.records import RECORD_FIELDS, inspect_records, records_frame
from features.simulator import simulate


def simulated_export(tmp: Path, profile: str, n: int, seed: int) -> Path:
    """A simulated raw export written as CSV (as a hospital's would be), returns its folder."""
    tables, _ = simulate(profile, n, seed)
    folder = tmp / f"{profile}-{n}-{seed}"
    write_raw(tables, folder, "csv")
    return folder


def typed(records: pd.DataFrame) -> dict[str, np.ndarray]:
    """Flat records read as their contract types (the checker's reading)."""
    return inspect_records(records.reset_index(drop=True)).typed


def mismatches(expected: pd.DataFrame, got: pd.DataFrame) -> dict[str, int]:
    """Fields whose typed values differ (missing equals missing), with the count of records."""
    a, b = typed(expected), typed(got)
    out = {}
    for f in RECORD_FIELDS:
        x, y = a[f.flat_name], b[f.flat_name]
        same = np.array([_missing(xx) and _missing(yy) or (not _missing(xx) and not _missing(yy) and xx == yy)
                         for xx, yy in zip(x, y)], dtype=bool)
        if not same.all():
            out[f.flat_name] = int((~same).sum())
    return out


def _missing(value) -> bool:
    return value is None or bool(pd.isna(value))


def records_in_order(records: list[dict], ids) -> pd.DataFrame:
    """Parsed records as a flat frame in the order of ``ids`` (procedure ids)."""
    frame = records_frame(records)
    return frame.set_index(frame["procedure_id"].astype(str)).loc[[str(i) for i in ids]].reset_index(drop=True)


def example() -> dict:
    """A fresh copy of the documented example Bundle."""
    return copy.deepcopy(example_bundle())


def entry(bundle: dict, predicate) -> dict:
    """The first entry's resource matching ``predicate``."""
    return next(e["resource"] for e in bundle["entry"] if predicate(e["resource"]))


def round_trip(folder: Path, bundles: int = 0) -> None:
    """Assert raw export -> FHIR -> records equals raw export -> records (Bulk, and ``bundles``
    procedures as one Bundle each; the first 20 Bundles also checked with the FHIR models)."""
    raw = read_raw(folder)
    expected = scorable_records(raw).records
    resources = list(export_resources(validate_raw(read_raw(folder))))
    parsed = parse_resources(resources, one_patient=False, now=dt.datetime.now(dt.timezone.utc))
    assert parsed.errors == []
    assert mismatches(expected, records_in_order(parsed.records, expected["procedure_id"])) == {}
    # One Bundle per procedure gives that procedure's record too.
    by_patient: dict[str, list[dict]] = {}
    for r in resources:
        key = r["id"] if r["resourceType"] == "Patient" else r["subject"]["reference"].split("/", 1)[1]
        by_patient.setdefault(key, []).append(r)
    checked = 0
    for patient in by_patient.values():
        for procedure_id, bundle in procedure_bundles(patient):
            if checked >= bundles:
                return
            one = parse_bundle(bundle, validate=checked < 20)
            assert one.errors == [], one.errors[:3]
            mine = [r for r in one.records if r["procedure"]["procedure_id"] == procedure_id]
            want = expected[expected["procedure_id"].astype(str) == procedure_id]
            assert mismatches(want, records_in_order(mine, want["procedure_id"])) == {}
            checked += 1


__all__ = ["simulated_export", "typed", "mismatches", "records_in_order", "example", "entry", "read_raw", "round_trip"]
