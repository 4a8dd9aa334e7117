"""Where does the bare endpoint's p99 come from? The fair floor (``BareCached``) under
BentoML server settings, at 1 and 32 connections, interleaved, medians of ``--repeats``.

    .venv/bin/python bench/bench_serving_tail.py [--duration 10] [--repeats 3]

Settings compared (BentoML config overrides, ``BENTOML_CONFIG_OPTIONS``):
default; gc.freeze() after start; access log off; Prometheus metrics off; both off;
both off + 2 workers.
Also reports the machine's load and each run's non-2xx count. Results: bench/out/.
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
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT))

from bench_serving import LUA, OUT, run_wrk, start, stop  # noqa: E402

SVC = "services"  # defaults for every service (names with hyphens cannot be addressed here)
SETTINGS = {
    "default": ("", 1),
    "gc-freeze": ("", 1),
    "no-access-log": (f"{SVC}.logging.access.enabled=false", 1),
    "no-metrics": (f"{SVC}.metrics.enabled=false", 1),
    "no-log-no-metrics": (f"{SVC}.logging.access.enabled=false {SVC}.metrics.enabled=false", 1),
    "no-log-no-metrics-2-workers": (f"{SVC}.logging.access.enabled=false {SVC}.metrics.enabled=false", 2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--connections", default="1,32")
    args = ap.parse_args()
    from serving.scoring.examples import example_record
    from serving_support import free_port

    conns = [int(c) for c in args.connections.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-tail-"))
    script = work / "post.lua"
    script.write_text(LUA % {"key": "none", "body": json.dumps(example_record())})
    servers = {}
    try:
        for name, (options, workers) in SETTINGS.items():
            env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "REFRACTURE_WORKERS": str(workers), "PYTHONPATH": str(ROOT)}
            if options:
                env["BENTOML_CONFIG_OPTIONS"] = options
            if "gc-freeze" in name:
                env["REFRACTURE_GC_FREEZE"] = "1"
            port = free_port()
            proc = start([sys.executable, "-m", "bentoml", "serve", "bench.bench_serving_bare:BareCached", "--host", "127.0.0.1",
                          "--port", str(port), "--working-dir", str(ROOT)], env, work / f"{name}.log", f"http://127.0.0.1:{port}")
            servers[name] = (proc, f"http://127.0.0.1:{port}/echo")
        for _, url in servers.values():
            run_wrk(url, 2, 3, script)
        runs = {n: {c: [] for c in conns} for n in servers}
        for r in range(args.repeats):
            for c in conns:
                for name, (_, url) in servers.items():
                    res = run_wrk(url, c, args.duration, script)
                    res["load"] = os.getloadavg()[0]
                    runs[name][c].append(res)
                    print(f"run {r + 1} {name:28s} c={c:2d}: p50 {res['p50_ms']:7.1f} ms  p99 {res['p99_ms']:7.1f} ms  "
                          f"{res['rps']:7.1f} req/s  load {res['load']:.2f}", flush=True)
    finally:
        for proc, _ in servers.values():
            stop(proc)
    print("\n| setting | clients | p50 ms | p99 ms | req/s |\n|---|---|---|---|---|")
    med = {}
    for name in runs:
        for c in conns:
            m = {k: statistics.median(x[k] for x in runs[name][c]) for k in ("p50_ms", "p99_ms", "rps")}
            med.setdefault(name, {})[c] = m
            print(f"| {name} | {c} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['rps']:.0f} |")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"serving-tail-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"runs": runs, "median": med, "cpus": os.cpu_count()}, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
