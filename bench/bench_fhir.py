"""FHIR Bulk input (issue 19): procedures per second read from a Bulk Data export.

1. Input: a simulated export (``--profile``, ``--n`` procedures) written as FHIR with the
   mapping's exporter (``features.fhir.export``, what ``refracture fhir-export`` writes):
   one ``<ResourceType>.ndjson`` per type, ~11 resources per procedure.
2. ``read_bulk_ndjson`` (read, group by patient, map, contract check) with 1 and with 2
   worker processes, alternated, ``--repeats`` times each: wall time and this process's CPU
   time (on a shared machine the CPU time is the steadier figure; workers' CPU is not in it).
3. The exporter's time, for context.
4. With ``--predict``: what ``refracture predict --fhir-ndjson`` does, in this process with the
   bench store's champions (``bench/out/serving-store``, trained on first use as for
   ``bench_spark.py``): read and map the Bulk export, score (``--engine pandas``:
   ``score_file``; ``--engine spark``: ``score_on_spark`` on ``local[1]`` and ``local[2]``),
   and write RiskAssessment.ndjson; procedures per second end to end, and per stage. The
   FHIR reading runs on the driver for both engines (Spark scores; it does not parse FHIR).

5. With ``--compare``: before vs after the Bulk fast path, alternated in the same run on the
   same export: the read alone (``read_bulk_ndjson(fast=False, workers=1)``, the per-resource
   parser in this process, as before on one core; vs the default fast path), and ``predict
   --fhir-ndjson``'s pandas steps end to end (read, flat frame, ``score_file``,
   RiskAssessment.ndjson written by the builder per resource, as before; vs from its
   templates). Each run's outputs are checked equal (records, problems; the RiskAssessment
   bytes). One process both ways (the reference's workers hand patients back in another
   order; comparing them in one order keeps the check byte for byte).

Medians; raw rows in ``bench/out/bench_fhir.json`` (``bench_fhir_compare.json`` for ``--compare``).

    .venv/bin/python bench/bench_fhir.py --n 20000 --repeats 3
    .venv/bin/python bench/bench_fhir.py --n 20000 --repeats 3 --predict
    .venv/bin/python bench/bench_fhir.py --n 5000 --repeats 3 --compare
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"


def write_bulk(folder: Path, profile: str, n: int, seed: int) -> float:
    """Simulate ``n`` procedures and write them as Bulk NDJSON; returns the export's seconds."""
    import orjson

    from features.fhir.export import export_resources
    from features.simulator import simulate
    from features.validate import validate_raw

    tables, _ = simulate(profile, n, seed)
    tables = validate_raw(tables)
    start = time.perf_counter()
    files: dict[str, list[bytes]] = {}
    for resource in export_resources(tables):
        files.setdefault(resource["resourceType"], []).append(orjson.dumps(resource))
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    for rtype, lines in files.items():
        (folder / f"{rtype}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="xiong2021-pvp")
    parser.add_argument("--predict", action="store_true", help="also score end to end (pandas, Spark local[1]/[2])")
    parser.add_argument("--masters", default="local[1],local[2]")
    parser.add_argument("--compare", action="store_true", help="before vs after the Bulk fast path (read, pandas predict)")
    args = parser.parse_args()
    if args.compare:
        return compare(args)

    from features.fhir.bulk import read_bulk_ndjson

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bulk"
        export_s = write_bulk(folder, args.profile, args.n, seed=19)
        lines = sum(1 for p in folder.glob("*.ndjson") for _ in p.open("rb"))
        read_bulk_ndjson(folder, workers=1)  # warm-up (imports, UCUM not needed: contract units)
        for _ in range(args.repeats):
            for workers in (1, 2):
                cpu, wall = time.process_time(), time.perf_counter()
                parsed = read_bulk_ndjson(folder, workers=workers)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                assert not parsed.errors and len(parsed.records) == args.n
                rows.append({"workers": workers, "wall_s": wall, "cpu_s": cpu, "procedures": args.n})
        predict_rows = predict_runs(folder, Path(tmp), args) if args.predict else []
    summary = {"n": args.n, "profile": args.profile, "resources": lines, "export_s": export_s,
               "load_1min": os.getloadavg()[0]}
    for workers in (1, 2):
        walls = [r["wall_s"] for r in rows if r["workers"] == workers]
        cpus = [r["cpu_s"] for r in rows if r["workers"] == workers]
        summary[f"workers{workers}_wall_median_s"] = statistics.median(walls)
        summary[f"workers{workers}_procedures_per_s"] = args.n / statistics.median(walls)
        summary[f"workers{workers}_main_cpu_median_s"] = statistics.median(cpus)
    summary["speedup_2_over_1"] = summary["workers1_wall_median_s"] / summary["workers2_wall_median_s"]
    for engine in dict.fromkeys(r["engine"] for r in predict_rows):
        mine = [r for r in predict_rows if r["engine"] == engine]
        median = statistics.median(r["total_s"] for r in mine)
        summary[f"predict {engine}"] = {"median_total_s": median, "procedures_per_s": args.n / median,
                                        **{k: statistics.median(r[k] for r in mine) for k in ("read_s", "score_s", "write_s")}}
    one, two = summary.get("predict spark local[1]"), summary.get("predict spark local[2]")
    if one and two:
        summary["spark_scoring_speedup_1_to_2_cores"] = one["score_s"] / two["score_s"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_fhir.json").write_text(json.dumps({"summary": summary, "runs": rows, "predict_runs": predict_rows}, indent=2))
    print(json.dumps(summary, indent=2))


def predict_runs(folder: Path, tmp: Path, args) -> list[dict]:
    """``predict --fhir-ndjson``'s steps, timed: read + map, score, RiskAssessment.ndjson."""
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from serving_support import use_trained_store

    use_trained_store(OUT)
    import datetime as dt

    import pandas as pd

    from features.fhir.bulk import read_bulk_ndjson
    from features.fhir.parse import record_frame
    from serving.batch.fhir_output import write_risk_assessments
    from serving.batch.pandas_engine import score_file
    from serving.batch.spark_engine import records_frame_on_spark, score_on_spark, spark_session
    from serving.scoring.loading import load_from_registry

    models = load_from_registry()
    rows = []

    def read():
        parsed = read_bulk_ndjson(folder)
        records, sources = parsed.accepted()
        return record_frame(parsed), {str(r["procedure"]["procedure_id"]): s for r, s in zip(records, sources)}

    def finish(scored_path: Path, sources, t_total: float, t_read: float, t_score: float, engine: str) -> None:
        t = time.perf_counter()
        write_risk_assessments(pd.read_parquet(scored_path), sources, tmp / "RiskAssessment.ndjson",
                               dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        write = time.perf_counter() - t
        rows.append({"engine": engine, "read_s": t_read, "score_s": t_score, "write_s": write,
                     "total_s": time.perf_counter() - t_total})
        print(rows[-1], flush=True)

    for _ in range(args.repeats):
        t0 = time.perf_counter()
        records, sources = read()
        t_read = time.perf_counter() - t0
        t = time.perf_counter()
        score_file(models, folder, tmp / "scored.parquet", records=records)
        finish(tmp / "scored.parquet", sources, t0, t_read, time.perf_counter() - t, "pandas")
    for master in args.masters.split(","):
        spark = spark_session(master, app_name="refracture-bench-fhir", conf={
            "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2", "spark.driver.memory": "2g",
            "spark.sql.warehouse.dir": str(tmp / "warehouse")})
        try:
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                records, sources = read()
                t_read = time.perf_counter() - t0
                t = time.perf_counter()
                frame, n = records_frame_on_spark(spark, records)
                score_on_spark(spark, models, frame, n, tmp / "spark-out")
                finish(tmp / "spark-out", sources, t0, t_read, time.perf_counter() - t, f"spark {master}")
        finally:
            spark.stop()
    return rows


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the reference's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _same(parsed) -> tuple:
    """What must be equal before and after, sorted (records by procedure, problems by
    where), so that the order patients are handed back in does not matter."""
    records = sorted(parsed.records, key=lambda r: str(r["procedure"]["procedure_id"]))
    return records, sorted((p.source, p.expression, p.message, p.severity) for p in parsed.problems)


def compare(args) -> None:
    """Before (per-resource parser, builder per resource) vs after (fast path, templates)."""
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from serving_support import use_trained_store

    use_trained_store(OUT)
    import datetime as dt

    import pandas as pd

    from features.fhir.bulk import read_bulk_ndjson
    from features.fhir.parse import record_frame
    from serving.batch.fhir_output import write_risk_assessments
    from serving.batch.pandas_engine import score_file
    from serving.scoring.loading import load_from_registry

    models = load_from_registry()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "bulk"
        write_bulk(folder, args.profile, args.n, seed=19)
        now = dt.datetime.now(dt.timezone.utc)
        occurrence = now.isoformat(timespec="seconds")
        outputs: dict[str, tuple] = {}

        def predict(fast: bool) -> tuple[float, float, float, float]:
            t0, c0 = time.perf_counter(), _cpu()
            parsed = read_bulk_ndjson(folder, now=now, fast=fast, workers=1)
            t_read = time.perf_counter() - t0
            records, sources = parsed.accepted()
            sources = {str(r["procedure"]["procedure_id"]): s for r, s in zip(records, sources)}
            score_file(models, folder, tmp / "scored.parquet", records=record_frame(parsed))
            target = tmp / f"RiskAssessment-{fast}.ndjson"
            write_risk_assessments(pd.read_parquet(tmp / "scored.parquet"), sources, target, occurrence, reference=not fast)
            outputs[f"predict {fast}"] = (*_same(parsed), sorted(target.read_bytes().splitlines()))
            return time.perf_counter() - t0, _cpu() - c0, t_read, len(parsed.records)

        predict(True)  # warm-up (imports, models)
        for r in range(args.repeats):
            for fast in ((False, True) if r % 2 == 0 else (True, False)):
                t0, c0 = time.perf_counter(), _cpu()
                parsed = read_bulk_ndjson(folder, now=now, fast=fast, workers=1)
                wall, cpu = time.perf_counter() - t0, _cpu() - c0
                assert not parsed.errors and len(parsed.records) == args.n
                outputs[f"read {fast}"] = _same(parsed)
                rows.append({"step": "read", "fast": fast, "wall_s": wall, "cpu_s": cpu})
                wall, cpu, t_read, n = predict(fast)
                rows.append({"step": "predict pandas", "fast": fast, "wall_s": wall, "cpu_s": cpu, "read_s": t_read})
                print(rows[-2], rows[-1], flush=True)
            assert outputs["read True"] == outputs["read False"], "the two readers' records or problems differ"
            assert outputs["predict True"] == outputs["predict False"], "the RiskAssessment lines differ"
    summary: dict[str, object] = {"n": args.n, "profile": args.profile, "repeats": args.repeats,
                                  "load_1min": os.getloadavg()[0], "outputs_equal": True}
    for step in ("read", "predict pandas"):
        for fast in (False, True):
            mine = [r for r in rows if r["step"] == step and r["fast"] == fast]
            wall, cpu = statistics.median(r["wall_s"] for r in mine), statistics.median(r["cpu_s"] for r in mine)
            summary[f"{step} {'after' if fast else 'before'}"] = {
                "median_wall_s": wall, "procedures_per_s": args.n / wall,
                "median_cpu_s": cpu, "procedures_per_cpu_s": args.n / cpu}
        summary[f"{step} speedup (wall, CPU)"] = (
            summary[f"{step} before"]["median_wall_s"] / summary[f"{step} after"]["median_wall_s"],
            summary[f"{step} before"]["median_cpu_s"] / summary[f"{step} after"]["median_cpu_s"])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_fhir_compare.json").write_text(json.dumps({"summary": summary, "runs": rows}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
