"""Benchmark: time and peak memory to simulate 100,000 treated levels.

Usage::

    .venv/bin/python bench/bench_synth.py [--n 100000] [--repeats 3] [--profile xiong2021-pvp]

Reports the median wall time of ``features.simulator.simulate`` over ``--repeats`` runs
(after one warm-up run), the peak Python-heap memory of one run (tracemalloc; numpy
buffers are traced), the process's peak resident set size, and, for context, the time to
validate the export (``features.validate.validate_raw``). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
import tracemalloc

from features.simulator import load_profile, simulate
from features.validate import validate_raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="xiong2021-pvp")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    profile = load_profile(args.profile)
    simulate(profile, args.n, args.seed)  # warm-up: imports, caches
    times = []
    for i in range(args.repeats):
        start = time.perf_counter()
        tables, _ = simulate(profile, args.n, args.seed + i)
        times.append(time.perf_counter() - start)

    tracemalloc.start()
    simulate(profile, args.n, args.seed)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    start = time.perf_counter()
    validate_raw(tables)
    validate_s = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    rows = [
        ("profile", args.profile),
        ("treated levels (procedures)", f"{args.n:,}"),
        ("patients / imaging rows / events", f"{len(tables['patients']):,} / {len(tables['imaging']):,} / {len(tables['events']):,}"),
        (f"simulate, median of {args.repeats} (s)", f"{statistics.median(times):.2f} (runs: {', '.join(f'{t:.2f}' for t in times)})"),
        ("simulate, peak traced memory (MiB)", f"{peak / 2**20:.0f}"),
        ("process peak RSS incl. validation (MiB)", f"{rss_mb:.0f}"),
        ("validate_raw of the export, for context (s)", f"{validate_s:.2f}"),
        ("machine", f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"),
    ]
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
