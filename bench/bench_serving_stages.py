"""Where a /predict or /explain batch spends its time, stage by stage, in-process (issue 4).

The HTTP benchmark (``bench_serving.py``) says how fast the service is; this one says why.
It loads the bench store's champions (``bench/out/serving-store``, trained by
``bench_serving.py`` on first use) and times, for a batch of B single-record requests as
the micro-batcher sees them at B concurrent clients:

- ``parse``: ``serving.http.validation.parse_body`` of each request body (per request, on the
  event loop);
- ``process``: the batch as ``RefractureRisk._process`` runs it (contract checks, features,
  three models, missing-input reports, explanations, JSON), split into its stages.

Medians over ``--repeats`` runs, in milliseconds per batch.

    .venv/bin/python bench/bench_serving_stages.py --batch 1,32 --repeats 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="1,32", help="comma-separated batch sizes (requests of one record)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the largest batch's process()")
    args = ap.parse_args(argv)

    from serving_support import ensure_trained_store, store_env

    store = ensure_trained_store(ROOT / "bench" / "out")
    os.environ.update({k: v for k, v in store_env(store).items() if k.startswith(("REFRACTURE", "BENTOML", "MLFLOW"))})

    from features.records import inspect_records, json_record, missing_fields, records_frame
    from serving.scoring.loading import load_served_models
    from serving.scoring.served_models import SERVING_THREADS, ServedModels, use_threads
    from serving.http.validation import parse_body, rows_frame
    from serving_support import valid_flat_records

    models = load_served_models(None)
    use_threads(models, SERVING_THREADS)  # as the service does
    scorer = ServedModels(models)
    flat = valid_flat_records(store, 64)
    bodies = [json.dumps(json_record(row)).encode() for row in flat.to_dict(orient="records")]
    scorer.score(records_frame([json.loads(bodies[0])]), ["warm"], explain=True)

    def timed(fn, *a, **k):
        t = time.perf_counter()
        out = fn(*a, **k)
        return out, 1000 * (time.perf_counter() - t)

    print("| batch | stage | ms per batch (median) | ms per record |")
    print("|---|---|---|---|")
    for b in [int(x) for x in args.batch.split(",")]:
        stages: dict[str, list[float]] = {}
        for r in range(args.repeats):
            chosen = [bodies[(r + i) % len(bodies)] for i in range(b)]
            t0 = time.perf_counter()
            parsed = [parse_body(body, 1000) for body in chosen]
            stages.setdefault("parse (all requests)", []).append(1000 * (time.perf_counter() - t0))
            merged, ms = timed(rows_frame, [row for p in parsed for row in p.rows])
            stages.setdefault("merge requests", []).append(ms)
            inspected, ms = timed(inspect_records, merged)
            assert not inspected.errors, inspected.errors[:3]
            stages.setdefault("inspect_records (read + check)", []).append(ms)
            ids = [p.procedure_ids[0] for p in parsed]
            for explain in (False, True):
                name = "explain" if explain else "predict"
                out, ms = timed(scorer.score, merged, ids, explain=explain, typed=inspected.typed)
                stages.setdefault(f"score ({name})", []).append(ms)
                _, ms = timed(lambda: [json.dumps({"predictions": [o]}, separators=(",", ":")) for o in out])
                stages.setdefault(f"json ({name})", []).append(ms)
            feats, ms = timed(scorer.features, merged.reset_index(drop=True), inspected.typed)
            stages.setdefault("  of which features", []).append(ms)
            for m in models:
                X = feats[m.outcome]
                _, ms = timed(m.model.proba_from_features, X)
                stages.setdefault("  of which probability (3 models)", []).append(ms)
                _, ms = timed(m.model.missing_inputs_from_features, merged, X, missing_fields(inspected.typed))
                stages.setdefault("  of which missing inputs (3 models)", []).append(ms)
                _, ms = timed(m.model.explain_features, X)
                stages.setdefault("  of which SHAP (3 models)", []).append(ms)
        for name, values in stages.items():
            if name.startswith("  of which") and "3 models" in name:
                values = [sum(values[i:i + 3]) for i in range(0, len(values), 3)]
            med = statistics.median(values)
            print(f"| {b} | {name} | {med:.2f} | {med / b:.3f} |")
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            for _ in range(10):
                m2 = rows_frame([row for p in parsed for row in p.rows])
                scorer.score(m2, ids, explain=False, typed=inspect_records(m2).typed)
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
