"""requirements-serve.lock (the Bento's and the service's environment) is what
scripts/serve_lock.py derives from requirements.lock, and holds every package the service's
code imports; the Bento installs it."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import yaml
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
#: The project's own top-level packages (not distributions of the lock).
OWN = {"features", "modelstore", "predictionlog", "training", "serving", "refracture"}
#: What the Bento ships (bentofile.yaml) and `refracture serve` / `predict` run.
SERVED_CODE = ("features", "modelstore", "predictionlog", "serving", "refracture/commands/serving.py", "refracture/options",
               "refracture/cli.py", "refracture/lazy_group.py")
#: Imported by served code only for `refracture predict --engine spark`, which needs the
#: `spark` extra (docs/deployment.md): never by the service.
SPARK_ONLY = {"pyspark", "py4j"}  # py4j: Spark's bridge to the JVM, imported only by the Spark engine


def _serve_lock_module():
    spec = importlib.util.spec_from_file_location("serve_lock", ROOT / "scripts" / "serve_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pinned(path: Path) -> set[str]:
    return {canonicalize_name(line.split("==")[0]) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")}


def _imported_top_level(paths) -> set[str]:
    """Top-level names every import statement (in functions too) of ``paths`` names."""
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - OWN - set(sys.stdlib_module_names) - {"__future__"}


def test_regenerating_the_serve_lock_gives_the_committed_file():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "serve_lock.py"), "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_serve_lock_is_the_full_lock_without_spark_and_the_test_tools():
    full, serve = _pinned(ROOT / "requirements.lock"), _pinned(ROOT / "requirements-serve.lock")
    assert serve < full
    assert {"bentoml", "mlflow", "xgboost-cpu", "shap", "scikit-learn", "pandas", "skops", "orjson", "typer"} <= serve
    assert not serve & {"pyspark", "py4j", "pytest", "playwright", "schemathesis", "hypothesis", "import-linter",
                        "optuna", "statsmodels"}
    # Same versions as the full lock, line for line.
    lines = {line for line in (ROOT / "requirements-serve.lock").read_text().splitlines() if not line.startswith("#")}
    assert lines <= set((ROOT / "requirements.lock").read_text().splitlines())


def test_a_stale_serve_lock_is_reported(tmp_path, monkeypatch):
    module = _serve_lock_module()
    stale = tmp_path / "requirements-serve.lock"
    stale.write_text(module.serve_lock_text().replace("bentoml==", "bentoml==0.", 1))
    monkeypatch.setattr(module, "SERVE_LOCK", stale)
    assert module.main(["--check"]) == 1
    stale.write_text(module.serve_lock_text())
    assert module.main(["--check"]) == 0


def test_every_package_the_served_code_imports_is_in_the_serve_lock():
    paths = [p for entry in SERVED_CODE for p in ([ROOT / entry] if entry.endswith(".py") else (ROOT / entry).rglob("*.py"))]
    names = _imported_top_level(paths)
    assert {"bentoml", "mlflow", "shap", "xgboost", "skops", "pyspark"} <= names  # function-level imports seen too
    owners = packages_distributions()
    serve = _pinned(ROOT / "requirements-serve.lock")
    missing = {name: owners.get(name) for name in names - SPARK_ONLY
               if not {canonicalize_name(d) for d in owners.get(name, [])} & serve}
    assert not missing, f"imported by the service's code but not in requirements-serve.lock: {missing}"


def test_the_bento_installs_the_serve_lock_and_ships_the_served_code():
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert bentofile["python"]["requirements_txt"] == "./requirements-serve.lock"
    assert "requirements-serve.lock" in bentofile["include"]
    assert not [entry for entry in bentofile["include"] if entry.startswith(("training/", "refracture/"))]
