"""Batch scoring on Spark (``refracture predict --engine spark``).

Every Arrow batch of every partition goes through ``serving.batch.pandas_engine.check_and_score``, the
very function ``--engine pandas`` runs on its chunks (``mapInPandas``), so the two engines
cannot drift apart: same checks, same features, same models, same output columns.

- Models: the driver loads the pinned champions once, serialises them once and broadcasts
  the bytes; each executor Python worker unpickles them on its first batch and keeps them
  (``_WORKER_MODELS``) for every later batch and task (Spark reuses its Python workers).
  Executors need the project's packages, not access to the MLflow registry.
- Output schema: taken from ``serving.batch.pandas_engine.output_template`` (the scorer's own output on
  the example record), so it follows the scorer's columns whatever they become.
- Record numbers in errors: the position in the input as ``--engine pandas`` reads it
  (files of a folder in path order, rows in file order), from Spark's ``_metadata``
  columns, so a bad record is reported identically by both engines.
- As with ``--engine pandas``, any field error refuses the input: Spark writes to a staging
  folder beside the output, which is renamed into place only if no batch found an error
  (errors travel back in an accumulator); nothing partial is left behind.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from features.records import RECORD_FIELDS
from serving.batch.pandas_engine import FLAT_NAMES, BatchInputError, check_and_score, output_template, use_threads
from serving.scoring.served_models import LoadedModel

logger = logging.getLogger(__name__)

RECORD_COLUMN = "_refracture_record"
#: Bytes of driver-held records per Spark task (``records_frame_on_spark``).
TASK_BYTES = 256 * 1024
#: Record fields that hold a calendar date.
DATE_FIELDS = tuple(f.flat_name for f in RECORD_FIELDS if f.spec.kind == "date")

#: Models unpickled in this Python worker, by broadcast token (one entry per job).
_WORKER_MODELS: dict[str, list[LoadedModel]] = {}
#: How many times this worker unpickled models (stays 1 per job: the tests read it).
WORKER_LOADS = {"count": 0}


#: Spark's log configuration for the sessions ``spark_session`` starts (read it for why).
LOG_CONFIG = Path(__file__).with_name("spark-log4j2.properties")
#: PySpark 4.3 warns on every import that it "does not yet fully support pandas >= 3.0.0";
#: the project pins pandas 3 and its tests hold both engines to 1e-9 (docs/deployment.md).
PANDAS_3_WARNING = "ignore:PySpark does not yet fully support pandas:FutureWarning"


def spark_session(master: str | None = "local[*]", app_name: str = "refracture-predict", conf: dict[str, str] | None = None,
                  quiet: bool = True):
    """A SparkSession for scoring. ``master=None`` keeps the one ``spark-submit`` chose.

    Local workers run the driver's own interpreter (PySpark's default, ``python3`` on the
    PATH, may be another Python). Timestamps are read and written in UTC. ``quiet``
    configures away what Spark prints that says nothing to the user (docs/deployment.md,
    "What Spark prints"): its log below WARN and three messages (``LOG_CONFIG``), the
    progress bar (the command prints its own summary), PySpark's pandas-3 warning, and, for
    a local master, the warning that the host name resolves to a loopback address (the
    driver binds to 127.0.0.1, as a local job should). Set before the JVM starts, so they
    apply to sessions this function starts, not to one ``spark-submit`` or a notebook started.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (SparkSession.builder.appName(app_name).config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if master:
        builder = builder.master(master)
    if quiet:
        warnings.filterwarnings(*_filter(PANDAS_3_WARNING))
        # Python workers are started by the JVM, which inherits this environment.
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), PANDAS_3_WARNING]))
        if master and master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (builder.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}")
                   .config("spark.executorEnv.PYTHONWARNINGS", PANDAS_3_WARNING)
                   .config("spark.ui.showConsoleProgress", "false")
                   # The plans of a 60-field record (hundreds of columns with --explain) are
                   # logged truncated, with a warning, past Spark's default of 25 fields.
                   .config("spark.sql.debug.maxToStringFields", "10000"))
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _filter(spec: str) -> tuple:
    """A PYTHONWARNINGS entry as ``warnings.filterwarnings`` arguments."""
    action, message, category = spec.split(":")[:3]
    return action, re.escape(message), getattr(builtins, category)


def _worker_models(token: str, payload) -> list[LoadedModel]:
    """The models in this worker: unpickled from the broadcast on first use, then reused."""
    models = _WORKER_MODELS.get(token)
    if models is None:
        import cloudpickle

        models = cloudpickle.loads(payload.value)
        # One Spark task per core: a multi-threaded predictor would fight its neighbours.
        use_threads(models, 1)
        _WORKER_MODELS.clear()  # a worker serves one job at a time; drop an older job's models
        _WORKER_MODELS[token] = models
        WORKER_LOADS["count"] += 1
        logger.info("worker %d loaded %d models", os.getpid(), len(models))
    return models


class _ErrorList:
    """AccumulatorParam: lists of error dicts, concatenated."""

    def zero(self, value: list) -> list:
        return []

    def addInPlace(self, a: list, b: list) -> list:
        a.extend(b)
        return a


def _scorer(token: str, payload, errors_acc, explain: bool, columns: list[str]):
    """The function ``mapInPandas`` runs on a partition's Arrow batches."""

    def score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        models = _worker_models(token, payload)
        for batch in batches:
            records = batch[RECORD_COLUMN].to_numpy()
            flat = batch.drop(columns=[RECORD_COLUMN]).reindex(columns=FLAT_NAMES)
            scored, errors = check_and_score(models, flat, explain=explain)
            if errors:
                errors_acc.add([{**e, "record": int(records[e["record"]])} for e in errors])
                continue
            yield scored[columns]

    return score_batches


def _numbered(spark, frame) -> tuple[Any, int]:
    """The input with each row's 0-based position as ``--engine pandas`` reads it (files
    in path order, rows in file order) and the number of rows."""
    from pyspark.sql import functions as F

    located = frame.withColumn("_file", F.col("_metadata.file_path")).withColumn("_row", F.col("_metadata.row_index"))
    counts = located.groupBy("_file").count().toPandas().sort_values("_file")
    offsets = dict(zip(counts["_file"], counts["count"].cumsum() - counts["count"]))
    n = int(counts["count"].sum()) if len(counts) else 0
    offset = F.lit(0).cast("long")
    if offsets:
        offset = F.create_map(*[x for f, o in offsets.items() for x in (F.lit(f), F.lit(int(o)))])[F.col("_file")]
    numbered = located.withColumn(RECORD_COLUMN, offset + F.col("_row")).drop("_file", "_row")
    return numbered, n


def read_parquet_records(spark, path: str | Path):
    """Flat records from a Parquet file or a (partitioned) folder, each row numbered.
    Raises BatchInputError as ``serving.batch.pandas_engine.read_records`` does (unknown
    columns, unreadable: one line naming the file and Spark's reason).

    Dates stored as nanosecond timestamps (what pandas writes for a ``datetime64[ns]``
    column) are read too: Spark has no nanosecond type and refuses such a file, so they are
    read as integers (``spark.sql.legacy.parquet.nanosAsLong``) and turned back into the
    calendar date, in UTC as the session reads every timestamp. A nanosecond timestamp in a
    field that is not a date stays an integer, which the contract then refuses by field."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    try:
        frame = spark.read.parquet(str(path))
        unknown = [c for c in frame.columns if c not in FLAT_NAMES]
        if unknown:
            raise BatchInputError([{"record": None, "field": c, "error": "unknown column (not a record field)", "allowed": ""}
                                   for c in unknown])
        nanos = [name for name in DATE_FIELDS if name in frame.columns and isinstance(frame.schema[name].dataType, LongType)]
        numbered, n = _numbered(spark, frame)
        for name in nanos:
            numbered = numbered.withColumn(name, F.to_date(F.timestamp_micros(F.floor(F.col(name) / 1000))))
        return numbered, n
    except (PySparkException, Py4JJavaError) as exc:
        raise BatchInputError([{"record": None, "field": "", "error": f"cannot read {path}: {_reason(exc)}"[:300],
                                "allowed": ""}]) from None


def _reason(exc: Exception) -> str:
    """Spark's reason in one line: the first line of its message (the Java exception's for
    an error PySpark does not translate), without the SQLSTATE suffix."""
    java = getattr(exc, "java_exception", None)
    text = str(java.getMessage() if java is not None else exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r"\s*SQLSTATE: \w+\.?$", "", first)


def records_frame_on_spark(spark, records: pd.DataFrame):
    """Flat records held by the driver (e.g. from a raw export) as a numbered Spark frame.
    Values go as text (missing as null): the scorer reads text exactly as a CSV file's."""
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    records = records.reset_index(drop=True)
    # Built cell by cell, not through a frame: pandas 3 infers a column of text and None as
    # its str dtype, whose missing value is NaN, which Spark would then store as "NaN".
    columns = [[None if _missing(v) else _text(v) for v in records[c].astype(object)] for c in records.columns]
    n = len(records)
    rows = list(zip(*columns, range(n))) if columns else [(i,) for i in range(n)]
    schema = StructType([StructField(str(c), StringType(), True) for c in records.columns]
                        + [StructField(RECORD_COLUMN, LongType(), False)])
    # The rows travel inside the tasks (they are on the driver): slices of about TASK_BYTES
    # keep every task small (Spark warns past 1,000 KiB; createDataFrame from pandas would
    # cut them into one slice per core whatever their size).
    size = sum(len(v) for column in columns for v in column if v is not None) + 8 * n * (len(columns) + 1)
    slices = max(spark.sparkContext.defaultParallelism, -(-int(size) // TASK_BYTES))
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, min(slices, max(n, 1))), schema=schema), n


def _missing(value: Any) -> bool:
    """A missing cell, whatever pandas holds it as (None, NaN, NaT, pd.NA)."""
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def _text(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def spark_schema(template: pd.DataFrame):
    """Spark schema of the scorer's output (from its zero-row template)."""
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType, BooleanType

    def kind(dtype) -> Any:
        if pd.api.types.is_bool_dtype(dtype):
            return BooleanType()
        if pd.api.types.is_integer_dtype(dtype):
            return LongType()
        if pd.api.types.is_float_dtype(dtype):
            return DoubleType()
        return StringType()

    return StructType([StructField(c, kind(t), True) for c, t in template.dtypes.items()])


def score_on_spark(spark, models: list[LoadedModel], frame, n_records: int, output_path: str | Path,
                   explain: bool = False, chunk_size: int = 50_000, overwrite: bool = True) -> str:
    """Score a numbered frame (``read_parquet_records`` / ``records_frame_on_spark``) and
    write partitioned Parquet to ``output_path`` (a folder or URI, e.g. ``s3a://...``).
    An existing output is replaced when ``overwrite``, else refused (FileExistsError)
    before anything is scored. Raises BatchInputError with every field error, in record
    order; nothing is written then."""
    import cloudpickle
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException, PythonException

    start = time.perf_counter()
    fs = _FileSystem(spark, str(output_path))
    if not overwrite and fs.target_exists():
        raise FileExistsError(f"{output_path} exists")
    template = output_template(models, explain)
    schema = spark_schema(template)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(chunk_size))
    token = uuid.uuid4().hex
    payload = spark.sparkContext.broadcast(cloudpickle.dumps(models))
    errors_acc = spark.sparkContext.accumulator([], _ErrorList())
    scored = frame.mapInPandas(_scorer(token, payload, errors_acc, explain, list(template.columns)), schema)

    staging = fs.beside(f"staging-{token[:8]}")
    try:
        try:
            scored.write.mode("errorifexists").parquet(staging)
        except (PySparkException, Py4JJavaError) as exc:
            if isinstance(exc, PythonException):  # the scorer failed: its traceback is the report
                raise
            # The input could not be read (a corrupt page only shows when the rows are read).
            raise BatchInputError([{"record": None, "field": "", "error": f"cannot read the input: {_reason(exc)}"[:300],
                                    "allowed": ""}], n_records) from None
        errors = _unique(errors_acc.value)
        if errors:
            raise BatchInputError(errors, n_records)
        fs.replace_with(staging)
    finally:
        payload.unpersist()
        fs.delete(staging)
    seconds = time.perf_counter() - start
    versions = ", ".join(f"{m.outcome} v{m.version}" for m in models)
    return (f"{n_records} records in {seconds:.1f} s ({n_records / max(seconds, 1e-9):,.0f} records/s) on Spark "
            f"{spark.sparkContext.master}; models {versions}")


def _unique(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Errors in record order, each once (a retried task reports its batch again)."""
    seen: dict[tuple, dict[str, Any]] = {}
    for e in errors:
        seen.setdefault((e["record"], e["field"], e["error"]), e)
    return sorted(seen.values(), key=lambda e: e["record"])


class _FileSystem:
    """The output's file system through Hadoop's API (local, HDFS, S3, ... as Spark writes
    them), for the staging folder's rename into place."""

    def __init__(self, spark, target: str):
        jvm = spark.sparkContext._jvm
        self._Path = jvm.org.apache.hadoop.fs.Path
        self.fs = self._Path(target).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        self.target = self.fs.makeQualified(self._Path(target))
        self.fs.mkdirs(self.target.getParent())

    def beside(self, tag: str) -> str:
        """A hidden sibling of the target (Spark and Parquet readers skip names starting with '.')."""
        return str(self._Path(self.target.getParent(), f".{self.target.getName()}.{tag}"))

    def target_exists(self) -> bool:
        return bool(self.fs.exists(self.target))

    def delete(self, path: str) -> None:
        p = self._Path(path)
        if self.fs.exists(p):
            self.fs.delete(p, True)

    def replace_with(self, staging: str) -> None:
        """Move the finished output into place; an older output is removed only after."""
        old = None
        if self.fs.exists(self.target):
            old = self.beside(f"old-{uuid.uuid4().hex[:8]}")
            if not self.fs.rename(self.target, self._Path(old)):
                raise OSError(f"cannot move the old output {self.target} aside")
        if not self.fs.rename(self._Path(staging), self.target):
            raise OSError(f"cannot move the output into place at {self.target}")
        if old is not None:
            self.delete(old)
