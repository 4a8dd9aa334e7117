"""How long do the horizon metrics with bootstrap CIs take? (issue 11)

Simulates ``--rows`` procedures with exponential event, death and uniform censoring times
(whole days), a noisy model and the true cumulative incidence at 3, 6, 12 and 24 months,
and times ``training.time_metrics.evaluate_at_horizons`` with ``--boot`` resamples, model
only and model + oracle. Prints wall and CPU seconds per repeat and their medians; on a
shared machine the CPU time is the steadier figure.

    .venv/bin/python bench/bench_time_metrics.py --rows 10000 --boot 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HORIZONS_DAYS = tuple(m * 365.25 / 12 for m in (3, 6, 12, 24))


def simulate(n: int, rng: np.random.Generator):
    """(time_days, status, predicted risk per horizon, true risk per horizon)."""
    x = rng.normal(size=n)
    rate_event = np.exp(np.log(1 / 1500) + 0.9 * x)  # per day; an assumption, not a source
    rate_death = 1 / 2500
    te, td, tc = rng.exponential(1 / rate_event), rng.exponential(1 / rate_death, n), rng.uniform(0, 900, n)
    t = np.ceil(np.minimum.reduce([te, td, tc]))
    s = np.where(np.minimum(te, td) <= tc, np.where(te < td, 1, 2), 0)
    total = rate_event + rate_death
    truth = {h: rate_event / total * (1 - np.exp(-total * h)) for h in HORIZONS_DAYS}
    pred = {h: np.clip(p * np.exp(rng.normal(0, 0.3, n)), 0, 1) for h, p in truth.items()}
    return t, s, pred, truth


def main(argv: list[str] | None = None) -> int:
    from training.time_metrics import evaluate_at_horizons

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    t, s, pred, truth = simulate(args.rows, np.random.default_rng(1))
    for label, kwargs in (("model only", {}), ("model + oracle", {"truth": truth})):
        wall, cpu = [], []
        for _ in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            evaluate_at_horizons(t, s, pred, n_boot=args.boot, seed=0, patients=None, **kwargs)  # rows independent
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        print(f"{label}: {args.rows} rows x {len(HORIZONS_DAYS)} horizons x {args.boot} resamples: "
              f"wall median {np.median(wall):.2f} s {np.round(wall, 2).tolist()}, "
              f"cpu median {np.median(cpu):.2f} s {np.round(cpu, 2).tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
