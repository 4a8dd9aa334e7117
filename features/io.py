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
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from features.ascertainment import EXPORT_METADATA_FILE, Ascertainment, parse_metadata
from features.coerce import DECIMAL_COMMA
from features.records import RECORD_FIELDS, inspect_records
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
    tmp = tmp_file_beside(path)
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
            tmp = tmp_file_beside(target)
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
    tmp = tmp_file_beside(path)
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
    tmp = tmp_file_beside(path)
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


def umask() -> int:
    """This process's umask (from /proc, which reads it without changing it; else the
    classic set-and-restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def tmp_file_beside(path: Path) -> Path:
    """A new empty file beside ``path`` (hidden), created with the mode a plain ``open``
    gives (0666 less the umask): it is renamed into place, so its mode is the output's."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def tmp_dir_beside(path: Path) -> Path:
    """A new empty folder beside ``path`` (hidden) with the mode ``mkdir`` gives (0777 less
    the umask; ``tempfile.mkdtemp`` would make it 0700), to be renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


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


# ------------------------------------------------------------------ flat records

#: Records per Parquet file when ``write_records`` writes a folder (a Spark task each).
RECORDS_PER_PART = 100_000
_ARROW_TYPES = {"int": pa.int64(), "binary": pa.int64(), "float": pa.float64(), "date": pa.date32()}


def records_table(records: pd.DataFrame) -> pa.Table:
    """Flat records (any cells: CSV text, Parquet types, JSON values) as an Arrow table
    with one column per record field in its contract type: whole numbers as int64, other
    numbers float64, dates as date32 (a calendar date: both batch engines read it, where
    Spark refuses the nanosecond timestamps pandas writes by default), text as string;
    missing values null. Cells that cannot be read as their type become null: check the
    records first (``features.records.inspect_records``)."""
    typed = inspect_records(records).typed
    arrays = []
    for f in RECORD_FIELDS:
        values = typed[f.flat_name]
        kind = f.spec.kind
        if kind in ("int", "binary"):
            arrays.append(pa.array(np.where(np.isnan(values), 0, values).astype("int64"), pa.int64(), mask=np.isnan(values)))
        elif kind == "float":
            arrays.append(pa.array(values, pa.float64(), mask=np.isnan(values)))
        elif kind == "date":
            arrays.append(pa.array(values.astype("datetime64[D]"), pa.date32(), mask=np.isnat(values)))
        else:
            arrays.append(pa.array(values, pa.string()))
    return pa.Table.from_arrays(arrays, names=[f.flat_name for f in RECORD_FIELDS])


def write_records(records: pd.DataFrame, path: str | Path, overwrite: bool = False) -> list[Path]:
    """Write flat records for ``refracture predict --input`` and the API's batch use: a
    ``.parquet`` or ``.csv`` file, or (any other name) a folder of Parquet parts of
    ``RECORDS_PER_PART`` records (``part-00000.parquet``, ...), typed as ``records_table``
    says. All or nothing: written beside the target and renamed into place. An existing
    target is refused (FileExistsError) unless ``overwrite``. Returns the files written."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path} exists (give --overwrite to replace it)")
    table = records_table(records)
    if path.suffix in (".parquet", ".csv"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_file_beside(path)
        try:
            if path.suffix == ".parquet":
                pq.write_table(table, tmp)
            else:
                _records_csv(table).to_csv(tmp, index=False, lineterminator="\n")
            _replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return [path]
    tmp_dir = tmp_dir_beside(path)
    try:
        names = []
        for i, start in enumerate(range(0, max(table.num_rows, 1), RECORDS_PER_PART)):
            name = f"part-{i:05d}.parquet"
            pq.write_table(table.slice(start, RECORDS_PER_PART), tmp_dir / name)
            os.chmod(tmp_dir / name, 0o666 & ~umask())
            names.append(name)
        _replace(tmp_dir, path)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    return [path / name for name in names]


def _records_csv(table: pa.Table) -> pd.DataFrame:
    """The typed records as CSV cells: dates YYYY-MM-DD, whole numbers without a decimal point."""
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    for f in RECORD_FIELDS:
        if f.spec.kind == "date":
            frame[f.flat_name] = pd.to_datetime(frame[f.flat_name]).dt.strftime("%Y-%m-%d")
    return frame


def _replace(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path``; an existing ``path`` (file or folder) is removed only after."""
    if path.is_dir() and not path.is_symlink():
        old = path.parent / f".{path.name}.old-{os.urandom(4).hex()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
