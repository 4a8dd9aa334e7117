"""Batch explanation on both cores (issue 14): ``serving.batch.pandas_engine.score_file`` in-process on
the serving benchmark's XGBoost champions (``bench/out/serving-store``), with and without
``--explain``, for each way of using the two cores: one chunk at a time with XGBoost on
both cores (``workers=1``) or two chunks at once with one XGBoost thread each (``workers=2``).

    .venv/bin/python bench/bench_explain_batch.py --records 100000 --repeats 3

Reports records/s of read + check + score + write (medians of ``--repeats`` interleaved
runs), the process's CPU seconds per wall second (above 1: both cores worked for it) and
the load average around the runs; the machine is shared, so compare the rows of
one run, not across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))
OUT = ROOT / "bench" / "out"


def records_file(store: Path, n: int) -> Path:
    """``n`` simulated flat records as Parquet (the same file ``bench_serving.py`` uses)."""
    path = OUT / f"records-{n}.parquet"
    if not path.exists():
        from features.records import tables_to_records
        from features.simulator import load_profile, simulate
        from features.validate import validate_raw

        tables, _ = simulate(load_profile("xiong2021-pvp"), n, 7)
        tables_to_records(validate_raw(tables)).to_parquet(path, index=False)
    return path


def main(argv: list[str] | None = None) -> int:
    from serving_support import use_trained_store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="explain", help="comma-separated: explain, plain")
    args = ap.parse_args(argv)
    store = use_trained_store(OUT)
    from serving.batch.pandas_engine import score_file
    from serving.scoring.loading import load_from_registry

    models = load_from_registry()
    source = records_file(store, args.records)
    print(f"models: {', '.join(f'{m.outcome} v{m.version} ({m.model.model_type}, {m.model.explanation_method})' for m in models)}")
    runs: dict[tuple[str, int], list[float]] = {}
    busy: dict[tuple[str, int], list[float]] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for mode in args.modes.split(","):
                for workers in (1, 2):
                    start, cpu = time.perf_counter(), os.times()
                    score_file(models, source, Path(tmp) / "out.parquet", explain=mode == "explain", workers=workers)
                    wall, end = time.perf_counter() - start, os.times()
                    runs.setdefault((mode, workers), []).append(args.records / wall)
                    # CPU seconds per wall second: above 1 means both cores worked for us.
                    busy.setdefault((mode, workers), []).append((end.user + end.system - cpu.user - cpu.system) / wall)
    print(f"load average (1 min): {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; {os.cpu_count()} cores")
    print("| mode | workers x XGBoost threads | records/s (median) | runs | CPU s per wall s (median) |")
    print("|---|---|---|---|---|")
    for (mode, workers), rates in runs.items():
        threads = max(1, (os.cpu_count() or 1) // workers)
        print(f"| {mode} | {workers} x {threads} | {statistics.median(rates):,.0f} | "
              f"{', '.join(f'{r:,.0f}' for r in rates)} | {statistics.median(busy[(mode, workers)]):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
