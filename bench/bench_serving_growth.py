"""Does anything accumulate per request? The real service app, in-process, at 32
concurrent requests on /predict, in windows: latency, garbage-collector pauses by
generation, objects tracked by the collector, and RSS.

    .venv/bin/python bench/bench_serving_growth.py [--window 1500] [--windows 6] [--without-fix]

``--without-fix`` keeps BentoML's own request-timeout middleware, whose per-request
timer stayed alive for the whole timeout (120 s) with the request's context: the tracked
objects then grow by ~20 per request and the full collections' pauses with them. No
network and no wrk, so the count of objects is exact; the latencies are the app's own.
Needs a trained store (``bench/out/serving-store``, made on first use). Results are
printed and written to ``bench/out/serving_growth.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT))
KEY = "bench-key-0123456789abcdef"


class GcTimer:
    """Counts and times collections per generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.reset()
        self._t0 = 0.0

    def reset(self) -> None:
        self.count: collections.Counter = collections.Counter()
        self.total_ms: collections.Counter = collections.Counter()
        self.max_ms: collections.Counter = collections.Counter()

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        ms = (time.perf_counter() - self._t0) * 1000
        g = info["generation"]
        self.count[g] += 1
        self.total_ms[g] += ms
        self.max_ms[g] = max(self.max_ms[g], ms)


async def _run(app, body: bytes, window: int, windows: int, timer: GcTimer) -> list[dict]:
    import httpx
    import psutil

    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put))
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"service did not start: {started}")
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    rows = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=120) as client:
        gate = asyncio.Semaphore(32)
        latencies: list[float] = []

        async def one() -> None:
            async with gate:
                t = time.perf_counter()
                r = await client.post("/predict", content=body, headers=headers)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
                latencies.append((time.perf_counter() - t) * 1000)

        for w in range(windows):
            timer.reset()
            latencies.clear()
            t = time.perf_counter()
            await asyncio.gather(*[one() for _ in range(window)])
            seconds = time.perf_counter() - t
            latencies.sort()
            row = {"window": w, "requests": window, "rps": round(window / seconds, 1),
                   "p50_ms": round(latencies[len(latencies) // 2], 1),
                   "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 1),
                   "gc_full_n": timer.count[2], "gc_full_max_ms": round(timer.max_ms[2], 1),
                   "gc_total_ms": round(sum(timer.total_ms.values()), 1),
                   "tracked_objects": len(gc.get_objects()), "rss_mb": psutil.Process().memory_info().rss >> 20,
                   "load_1min": os.getloadavg()[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    lifespan.cancel()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=int, default=1500, help="requests per window")
    ap.add_argument("--windows", type=int, default=6)
    ap.add_argument("--without-fix", action="store_true", help="keep BentoML's timeout middleware (the leak)")
    args = ap.parse_args()

    from bench_serving import OUT, ensure_store

    store = ensure_store()
    os.environ.update(REFRACTURE_MLFLOW_DIR=str(store / "mlflow"), REFRACTURE_API_KEY=KEY, REFRACTURE_AUDIT_SALT="bench",
                      REFRACTURE_AUDIT_LOG=str(OUT / "growth-audit.jsonl"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if args.without_fix:
        from bentoml._internal.server.http import traffic

        original = traffic.TimeoutMiddleware
    from serving.scoring.examples import example_record
    from serving.service import RefractureRisk

    if args.without_fix:
        traffic.TimeoutMiddleware = original  # undo the swap made where the service is defined
    timer = GcTimer()
    gc.callbacks.append(timer)
    rows = asyncio.run(_run(RefractureRisk.to_asgi(), json.dumps(example_record()).encode(), args.window, args.windows, timer))
    out = OUT / f"serving_growth{'_without_fix' if args.without_fix else ''}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
