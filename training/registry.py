"""The model registry: one registered model per outcome, ``refracture-<outcome>``.

Every version carries tags ``estimand`` (``modelstore.estimand.ESTIMAND``),
``horizons_months`` ("3,6,12,24") and ``horizon_months`` (the headline), which serving
checks against its configuration before it serves the version.

Aliases: ``champion`` (what serving loads) and ``challenger`` (a newer version that did
not beat the champion). Every alias move, automatic or by hand, is recorded as
model-version tags (``alias.<alias>.set_by`` / ``.set_at`` / ``.reason``), as a
registered-model tag ``last_alias_change`` and in the log.
"""

from __future__ import annotations

import getpass
import logging
from datetime import datetime, timezone
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ErrorCode, RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient

from modelstore.naming import ALIASES, CHALLENGER, CHAMPION, model_name
from modelstore.tracking import already_exists
from modelstore.artifact import load_model

logger = logging.getLogger(__name__)

__all__ = ["ALIASES", "CHALLENGER", "CHAMPION", "model_name", "current_version", "load_version", "register",
           "set_alias", "delete_version", "list_models", "beats"]
#: Metrics shown by ``refracture models`` (read from model-version tags).
KEY_METRICS = ("auroc", "log_loss", "brier", "calibration_slope")


def _client() -> MlflowClient:
    return MlflowClient()


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def current_version(outcome: str, alias: str = CHAMPION):
    """The model version holding ``alias``, or None when there is none (no registered
    model yet, or no version holds the alias).

    Any other registry error (a server that does not answer, a broken store) is raised:
    read as "no champion", it would hand the champion alias to the new model.
    """
    client = _client()
    name = model_name(outcome)
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise
    version = (registered.aliases or {}).get(alias)
    if version is None:
        return None
    return client.get_model_version(name, str(version))


def load_version(outcome: str, version: str):
    """Load a registered version's RefractureModel (old-format versions refused with a message)."""
    return load_model(f"models:/{model_name(outcome)}/{version}")


def register(model_uri: str, outcome: str, tags: dict[str, Any], description: str = ""):
    """Create a new version of ``refracture-<outcome>`` from ``model_uri`` (``models:/<model
    id>``, as ``modelstore.artifact.log_model`` returns it) with ``tags``. Returns the ModelVersion.

    The registered model is created here when it does not exist (with its description), and
    the version by the client, as ``mlflow.register_model`` would but without its attempt to
    create the registered model again, which printed "Registered model ... already exists" on
    a store created a moment before."""
    client = _client()
    name = model_name(outcome)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        try:
            client.create_registered_model(name, description=f"Calibrated risk of {outcome.replace('_', ' ')} after PVP/PKP.")
        except MlflowException as exc:
            if not already_exists(exc):  # another process on a shared server created it just now
                raise
    return client.create_model_version(name, source=model_uri, tags={k: str(v) for k, v in tags.items()},
                                       description=description or None, model_id=_logged_model_id(model_uri))


def _logged_model_id(model_uri: str) -> str | None:
    """``m-...`` of a logged model's URI ``models:/m-...``; None for any other URI."""
    rest = model_uri.removeprefix("models:/")
    return rest if rest != model_uri and rest and "/" not in rest and "@" not in rest else None


def set_alias(outcome: str, version: str, alias: str, reason: str, who: str | None = None) -> None:
    """Move ``alias`` to ``version`` and record who, when and why."""
    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
    client = _client()
    name = model_name(outcome)
    who = who or _who()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    previous = current_version(outcome, alias)
    client.set_registered_model_alias(name, alias, str(version))
    client.set_model_version_tag(name, str(version), f"alias.{alias}.set_by", who)
    client.set_model_version_tag(name, str(version), f"alias.{alias}.set_at", when)
    client.set_model_version_tag(name, str(version), f"alias.{alias}.reason", reason[:4000])
    moved = f"{alias}: v{previous.version if previous else '-'} -> v{version} by {who} at {when}: {reason}"
    client.set_registered_model_tag(name, "last_alias_change", moved[:4000])
    logger.info("%s %s", name, moved)


def delete_version(outcome: str, version: str) -> None:
    """Remove a version (used to undo a half-finished registration)."""
    _client().delete_model_version(model_name(outcome), str(version))


def list_models() -> list[dict[str, Any]]:
    """Every version of every ``refracture-*`` model: name, version, aliases, run, tags."""
    client = _client()
    rows = []
    for rm in client.search_registered_models(filter_string="name LIKE 'refracture-%'"):
        aliases_by_version: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases_by_version.setdefault(str(version), []).append(alias)
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            rows.append({
                "name": rm.name, "version": int(mv.version), "aliases": sorted(aliases_by_version.get(str(mv.version), [])),
                "run_id": mv.run_id, "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc),
                "tags": dict(mv.tags or {}),
            })
    return sorted(rows, key=lambda r: (r["name"], -r["version"]))


def beats(new_log_loss: float, old_log_loss: float) -> bool:
    """The rule for taking the champion alias: strictly lower test log loss on the same rows
    (a missing old score counts as beaten)."""
    return not np.isfinite(old_log_loss) or new_log_loss < old_log_loss
