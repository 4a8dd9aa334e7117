"""Batch scoring on Spark next to the pandas engine (issue 14): records per second on 1M
records, Spark ``local[1]`` and ``local[2]``, and how it grows from 1 to 2 cores.

1. Champions: the bench store's (``bench/out/serving-store``, XGBoost for every outcome,
   trained by ``tests/support/serving_support.ensure_trained_store`` on first use; reused).
2. Input: the flat records of a simulated 100k-procedure export, repeated with new
   procedure ids up to ``--n`` records, written as a folder of 8 Parquet files (what a
   registry extract on a data lake looks like).
3. Each engine scores the whole folder (read, check, score, write), ``--repeats`` times:
   ``--engine pandas`` (``serving.batch.pandas_engine.score_file``, one process, XGBoost on every core)
   and ``--engine spark`` (``serving.batch.spark_engine``) on ``local[1]`` and ``local[2]``, a
   fresh session per master; its start-up (JVM) is timed apart.

Medians; raw rows in ``bench/out/bench_spark.json``.

    .venv/bin/python bench/bench_spark.py --n 1000000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))
OUT = ROOT / "bench" / "out"


def make_input(folder: Path, n: int, seed: int = 5) -> None:
    """``n`` flat records (dates as text) in 8 Parquet files under ``folder``."""
    import numpy as np
    import pandas as pd

    from features.records import tables_to_records
    from features.simulator import load_profile, simulate
    from features.validate import validate_raw

    tables, _ = simulate(load_profile("xiong2021-pvp"), min(n, 100_000), seed)
    base = tables_to_records(validate_raw(tables)).reset_index(drop=True)
    for col in ("surgery_date", "pain_onset_date"):
        base[col] = base[col].dt.strftime("%Y-%m-%d")
    reps = -(-n // len(base))
    flat = pd.concat([base] * reps, ignore_index=True).head(n)
    flat["procedure_id"] = [f"R{i:08d}" for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(np.array_split(np.arange(n), 8)):
        flat.iloc[part].to_parquet(folder / f"part-{k}.parquet", index=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--masters", default="local[1],local[2]")
    ap.add_argument("--explain", action="store_true", help="score with SHAP explanations")
    args = ap.parse_args(argv)

    from serving_support import use_trained_store

    store = use_trained_store(OUT)

    from serving.batch.pandas_engine import score_file
    from serving.batch.spark_engine import read_parquet_records, score_on_spark, spark_session
    from serving.scoring.loading import load_from_registry

    models = load_from_registry()
    work = OUT / "spark-bench"
    shutil.rmtree(work, ignore_errors=True)
    source = work / "in"
    t = time.perf_counter()
    make_input(source, args.n)
    print(f"input: {args.n:,} records in 8 files ({time.perf_counter() - t:.0f} s to build)", flush=True)

    rows = []
    for r in range(args.repeats):
        t = time.perf_counter()
        score_file(models, source, work / "pandas.parquet", explain=args.explain)
        rows.append({"engine": "pandas", "repeat": r, "seconds": time.perf_counter() - t})
        print(rows[-1], flush=True)
    for master in args.masters.split(","):
        t = time.perf_counter()
        spark = spark_session(master, app_name="refracture-bench", conf={
            "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2",
            "spark.driver.memory": "2g", "spark.sql.warehouse.dir": str(work / "warehouse")})
        startup = time.perf_counter() - t
        try:
            for r in range(args.repeats):
                t = time.perf_counter()
                frame, n = read_parquet_records(spark, source)
                score_on_spark(spark, models, frame, n, work / "spark-out", explain=args.explain)
                rows.append({"engine": f"spark {master}", "repeat": r, "seconds": time.perf_counter() - t,
                             "session_start_s": startup})
                print(rows[-1], flush=True)
        finally:
            spark.stop()

    summary = {}
    for engine in dict.fromkeys(row["engine"] for row in rows):
        s = statistics.median(row["seconds"] for row in rows if row["engine"] == engine)
        summary[engine] = {"median_s": s, "records_per_s": args.n / s}
    one, two = summary.get("spark local[1]"), summary.get("spark local[2]")
    result = {"n": args.n, "explain": args.explain, "repeats": args.repeats, "cpus": os.cpu_count(),
              "load_avg_at_end": os.getloadavg(), "rows": rows, "summary": summary,
              "speedup_1_to_2_cores": (two["records_per_s"] / one["records_per_s"]) if one and two else None}
    (OUT / "bench_spark.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
