"""FHIR Bulk input (issue 19): procedures per second read from a Bulk Data export.

1. Input: a simulated export (``--profile``, ``--n`` procedures) written as FHIR with the
   mapping's exporter (``features.fhir.export``, what ``refracture fhir-export`` writes):
   one ``<ResourceType>.ndjson`` per type, ~11 resources per procedure.
2. ``read_bulk_ndjson`` (read, group by patient, map, contract check) with 1 and with 2
   worker processes, alternated, ``--repeats`` times each: wall time and this process's CPU
   time (on a shared machine the CPU time is the steadier figure; workers' CPU is not in it).
3. The exporter's time, for context.

Medians; raw rows in ``bench/out/bench_fhir.json``.

    .venv/bin/python bench/bench_fhir.py --n 20000 --repeats 3
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
    args = parser.parse_args()

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
    summary = {"n": args.n, "profile": args.profile, "resources": lines, "export_s": export_s,
               "load_1min": os.getloadavg()[0]}
    for workers in (1, 2):
        walls = [r["wall_s"] for r in rows if r["workers"] == workers]
        cpus = [r["cpu_s"] for r in rows if r["workers"] == workers]
        summary[f"workers{workers}_wall_median_s"] = statistics.median(walls)
        summary[f"workers{workers}_procedures_per_s"] = args.n / statistics.median(walls)
        summary[f"workers{workers}_main_cpu_median_s"] = statistics.median(cpus)
    summary["speedup_2_over_1"] = summary["workers1_wall_median_s"] / summary["workers2_wall_median_s"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_fhir.json").write_text(json.dumps({"summary": summary, "runs": rows}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
