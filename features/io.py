"""Reading and writing raw exports and derived tables. The only file I/O of the data path.

A raw export is a folder with one file per table of the contract (``features.schema``):
``patients``, ``procedures``, ``imaging``, ``events``, each as ``.csv`` or ``.parquet``,
and optionally its site metadata ``export.yaml`` (how far deaths and fractures were
ascertained: ``features.ascertainment``).

It lives beside the contract it reads (``features`` is the bottom layer): the command
line, training and batch scoring all read and write through it.

CSV files may be comma-, semicolon- or tab-separated (the separator is read from the
header line). A semicolon-separated file is the European spreadsheet export, whose
numbers carry a decimal comma (``12,5``): in its number columns the comma is read as the
decimal point.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from features.ascertainment import EXPORT_METADATA_FILE, Ascertainment, parse_metadata
from features.coerce import DECIMAL_COMMA
from features.schema import TABLES
from features.validate import RawDataError, Violation

SUFFIXES = (".parquet", ".csv")
#: CSV separators recognised in a header line, by name (for the error messages).
SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab"}


def find_table_file(raw_dir: Path, table: str) -> Path | None:
    """Return the file holding ``table`` in ``raw_dir`` (Parquet preferred), or None."""
    for suffix in SUFFIXES:
        path = raw_dir / f"{table}{suffix}"
        if path.exists():
            return path
    return None


def read_table(path: Path, table: str) -> pd.DataFrame:
    """Read one table file. CSV columns are read as text so that validation, not the
    CSV parser, decides what a value means and can name the row of a bad one."""
    if path.stat().st_size == 0:
        raise RawDataError([Violation(table, "-", "-", f"{path.name} is an empty file")])
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = _read_csv(path, table)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise RawDataError([Violation(table, "-", "-", f"cannot read {path.name}: {exc}")]) from exc
    if len(df) == 0 and not TABLES[table].may_be_empty:
        raise RawDataError([Violation(table, "-", "-", f"{path.name} has a header but no rows")])
    return df


def csv_separator(path: Path) -> str:
    """The separator of a CSV file: the most frequent of comma, semicolon and tab in its
    header line (comma if none)."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        header = fh.readline()
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _read_csv(path: Path, table: str) -> pd.DataFrame:
    """A CSV table as text cells (validation, not the parser, decides what a value means)."""
    sep = csv_separator(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], sep=sep, encoding="utf-8-sig")
    except pd.errors.ParserError as exc:
        raise RawDataError([Violation(table, "-", "-",
                                      f"cannot read {path.name} as a {SEPARATORS[sep]}-separated file (the separator of "
                                      f"its header line): {exc}. Use one separator throughout, and quote values that "
                                      "contain it")]) from exc
    _check_field_counts(path, table, sep, len(df.columns))
    if sep == ";":
        kinds = {c.name: c.kind for c in TABLES[table].columns}
        for name in df.columns:
            if kinds.get(name) in ("int", "float"):
                comma = df[name].str.fullmatch(DECIMAL_COMMA.pattern, na=False)
                df.loc[comma, name] = df.loc[comma, name].str.replace(",", ".", regex=False)
    return df


def _check_field_counts(path: Path, table: str, sep: str, n_columns: int) -> None:
    """Refuse a file whose lines do not all split into the header's fields (the parser
    would pad short lines silently), naming the separator and the first bad line."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh, delimiter=sep), start=1):
            if row and len(row) != n_columns:
                raise RawDataError([Violation(
                    table, f"line {line_no}", "-",
                    f"{path.name}: the header line is {SEPARATORS[sep]}-separated ({n_columns} columns) but line "
                    f"{line_no} splits into {len(row)} field(s); use one separator throughout, and quote values that "
                    "contain it")])


def read_raw(raw_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Read every table of the contract from ``raw_dir``.

    Raises RawDataError listing every missing, empty or unreadable table at once.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise RawDataError([Violation("-", "-", "-", f"raw export folder {raw_dir} does not exist")])
    tables: dict[str, pd.DataFrame] = {}
    problems: list[Violation] = []
    for name in TABLES:
        path = find_table_file(raw_dir, name)
        if path is None:
            problems.append(Violation(name, "-", "-", f"table missing: expected {name}.csv or {name}.parquet in {raw_dir}"))
            continue
        try:
            tables[name] = read_table(path, name)
        except RawDataError as exc:
            problems.extend(exc.violations)
    if problems:
        raise RawDataError(problems)
    return tables


class _DatesAsText(yaml.SafeLoader):
    """Safe YAML loading that leaves dates as text, so the metadata's own validation (not
    the YAML parser) reads them and can name the field of an impossible one."""


_DatesAsText.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def read_export_metadata(raw_dir: str | Path) -> Ascertainment | None:
    """The export's ``export.yaml``, validated (``features.ascertainment.parse_metadata``),
    or None when the folder has none. Raises RawDataError naming the file's problems."""
    path = Path(raw_dir) / EXPORT_METADATA_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_DatesAsText)  # noqa: S506 - a SafeLoader
    except (OSError, UnicodeDecodeError) as exc:
        raise RawDataError([Violation(EXPORT_METADATA_FILE, "-", "-", f"cannot read {path}: {exc}")]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "-"
        raise RawDataError([Violation(EXPORT_METADATA_FILE, where, "-",
                                      f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]) from exc
    return parse_metadata(data)


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write a small text file (e.g. ``export.yaml``) so that a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_raw(tables: dict[str, pd.DataFrame], out_dir: str | Path, fmt: str = "csv") -> None:
    """Write a raw export, one file per table, atomically (all files or none)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, df in tables.items():
            target = out_dir / f"{name}.{fmt}"
            tmp = _tmp_beside(target)
            _write_frame(df, tmp, fmt)
            staged.append((tmp, target))
        for tmp, target in staged:
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()


def write_frame_atomic(df: pd.DataFrame, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write one DataFrame (format from the suffix) so that a reader never sees half a file.

    ``metadata``: key-value pairs stored in a Parquet file's schema metadata (e.g. the
    exclusion report's count and fingerprint, ``features.exclusion``); refused for CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        _write_frame(df, tmp, path.suffix.lstrip("."), metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` so that a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def parquet_metadata(path: str | Path) -> dict[str, str]:
    """The key-value metadata of a Parquet file written by ``write_frame_atomic`` (pandas' own key left out)."""
    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k != b"pandas"}


def _tmp_beside(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    return Path(name)


def _write_frame(df: pd.DataFrame, path: Path, fmt: str, metadata: dict[str, str] | None = None) -> None:
    if metadata and fmt != "parquet":
        raise ValueError("only a Parquet file holds metadata")
    if fmt == "parquet":
        if metadata:
            table = pa.Table.from_pandas(df, preserve_index=False)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{k.encode(): v.encode()
                                                                                         for k, v in metadata.items()}})
            pq.write_table(table, path)
        else:
            df.to_parquet(path, index=False)
    elif fmt == "csv":
        df.to_csv(path, index=False, lineterminator="\n")
    else:
        raise ValueError(f"unsupported format {fmt!r}: use csv or parquet")
