"""The fast paths of a request batch give what the plain paths give, value for value.

The service reads, checks and featurises dozens of records per call, so those steps avoid
pandas' per-call costs (one block of cells, one screen before the per-field checks, one
float block of features). These tests hold them to the plain definitions they replace:
the frame-per-group assembly, ``coerce_array`` and ``column_problems`` on every field,
and pandas' column selection; on simulated exports with blanks and on cells of every
wrong shape.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features.assemble import GROUP_FUNCTIONS, compute_all_features, features_from_records, features_from_wide, \
    select_features
from features.catalog import FEATURES, feature_names
from features.coerce import coerce_array, coerce_numbers
from features.contract import column_problems, plausibility_problems, without
from features.records import RECORD_FIELDS, RECORD_FIELDS_BY_FLAT, inspect_records, json_record, records_to_wide, \
    tables_to_records
from features.simulator import load_profile, simulate
from features.validate import validate_raw
from features.wide import procedure_frame

#: Cells a client or a file may put in any field: every reading and every refusal.
ODD_CELLS = ["abc", "12,5", True, False, "true", "False", 1e300, 10**400, 0.5, 2, -3, 1e9, "  7 ", "1_000", "",
             "2021-02-30", "1899-12-31", "2300-01-01", "2021-01-01T10:00:00", "20210101", "x" * 250, 3.0, None,
             float("nan"), float("inf"), "T13", " L1 ", "F", "m", 2**60 + 1]


@pytest.fixture(scope="module")
def export():
    """A simulated export (typed tables) and its flat records with 5 % of cells blanked."""
    tables, _ = simulate(load_profile("site-c-older-frail-pkp"), n_procedures=600, seed=8)
    typed = validate_raw(tables)
    flat = tables_to_records(typed)
    rng = np.random.default_rng(8)
    for f in RECORD_FIELDS:
        if f.flat_name == "procedure_id":
            continue
        blank = rng.random(len(flat)) < 0.05
        column = flat[f.flat_name].copy()
        column[blank] = None if column.dtype == object else pd.NaT if column.dtype.kind == "M" else np.nan
        flat[f.flat_name] = column
    return typed, flat


def _json_frame(flat: pd.DataFrame) -> pd.DataFrame:
    """Records as the service holds them: one object column per field, JSON values."""
    from serving.http.validation import parse_body, rows_frame

    parsed = [parse_body(json.dumps(json_record(row)).encode(), 10) for row in flat.to_dict("records")]
    return rows_frame([row for p in parsed for row in p.rows])


def test_features_equal_the_frame_per_group_assembly(export):
    """One float block in catalogue order: exactly the groups' frames joined, reordered and
    cast, with the same column labels and index."""
    typed, _ = export
    wide = procedure_frame(typed)
    expected = pd.concat([fn(wide) for fn in GROUP_FUNCTIONS], axis=1)[[f.name for f in FEATURES]].astype("float64")
    assert expected.isna().any().sum() > 10  # blanks reach many features
    for got in (features_from_wide(wide), compute_all_features(typed)):
        pd.testing.assert_frame_equal(got, expected, check_exact=True, check_column_type=True, check_index_type=True)
        assert got.columns.dtype == expected.columns.dtype and got.index.name == "procedure_id"


@pytest.mark.parametrize("feature_set", ["preop", "postop"])
def test_record_features_equal_the_wide_frame_path(export, feature_set):
    """Features straight from the records' typed columns equal those of the wide frame
    built from them, with blanks, read by ``inspect_records`` or not."""
    _, flat = export
    inspected = inspect_records(flat)
    expected = features_from_wide(records_to_wide(flat))[feature_names(feature_set)]
    for typed in (None, inspected.typed):
        pd.testing.assert_frame_equal(features_from_records(flat, feature_set, typed), expected, check_exact=True,
                                      check_column_type=True, check_index_type=True)


def test_each_record_alone_gets_its_row_of_the_batch(export):
    """Through the service's path (JSON cells, ``inspect_records``' typed values)."""
    _, flat = export
    batch = _json_frame(flat.head(60))
    inspected = inspect_records(batch)
    ok = sorted(set(range(len(batch))) - {e["record"] for e in inspected.errors})
    assert len(ok) >= 20
    together = features_from_records(batch, "postop", inspected.typed)
    for i in ok:
        one = batch.iloc[[i]].reset_index(drop=True)
        alone = features_from_records(one, "postop", inspect_records(one).typed)
        pd.testing.assert_frame_equal(alone, together.iloc[[i]], check_exact=True)


def _field_by_field(flat: pd.DataFrame):
    """``inspect_records`` without its shortcuts: every field read by ``coerce_array`` and
    checked by ``column_problems``, then the rules between fields (their errors; warnings
    are listed apart)."""
    errors, warnings, typed, acceptable = [], [], {}, {}
    for f in RECORD_FIELDS:
        raw = flat[f.flat_name].to_numpy(dtype=object) if (flat.dtypes == object).all() else flat[f.flat_name]
        values, bad = coerce_array(raw, f.spec.kind)
        typed[f.flat_name] = values
        problems = column_problems(raw, values, bad, f.spec, f.required)
        errors += [(p.position, f.path, p.message) for p in problems]
        acceptable[f.flat_name] = without(values, {p.position for p in problems}) if problems else values
    for p in plausibility_problems(acceptable, len(flat)):
        (errors if p.severity == "error" else warnings).append((p.position, RECORD_FIELDS_BY_FLAT[p.field].path, p.message))
    return sorted(errors, key=lambda e: e[0]), sorted(warnings, key=lambda w: w[0]), typed


def _assert_same_reading(flat: pd.DataFrame) -> int:
    inspected = inspect_records(flat)
    expected_errors, expected_warnings, expected_typed = _field_by_field(flat)
    assert [(e["record"], e["field"], e["error"]) for e in inspected.errors] == expected_errors
    assert [(w["record"], w["field"], w["warning"]) for w in inspected.warnings] == expected_warnings
    assert list(inspected.typed) == list(expected_typed)
    for name, values in expected_typed.items():
        got = inspected.typed[name]
        assert got.dtype == values.dtype, name
        if values.dtype == object:
            assert got.tolist() == values.tolist(), name
        else:
            np.testing.assert_array_equal(got, values, err_msg=name)
    return len(expected_errors)


@pytest.mark.parametrize("size", [1, 3, 8, 40])
def test_inspect_records_equals_the_field_by_field_reading(export, size):
    """Same errors (order, fields, words) and typed values on JSON cells of every wrong
    shape in any field, a few per record, for batches of the sizes the service sees."""
    _, flat = export
    rng = np.random.default_rng(size)
    batch = _json_frame(flat.head(size))
    for r in range(size):
        for c in rng.integers(batch.shape[1], size=3):
            batch.iat[r, int(c)] = ODD_CELLS[int(rng.integers(len(ODD_CELLS)))]
    assert _assert_same_reading(batch) >= size
    assert _assert_same_reading(_json_frame(flat.head(size))) == len(inspect_records(flat.head(size)).errors)


def test_inspect_records_equals_the_field_by_field_reading_of_typed_and_text_frames(export):
    """Frames from files: typed (Parquet) and text (CSV) columns, with blanks."""
    _, flat = export
    head = flat.head(300)
    assert _assert_same_reading(head) > 0
    assert _assert_same_reading(head.astype(str).where(head.notna(), None)) > 0


def test_coerce_numbers_equals_coerce_array_per_column():
    """Block reading of JSON numbers, and the fallback for any other column."""
    rng = np.random.default_rng(3)
    plain = [1, 2.5, None, -4, 0, 1.0, 2**53 + 2, 1e300]
    columns, kinds = [], []
    for k in range(60):
        cells = plain if k % 3 else plain + ODD_CELLS
        columns.append(np.array([cells[int(i)] for i in rng.integers(len(cells), size=12)], dtype=object))
        kinds.append(("int", "float", "binary")[k % 3])
    # Typed columns (Parquet numbers, nullable integers) are not JSON cells: read one by one.
    columns += [np.tile([1.0, np.nan, 3.5], 4), pd.Series([1, None, 0] * 4, dtype="Int64")]
    kinds += ["float", "binary"]
    assert sum(bad.any() for _, bad in coerce_numbers(columns, kinds)) >= 10
    for (values, bad), raw, kind in zip(coerce_numbers(columns, kinds), columns, kinds):
        expected_values, expected_bad = coerce_array(raw, kind)
        np.testing.assert_array_equal(values, expected_values)
        np.testing.assert_array_equal(bad, expected_bad)
    with pytest.raises(ValueError, match="numeric kinds"):
        coerce_numbers([np.array(["a"], dtype=object)], ["category"])


@pytest.mark.parametrize("kind", ["int", "float", "binary"])
def test_arrow_text_numbers_are_read_as_cell_by_cell(kind):
    """A CSV's numeric columns (Arrow text, as ``features.io`` reads them) go through one
    float cast for plain decimals and cell by cell for the rest: the same values and the
    same unreadable cells as reading every cell by itself."""
    rng = np.random.default_rng(5)
    shapes = ["1", "1.", ".5", "+3", "-0", "007", "2.50", "1e5", "1E-3", "-4.2e+2", "1e400", "123456789012345678901.5",
              "9007199254740993", " 12 ", "\t4\n", "1_0", "1,5", "inf", "-Infinity", "nan", "NaN", "0x10", "1e", "e5",
              "--1", "1.2.3", "٣", "１２", "True", "false", "TRUE", "", "  ", None, "126", "127", "128", "-127.0"]
    numbers = [f"{x:.{int(d)}f}" for x, d in zip(rng.normal(0, 300, 200), rng.integers(0, 12, 200))]
    cells = [shapes[int(i)] if i < len(shapes) else numbers[int(i) % 200] for i in rng.integers(0, 2 * len(shapes), 2000)]
    arrow = pd.Series(cells, dtype="str")
    assert getattr(arrow.dtype, "storage", None) == "pyarrow" and len(arrow) >= 256  # the vectorised path
    values, bad = coerce_array(arrow, kind)
    expected_values, expected_bad = coerce_array(np.array(cells, dtype=object), kind)
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(bad, expected_bad)
    assert bad.sum() > 100 and (~np.isnan(values)).sum() > 200  # both paths exercised


def test_select_features_equals_pandas_selection(export):
    typed, _ = export
    X = compute_all_features(typed)
    names = feature_names("preop")
    pd.testing.assert_frame_equal(select_features(X, names), X[names], check_exact=True, check_column_type=True)
    shuffled = list(np.random.default_rng(0).permutation(names))
    pd.testing.assert_frame_equal(select_features(X, shuffled), X[shuffled], check_exact=True, check_column_type=True)
    assert select_features(X, list(X.columns)) is X
    mixed = X[names].astype({names[0]: "float32"})
    pd.testing.assert_frame_equal(select_features(mixed, names[::-1]), mixed[names[::-1]], check_exact=True)
    with pytest.raises(KeyError, match="not_a_feature"):
        select_features(X, [*names[:3], "not_a_feature"])
