"""The drift reference stored with every model version (``features.drift.build_reference``).

Training logs it as the artifact ``drift_reference.json`` of the selected candidate's run
(the run whose model is registered) and tags the registered version with
``drift_reference`` = ``runs:/<run_id>/drift_reference.json``; a recalibrated version
copies its parent's tag (same score model, same training population). ``site-report``
compares a site with it and serving takes its Prometheus buckets from it. It holds
aggregates of at least 10 training rows only (see ``features.drift``), never a record.
"""

from __future__ import annotations

from typing import Any

import mlflow
import mlflow.artifacts

from features.drift import REFERENCE_FORMAT

#: Artifact name inside the candidate's run and the model-version tag pointing to it.
REFERENCE_ARTIFACT = "drift_reference.json"
REFERENCE_TAG = "drift_reference"


class ReferenceMissing(RuntimeError):
    """A model version has no stored drift reference (registered before issue 13)."""


def log_reference(reference: dict[str, Any], run_id: str) -> str:
    """Log ``reference`` into run ``run_id``; returns the ``runs:/`` URI for the version tag."""
    mlflow.MlflowClient().log_dict(run_id, reference, REFERENCE_ARTIFACT)
    return f"runs:/{run_id}/{REFERENCE_ARTIFACT}"


def load_reference(version_tags: dict[str, str], label: str = "this version") -> dict[str, Any]:
    """The reference a model version's tags point to (ReferenceMissing with what to do)."""
    uri = (version_tags or {}).get(REFERENCE_TAG)
    if not uri:
        raise ReferenceMissing(f"{label} has no stored drift reference (tag {REFERENCE_TAG!r}): it was registered "
                               "before references were stored. Retrain it with `refracture train`.")
    ref = mlflow.artifacts.load_dict(uri)
    if ref.get("format") != REFERENCE_FORMAT:
        raise ReferenceMissing(f"{label}: drift reference {uri} has format {ref.get('format')!r}, "
                               f"expected {REFERENCE_FORMAT!r}")
    return ref
