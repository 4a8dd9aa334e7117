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

import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from serving.batch.pandas_engine import FLAT_NAMES, BatchInputError, check_and_score, output_template, use_threads
from serving.scoring.served_models import LoadedModel

logger = logging.getLogger(__name__)

RECORD_COLUMN = "_refracture_record"

#: Models unpickled in this Python worker, by broadcast token (one entry per job).
_WORKER_MODELS: dict[str, list[LoadedModel]] = {}
#: How many times this worker unpickled models (stays 1 per job: the tests read it).
WORKER_LOADS = {"count": 0}


def spark_session(master: str | None = "local[*]", app_name: str = "refracture-predict", conf: dict[str, str] | None = None):
    """A SparkSession for scoring. ``master=None`` keeps the one ``spark-submit`` chose.

    Local workers run the driver's own interpreter (PySpark's default, ``python3`` on the
    PATH, may be another Python). Timestamps are read and written in UTC.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (SparkSession.builder.appName(app_name).config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if master:
        builder = builder.master(master)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


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
    Raises BatchInputError as ``serving.batch.pandas_engine.read_records`` does (unknown columns, unreadable)."""
    from pyspark.errors import PySparkException

    try:
        frame = spark.read.parquet(str(path))
        unknown = [c for c in frame.columns if c not in FLAT_NAMES]
        if unknown:
            raise BatchInputError([{"record": None, "field": c, "error": "unknown column (not a record field)", "allowed": ""}
                                   for c in unknown])
        return _numbered(spark, frame)
    except PySparkException as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BatchInputError([{"record": None, "field": "", "error": f"cannot read {path}: {message}"[:300],
                                "allowed": ""}]) from None


def records_frame_on_spark(spark, records: pd.DataFrame):
    """Flat records held by the driver (e.g. from a raw export) as a numbered Spark frame.
    Values go as text (missing as null): the scorer reads text exactly as a CSV file's."""
    text = records.reset_index(drop=True).astype(object)
    text = text.where(text.notna(), None).map(lambda v: None if v is None else _text(v))
    text[RECORD_COLUMN] = range(len(text))
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    schema = StructType([StructField(c, StringType(), True) for c in text.columns[:-1]]
                        + [StructField(RECORD_COLUMN, LongType(), False)])
    return spark.createDataFrame(text, schema=schema), len(text)


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
                   explain: bool = False, chunk_size: int = 50_000) -> str:
    """Score a numbered frame (``read_parquet_records`` / ``records_frame_on_spark``) and
    write partitioned Parquet to ``output_path`` (a folder or URI, e.g. ``s3a://...``;
    replaced if it exists). Raises
    BatchInputError with every field error, in record order; nothing is written then."""
    import cloudpickle

    start = time.perf_counter()
    template = output_template(models, explain)
    schema = spark_schema(template)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(chunk_size))
    token = uuid.uuid4().hex
    payload = spark.sparkContext.broadcast(cloudpickle.dumps(models))
    errors_acc = spark.sparkContext.accumulator([], _ErrorList())
    scored = frame.mapInPandas(_scorer(token, payload, errors_acc, explain, list(template.columns)), schema)

    fs = _FileSystem(spark, str(output_path))
    staging = fs.beside(f"staging-{token[:8]}")
    try:
        scored.write.mode("errorifexists").parquet(staging)
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
