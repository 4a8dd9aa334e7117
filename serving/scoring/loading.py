"""Finding and loading the served models: MLflow registry, or the models bundled in a Bento.

Registry mode (``refracture serve``): for each outcome, the ``champion`` alias of
``refracture-<outcome>`` is resolved **once, at start** to a concrete version, and that
version (``models:/<name>/<version>``) is loaded and served until the process ends. A new
champion is picked up by a restart, never mid-flight. The death model
(``refracture-death``, the context) is optional: served when it has a champion (or a
pinned version), left out otherwise, and the service still starts.

Bento mode (inside a Bento, ``REFRACTURE_MODEL_SOURCE=bento``): the versions pinned at
build time by ``refracture bento`` are read from ``serving/bento_models.json`` and loaded
from the BentoML model store the Bento carries, so the Bento runs without the registry.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import bentoml
import mlflow.artifacts
import mlflow.pyfunc
from bentoml.exceptions import NotFound
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from features.drift import REFERENCE_FORMAT
from features.labels import DEATH_TARGET, OUTCOMES
from modelstore.drift_reference import REFERENCE_ARTIFACT, ReferenceMissing, load_reference
from modelstore.naming import CHALLENGER, CHAMPION, model_name
from modelstore.tracking import configure_tracking
from serving.scoring.served_models import LoadedModel
from modelstore.artifact import load_model
from modelstore.estimand import DEFAULT_HORIZONS_MONTHS, HEADLINE_HORIZON_MONTHS, estimand_of, horizons_text
from modelstore.model import ModelFormatError

logger = logging.getLogger(__name__)

ENV_MODEL_SOURCE = "REFRACTURE_MODEL_SOURCE"
#: Optional models: served when registered, else left out (the answers then carry no context).
OPTIONAL_TARGETS = (DEATH_TARGET,)
#: What the service serves: every model must predict its target's estimand
#: (``modelstore.estimand.estimand_of``) at these horizons (its headline among them), or the
#: start is refused (the page and API show curves).
SERVED_HORIZONS_MONTHS = DEFAULT_HORIZONS_MONTHS
SERVED_HEADLINE_MONTHS = HEADLINE_HORIZON_MONTHS
BUNDLE_MANIFEST = Path(__file__).resolve().parents[1] / "bento_models.json"  # serving/, as bentofile.yaml packs it


class ModelsUnavailable(RuntimeError):
    """A served model cannot be found or loaded; the message says which and how to fix it."""


@dataclass(frozen=True)
class Pin:
    """A registered model version chosen to be served."""

    outcome: str
    name: str
    version: str
    run_id: str | None = None


def resolve_pins(pinned_versions: dict[str, str] | None = None, alias: str = CHAMPION) -> list[Pin]:
    """Resolve each outcome's alias (or the explicitly pinned version) to a concrete version,
    and the death model's when it has one (a pinned death version must exist).

    Raises ModelsUnavailable listing every outcome that has no such model.
    """
    client = MlflowClient()
    pins, problems = [], []
    for outcome in OUTCOMES + OPTIONAL_TARGETS:
        name = model_name(outcome)
        pinned = bool(pinned_versions and outcome in pinned_versions)
        try:
            if pinned:
                mv = client.get_model_version(name, pinned_versions[outcome])
            else:
                mv = client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if outcome in OPTIONAL_TARGETS and not pinned:
                logger.warning("no %s model (%s): serving without the death context", name,
                               str(exc).splitlines()[0][:200])
                continue
            wanted = f"version {pinned_versions[outcome]}" if pinned_versions and outcome in pinned_versions else f"alias '{alias}'"
            problems.append(f"{name} ({wanted}): {str(exc).splitlines()[0][:200]}")
            continue
        pins.append(Pin(outcome, name, str(mv.version), mv.run_id))
    if problems:
        raise ModelsUnavailable(
            "cannot resolve the served models in the MLflow registry "
            f"({os.environ.get('MLFLOW_TRACKING_URI') or 'local store'}):\n  - " + "\n  - ".join(problems)
            + "\nTrain and register them first: `refracture train --raw DIR --outcome all`."
        )
    return pins


def load_pins(pins: list[Pin]) -> list[LoadedModel]:
    """Load each pinned version from the registry (``models:/<name>/<version>``)."""
    loaded = []
    for pin in pins:
        uri = f"models:/{pin.name}/{pin.version}"
        try:
            model = load_model(uri)
        except ModelFormatError as exc:
            raise ModelsUnavailable(f"cannot serve {uri}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - any load failure stops the start, with the URI named
            raise ModelsUnavailable(f"cannot load {uri}: {exc}") from exc
        _check_outcome(model, pin.outcome, uri)
        loaded.append(LoadedModel(pin.outcome, pin.name, pin.version, model, pin.run_id, source=uri))
        logger.info("loaded %s (run %s)", uri, pin.run_id)
    return loaded


def load_challengers(served: dict[str, str]) -> list[LoadedModel]:
    """The ``challenger`` version of each served outcome (``served``: outcome -> served
    version), for shadow scoring; outcomes without one, or whose challenger is the served
    version, are left out (said in the log)."""
    client = MlflowClient()
    pins = []
    for outcome, version in served.items():
        if outcome not in OUTCOMES:
            continue
        try:
            mv = client.get_model_version_by_alias(model_name(outcome), CHALLENGER)
        except MlflowException:
            logger.info("%s: no challenger to score in shadow", model_name(outcome))
            continue
        if str(mv.version) != str(version):
            pins.append(Pin(outcome, model_name(outcome), str(mv.version), mv.run_id))
    return load_pins(pins)


def _check_outcome(model, outcome: str, where: str) -> None:
    """Refuse a model for another outcome, estimand or set of horizons than served (the
    death model: all-cause mortality, ``modelstore.estimand.DEATH_ESTIMAND``)."""
    if getattr(model, "outcome", outcome) != outcome:
        raise ModelsUnavailable(f"{where} predicts {model.outcome!r}, not {outcome!r}")
    estimand, served = getattr(model, "estimand", None), estimand_of(outcome)
    if estimand != served:
        raise ModelsUnavailable(f"{where} predicts {estimand!r}; this service serves {served!r}. "
                                "Retrain with `refracture train` and promote the new version.")
    horizons = tuple(getattr(model, "horizons_months", ()))
    headline = getattr(model, "horizon_months", None)
    if horizons != SERVED_HORIZONS_MONTHS or headline != SERVED_HEADLINE_MONTHS:
        raise ModelsUnavailable(
            f"{where} predicts at {horizons_text(horizons) or 'no'} months (headline {headline}); this service serves "
            f"{horizons_text(SERVED_HORIZONS_MONTHS)} months (headline {SERVED_HEADLINE_MONTHS:g}). Retrain with the "
            "default horizons, or change the service's configuration.")


def load_from_registry(pinned_versions: dict[str, str] | None = None) -> list[LoadedModel]:
    """Resolve and load every outcome's model from the configured MLflow registry."""
    configure_tracking()
    return load_pins(resolve_pins(pinned_versions))


# --------------------------------------------------------------------------- bento


def bento_tag(pin: Pin) -> str:
    """BentoML model tag of a registry version: name and version plus the run, so two
    registries' 'version 3' never collide in one model store."""
    run = (pin.run_id or "norun")[:12]
    return f"{pin.name}:v{pin.version}-{run}"


def read_manifest(path: Path = BUNDLE_MANIFEST) -> dict[str, dict]:
    """The pinned models of a Bento build: {outcome: {tag, name, version, run_id}}; {} if none."""
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def export_to_bentoml(pins: list[Pin], manifest_path: Path = BUNDLE_MANIFEST) -> dict[str, dict]:
    """Copy each pinned MLflow model into the BentoML model store and write the manifest
    that the service (and ``bentoml build``) read. Returns the manifest."""
    manifest: dict[str, dict] = {}
    for pin in pins:
        tag = bento_tag(pin)
        try:
            bentoml.models.get(tag)
            logger.info("%s already in the BentoML model store", tag)
        except NotFound:
            with tempfile.TemporaryDirectory() as tmp:
                local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{pin.name}/{pin.version}", dst_path=tmp)
                name, version = tag.split(":")
                reference = _version_reference(pin)
                with bentoml.models.create(
                    f"{name}:{version}",
                    labels={"outcome": pin.outcome, "registry_version": pin.version},
                    metadata={"registered_model": pin.name, "registry_version": pin.version, "run_id": pin.run_id or "",
                              "drift_reference": bool(reference)},
                ) as bm:
                    shutil.copytree(local, Path(bm.path) / "mlflow_model", dirs_exist_ok=True)
                    if reference:  # aggregates of >= 10 training rows, no record (features.drift)
                        (Path(bm.path) / REFERENCE_ARTIFACT).write_text(json.dumps(reference), encoding="utf-8")
            logger.info("exported models:/%s/%s to BentoML model %s", pin.name, pin.version, tag)
        manifest[pin.outcome] = {"tag": tag, "name": pin.name, "version": pin.version, "run_id": pin.run_id}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _version_reference(pin: Pin) -> dict | None:
    """The drift reference stored with a registry version (its ``drift_reference`` tag, else
    its run's artifact), or None for a version registered before references existed."""
    try:
        mv = MlflowClient().get_model_version(pin.name, pin.version)
        return load_reference(dict(mv.tags or {}), f"{pin.name} v{pin.version}")
    except ReferenceMissing as exc:
        logger.warning("%s: the Bento's /metrics will have no input histograms", exc)
    except Exception as exc:  # noqa: BLE001 - the reference is for monitoring: it never blocks a build
        logger.warning("%s v%s: drift reference not read (%s); the Bento's /metrics will have no input histograms",
                       pin.name, pin.version, str(exc).splitlines()[0][:200])
    return None


def bento_reference(model_dir: Path) -> dict | None:
    """The drift reference a Bento carries beside a model (None if built without one)."""
    path = Path(model_dir) / REFERENCE_ARTIFACT
    if not path.exists():
        return None
    ref = json.loads(path.read_text(encoding="utf-8"))
    if ref.get("format") != REFERENCE_FORMAT:
        logger.warning("%s has format %r, expected %r: not used", path, ref.get("format"), REFERENCE_FORMAT)
        return None
    return ref


def load_from_bento(manifest: dict[str, dict]) -> list[LoadedModel]:
    """Load the models a Bento carries (no registry involved): every outcome's, and the
    death model's when the Bento was built with one."""
    missing = [o for o in OUTCOMES if o not in manifest]
    if missing:
        raise ModelsUnavailable(f"{BUNDLE_MANIFEST.name} has no model for {', '.join(missing)}: rebuild with `refracture bento`")
    loaded = []
    for outcome in OUTCOMES + tuple(o for o in OPTIONAL_TARGETS if o in manifest):
        entry = manifest[outcome]
        folder = Path(bentoml.models.get(entry["tag"]).path)
        path = folder / "mlflow_model"
        try:
            model = load_model(str(path))
        except ModelFormatError as exc:
            raise ModelsUnavailable(f"cannot serve {entry['tag']}: {exc}") from exc
        _check_outcome(model, outcome, entry["tag"])
        loaded.append(LoadedModel(outcome, entry["name"], str(entry["version"]), model, entry.get("run_id"),
                                  source=f"bento:{entry['tag']}", drift_reference=bento_reference(folder)))
    return loaded


def running_in_bento() -> bool:
    """True when this code runs from a built Bento (``<bento>/src/serving/...`` beside
    ``<bento>/bento.yaml``). ``bentoml serve <bento>`` does not apply the Bento's ``envs``
    outside a container, so the layout, not only the variable, says where we are."""
    return (Path(__file__).resolve().parents[3] / "bento.yaml").exists()  # <bento>/src/serving/scoring/


def load_served_models(pinned_versions: dict[str, str] | None = None) -> list[LoadedModel]:
    """The models to serve: from the Bento when running in one (or when
    ``REFRACTURE_MODEL_SOURCE=bento``), else from the registry (champion alias, or
    ``pinned_versions``)."""
    default = "bento" if running_in_bento() else "registry"
    source = os.environ.get(ENV_MODEL_SOURCE, default).strip().lower()
    if source == "bento":
        return load_from_bento(read_manifest())
    if source != "registry":
        raise ModelsUnavailable(f"{ENV_MODEL_SOURCE}={source!r}: use 'registry' or 'bento'")
    return load_from_registry(pinned_versions)
