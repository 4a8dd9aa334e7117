"""MLflow models-from-code entry point of a refracture model (logged as the model's code).

MLflow runs this file when a version is loaded: it hands MLflow an empty
``RefractureModel``, which ``load_context`` fills from the logged artifact folder (JSON,
XGBoost JSON, skops and NumPy files; no pickle). Keep it free of logic: the stored format
is read by ``modelstore.model.RefractureModel.load``.
"""

from mlflow.models import set_model

from modelstore.model import RefractureModel

set_model(RefractureModel())
