"""Logging a model version to MLflow and loading one back, without pickles.

``log_model`` stores the model's parts (``RefractureModel.save``) as an MLflow artifact
folder and logs ``modelstore/pyfunc_entry.py`` as the model's code (MLflow
models-from-code). ``load_model`` refuses, with a message that says what to do, a version
logged before this format (a cloudpickled class) or by other code.
"""

from __future__ import annotations

import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow.artifacts
import mlflow.pyfunc
import pandas as pd
from packaging.requirements import InvalidRequirement, Requirement
from mlflow.models import Model
from mlflow.models.model import MODEL_CODE_PATH

from modelstore.model import ARTIFACT_KEY, FORMAT_VERSION, ModelFormatError, RefractureModel, record_signature

#: The models-from-code file MLflow stores with every version.
PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_entry.py")


def pip_requirements() -> list[str]:
    """Exact versions of what the model needs at load time (skips MLflow's slow inference)."""
    out = []
    for dist in ("mlflow", "numpy", "pandas", "scikit-learn", "xgboost-cpu", "shap", "scipy", "pyarrow", "skops"):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return out


def log_model(model: RefractureModel, input_example: pd.DataFrame, name: str = "model") -> str:
    """Log ``model`` to the active MLflow run; returns its model URI. The signature and
    input example describe flat records in and ``p_<m>m`` columns out."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save(Path(tmp) / ARTIFACT_KEY)
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(PYFUNC_ENTRY), artifacts={ARTIFACT_KEY: str(folder)},
            signature=record_signature(model.feature_names, model.horizons_months),
            input_example=input_example, pip_requirements=pip_requirements(),
        )
    return info.model_uri


def check_format(model_uri: str) -> None:
    """Raise ModelFormatError unless ``model_uri`` was logged by ``log_model`` (models-from-code)."""
    flavor = Model.load(model_uri).flavors.get("python_function", {})
    if MODEL_CODE_PATH not in flavor:
        raise ModelFormatError(
            f"{model_uri} was registered in the old format (a pickled Python class, one 24-month probability); this "
            f"code serves format {FORMAT_VERSION} (risk curves, no pickles). Retrain and register it with "
            "`refracture train`, then promote the new version.")


def requirement_mismatches(requirements: list[str]) -> list[str]:
    """The model's pip requirements this environment does not satisfy, in words.

    What MLflow's own check at ``pyfunc.load_model`` says, for the exact pins
    ``pip_requirements`` writes, without its scan of every installed package's files
    (1.3 s of a 1.6 s three-model load; ``bench/README.md``, issue 14)."""
    out = []
    for line in requirements:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            out.append(f"{req} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            out.append(f"{req} (installed: {installed})")
    return out


def load_model(model_uri: str) -> RefractureModel:
    """Load a logged or registered model (``models:/name/version``, ``runs:/...`` or a path).

    Downloaded once; a version whose pinned requirements this environment does not meet
    loads with a warning naming them (as MLflow's own check would)."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    check_format(str(local))
    requirements = local / "requirements.txt"
    if requirements.exists():
        mismatched = requirement_mismatches(requirements.read_text(encoding="utf-8").splitlines())
        if mismatched:
            warnings.warn(f"{model_uri} was logged with requirements this environment does not meet: "
                          f"{', '.join(mismatched)}; its predictions may differ.", stacklevel=2)
    return mlflow.pyfunc.load_model(str(local), suppress_warnings=True).unwrap_python_model()
