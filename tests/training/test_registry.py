"""``training.registry.current_version``: only "not found" means "no champion"; any other
registry error stops the promotion instead of handing the alias to the new model."""

from __future__ import annotations

import contextlib
import io

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from modelstore.naming import CHAMPION, model_name
from modelstore.tracking import configure_tracking, get_or_create_experiment
from training import registry

OUTCOME = "adjacent_fracture"


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return model_input


class _Registry:
    """A registry client that answers ``get_registered_model`` with a fixed error or model."""

    def __init__(self, error: MlflowException | None = None, aliases: dict[str, str] | None = None):
        self.error, self.aliases = error, aliases or {}

    def get_registered_model(self, name):
        if self.error is not None:
            raise self.error
        return type("RegisteredModel", (), {"name": name, "aliases": self.aliases})()

    def get_model_version(self, name, version):
        return type("ModelVersion", (), {"name": name, "version": version})()


def test_not_found_is_no_champion(monkeypatch):
    missing = MlflowException("Registered Model with name=x not found", RESOURCE_DOES_NOT_EXIST)
    monkeypatch.setattr(registry, "_client", lambda: _Registry(error=missing))
    assert registry.current_version(OUTCOME) is None


def test_other_registry_errors_stop_the_promotion(monkeypatch):
    transient = MlflowException("registry temporarily unavailable", TEMPORARILY_UNAVAILABLE)
    monkeypatch.setattr(registry, "_client", lambda: _Registry(error=transient))
    with pytest.raises(MlflowException, match="temporarily unavailable"):
        registry.current_version(OUTCOME)


def test_the_alias_is_looked_up_on_the_registered_model(monkeypatch):
    monkeypatch.setattr(registry, "_client", lambda: _Registry(aliases={CHAMPION: "3"}))
    assert registry.current_version(OUTCOME, CHAMPION).version == "3"
    assert registry.current_version(OUTCOME, "challenger") is None


# The same against a real MLflow store (slow: creating a SQLite store takes seconds).


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """One store (an MLflow SQLite store takes seconds to create): no model for
    ``remote_fracture``, a version without alias (v1) then the champion (v2) of ``OUTCOME``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        configure_tracking(tmp_path_factory.mktemp("registry") / "mlflow")
        # An experiment with its artifacts beside the store (the default one writes ./mlruns).
        with mlflow.start_run(experiment_id=get_or_create_experiment("registry-test")) as run:
            info = mlflow.pyfunc.log_model(name="model", python_model=_Constant())
        printed = io.StringIO()
        with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
            first_version = registry.register(info.model_uri, OUTCOME, tags={"log_loss": 0.3}, description="why")
        first = first_version.version
        before_alias = registry.current_version(OUTCOME, CHAMPION)
        second = registry.register(info.model_uri, OUTCOME, tags={"log_loss": 0.2}).version
        registry.set_alias(OUTCOME, second, CHAMPION, reason="test")
        yield {"first": first, "second": second, "before_alias": before_alias, "printed": printed.getvalue(),
               "first_version": first_version, "run_id": run.info.run_id, "model_uri": info.model_uri,
               "no_model": registry.current_version("remote_fracture", CHAMPION),
               "champion": registry.current_version(OUTCOME, CHAMPION)}


@pytest.mark.slow
def test_no_registered_model_is_no_champion(versions):
    assert versions["no_model"] is None


@pytest.mark.slow
def test_the_first_version_is_registered_silently_with_its_run(versions):
    """No "Registered model ... already exists" on a store created a moment before (what
    mlflow.register_model printed after we had created the registered model), and the
    version knows its run, source and description as register_model recorded them."""
    assert versions["printed"] == ""
    mv = versions["first_version"]
    assert (mv.run_id, mv.source, mv.description) == (versions["run_id"], versions["model_uri"], "why")
    assert mv.tags == {"log_loss": "0.3"}


@pytest.mark.slow
def test_a_model_without_the_alias_has_no_champion(versions):
    assert str(versions["first"]) == "1" and versions["before_alias"] is None


@pytest.mark.slow
def test_the_alias_holder_is_returned(versions):
    assert versions["champion"].version == versions["second"]


@pytest.mark.slow
def test_a_transient_registry_error_is_raised_not_read_as_no_champion(versions, monkeypatch):

    def unavailable(self, name):
        raise MlflowException(f"registry for {name} is temporarily unavailable", TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(MlflowClient, "get_registered_model", unavailable)
    with pytest.raises(MlflowException, match="temporarily unavailable"):
        registry.current_version(OUTCOME, CHAMPION)
    # Registration does not take it as "create the registered model" either.
    with pytest.raises(MlflowException, match="temporarily unavailable"):
        registry.register("runs:/0/model", OUTCOME, tags={})


def test_the_naming_rule_refuses_an_unknown_outcome():
    assert model_name(OUTCOME) == "refracture-adjacent_fracture"
    with pytest.raises(ValueError, match="unknown outcome"):
        model_name("hip_fracture")
