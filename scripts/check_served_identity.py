"""Check that a refactor leaves served probabilities and explanations unchanged.

Run it twice on the same trained store, once with the code before the change and once
with the code after, then compare::

    PYTHONPATH=<old tree> python scripts/check_served_identity.py train DIR      # old code trains
    PYTHONPATH=<old tree> python scripts/check_served_identity.py score DIR old.json
    PYTHONPATH=<new tree> python scripts/check_served_identity.py score DIR new.json
    python scripts/check_served_identity.py compare old.json new.json

``score`` takes the service's own path: JSON bodies -> ``serving.http.validation.parse_body``
-> ``features.records.inspect_records`` -> ``serving.scoring.served_models.ServedModels.score(explain=True)``,
with the champions loaded from the store's registry. ``compare`` prints the largest
absolute difference of any probability, base value or SHAP contribution and exits 1 if it
is above 1e-12. The imports work with both the old and the new module layout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

TOLERANCE = 1e-12
N_RECORDS = 200


def _read_raw(path: Path):
    try:
        from features.io import read_raw
    except ImportError:  # the layout before the layering (raw I/O in the CLI package)
        from refracture.io import read_raw
    return read_raw(path)


def train(base: Path) -> None:
    from features.simulator import load_profile, simulate
    from training.config import TrainConfig
    from training.pipeline import run

    try:
        from features.io import write_raw
    except ImportError:
        from refracture.io import write_raw
    tables, _truth = simulate(load_profile("xiong2021-pvp"), 1500, 3)
    write_raw(tables, base / "raw")
    cfg = TrainConfig(raw_dir=base / "raw", search_trials=0, candidates=("xgboost",), n_bootstrap=50, cv_folds=2,
                      n_jobs=1, shap_rows=50, store_dir=base / "mlflow")
    results = run(cfg)
    print([(r.outcome, r.refused, r.alias) for r in results])


def _bodies(base: Path) -> list[bytes]:
    import pandas as pd

    from features.records import nest_record, tables_to_records
    from features.validate import validate_raw

    flat = tables_to_records(validate_raw(_read_raw(base / "raw"))).head(N_RECORDS)
    bodies = []
    for row in flat.to_dict("records"):
        clean = {k: (v.strftime("%Y-%m-%d") if isinstance(v, pd.Timestamp) else v)
                 for k, v in row.items() if v is not None and (isinstance(v, str) or not pd.isna(v))}
        bodies.append(json.dumps(nest_record(clean)).encode())
    return bodies


def score(base: Path, out: Path) -> None:
    os.environ["REFRACTURE_MLFLOW_DIR"] = str(base / "mlflow")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from features.records import inspect_records
    from serving.scoring.loading import load_from_registry
    try:
        from serving.scoring.served_models import ServedModels
    except ImportError:  # the name before the refactor
        from serving.scoring.served_models import Scorer as ServedModels
    from serving.http.validation import finish, parse_body

    scorer = ServedModels(load_from_registry())
    results = []
    for body in _bodies(base):
        parsed = parse_body(body, 100)
        inspected = inspect_records(parsed.flat)
        final = finish(parsed, inspected.errors)
        assert final.ok, final.errors
        results.extend(scorer.score(parsed.flat, parsed.procedure_ids, explain=True, typed=inspected.typed))
    out.write_text(json.dumps(results))
    print(f"scored {len(results)} records with {', '.join(scorer.outcomes)} -> {out}")


def _numbers(item, path=""):
    """Every number in a scored answer, keyed by its path (probabilities, base values,
    contributions, feature values)."""
    if isinstance(item, dict):
        for k, v in item.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(item, list):
        for i, v in enumerate(item):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(item, (int, float)) and not isinstance(item, bool):
        yield path, float(item)


def compare(old: Path, new: Path) -> int:
    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    na, nb = dict(_numbers(a)), dict(_numbers(b))
    if na.keys() != nb.keys():
        print(f"different answer shapes: {len(na.keys() ^ nb.keys())} paths differ")
        return 1
    strings_differ = json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True) and \
        [x for x in _strings(a)] != [x for x in _strings(b)]
    worst = max((abs(na[k] - nb[k]), k) for k in na)
    n_prob = sum(1 for k in na if k.endswith(".probability"))
    print(f"{len(na)} numbers ({n_prob} probabilities) compared; largest absolute difference {worst[0]:.3g} at {worst[1]}")
    print("texts (bands, factors, units) identical" if not strings_differ else "texts differ")
    return 0 if worst[0] <= TOLERANCE and not strings_differ else 1


def _strings(item):
    if isinstance(item, dict):
        for v in item.values():
            yield from _strings(v)
    elif isinstance(item, list):
        for v in item:
            yield from _strings(v)
    elif isinstance(item, str):
        yield item


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "train":
        train(Path(args[0]))
    elif cmd == "score":
        score(Path(args[0]), Path(args[1]))
    elif cmd == "compare":
        sys.exit(compare(Path(args[0]), Path(args[1])))
    else:
        sys.exit(f"unknown command {cmd!r}: train, score or compare")
