"""The tests mirror the packages, and no test folder can shadow a package.

tests/serving/ holds the tests of serving/, tests/features/simulator/ those of
features/simulator/, and so on; tests/system/ holds the cross-layer tests (processes, a
browser, a build, the layering) and tests/support/ the shared helpers. A folder named like
a package must never be what ``import serving`` finds: pytest runs in importlib mode, no
test folder is a package (no ``__init__.py``), and tests/support/ (the only test folder on
sys.path) holds no module named like a package.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: Every package the project ships (features, features.simulator, serving.ui, ...).
PACKAGES = PYPROJECT["tool"]["setuptools"]["packages"]
TOP_LEVEL = {name.split(".")[0] for name in PACKAGES}


def test_every_package_is_imported_from_the_checkout():
    for name in PACKAGES:
        module = importlib.import_module(name)  # __path__: the data folders (serving.ui.static) have no __init__.py
        assert [Path(entry).resolve() for entry in module.__path__] == [ROOT / name.replace(".", "/")], (name, module.__path__)
    # mlflow/ in the checkout is the local tracking store (never a .py file): not the library.
    import mlflow
    assert not Path(mlflow.__file__).resolve().is_relative_to(ROOT), mlflow.__file__


def test_no_test_folder_is_a_package_or_on_the_import_path():
    assert not sorted(TESTS.rglob("__init__.py"))
    assert "--import-mode=importlib" in PYPROJECT["tool"]["pytest"]["ini_options"]["addopts"].split()
    assert __name__.endswith("tests.system.test_layout"), __name__  # imported under its path, not as "test_layout"
    on_path = {Path(entry).resolve() for entry in sys.path if entry}
    test_folders = {path.parent for path in TESTS.rglob("test_*.py")}
    assert not test_folders & on_path
    assert TESTS / "support" in on_path
    support_names = {path.stem for path in (TESTS / "support").iterdir() if path.name != "__pycache__"}
    assert not support_names & (TOP_LEVEL | {"mlflow", "tests"}), support_names


def test_test_modules_sit_in_the_folder_of_their_package():
    """tests/<package path>/ or tests/system/; never directly in tests/ or in tests/support/."""
    misplaced = []
    for path in sorted(TESTS.rglob("test_*.py")):
        folder = path.parent.relative_to(TESTS)
        if folder != Path("system") and not (folder.parts and (ROOT / folder / "__init__.py").is_file()):
            misplaced.append(str(path.relative_to(TESTS)))
    assert not misplaced, f"move these into the folder of the package they test (or system/): {misplaced}"


def test_every_slow_module_named_in_conftest_exists(pytestconfig):
    """SLOW_MODULES names paths under tests/; a stale entry would quietly put a slow module in the fast tier."""
    (conftest,) = [plugin for plugin in pytestconfig.pluginmanager.get_plugins()
                   if Path(getattr(plugin, "__file__", None) or "/").resolve() == TESTS / "conftest.py"]
    assert conftest.SLOW_MODULES
    assert not sorted(name for name in conftest.SLOW_MODULES if not (TESTS / name).is_file())
