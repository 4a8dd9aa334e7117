"""The project installs as a wheel, not only as an editable checkout.

A clean copy of the tracked sources is built into a wheel (no setuptools warning), the
wheel is installed into a fresh virtual environment outside the checkout, and its own
``refracture`` runs ``--help`` and ``synth``; ``bentoml build`` builds the service from the
same sources. Offline and fast-ish: the new environment takes the already installed
dependencies from the project's environment through a ``.pth`` line (which adds that
folder only, not its editable-install hooks), and the wheel is installed with ``--no-deps``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """The tracked files of this checkout (what a release is built from), copied."""
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        path = ROOT / name
        if path.is_file() and not path.is_symlink():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(path.read_bytes())
    return src


@pytest.fixture(scope="module")
def installed(sources, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its bin folder."""
    dist = tmp_path_factory.mktemp("dist")
    build = _run([sys.executable, "-m", "pip", "wheel", str(sources), "--no-deps", "--no-build-isolation",
                  "--no-index", "-w", str(dist)], cwd=dist, env=_clean_env())
    assert "warning" not in (build.stdout + build.stderr).lower(), build.stdout + build.stderr
    (wheel,) = dist.glob("refracture_risk-*.whl")

    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=env_dir, env=_clean_env()).stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         cwd=env_dir, env=_clean_env())
    return env_dir / "bin"


def test_the_wheel_holds_every_package_and_its_data(installed, tmp_path):
    code = ("import features, features.simulator, modelstore, serving.ui, refracture.commands, training;"
            "from importlib.resources import files;"
            "print(features.__file__);"
            "print(sorted(p.name for p in files('features.profiles').iterdir() if p.name.endswith('.yaml')));"
            "print(sorted(p.name for p in files('serving.ui.static').iterdir()))")
    out = _run([str(installed / "python"), "-c", code], cwd=tmp_path, env=_clean_env()).stdout.splitlines()
    assert out[0].startswith(str(installed.parent)), out[0]  # the installed copy, not the checkout
    assert out[1] == str(sorted(p.name for p in (ROOT / "features" / "profiles").glob("*.yaml")))
    assert out[2] == str(sorted(p.name for p in (ROOT / "serving" / "ui" / "static").iterdir()))


def test_the_installed_command_runs_help_and_synth(installed, tmp_path):
    helped = _run([str(installed / "refracture"), "--help"], cwd=tmp_path, env=_clean_env())
    assert "synth" in helped.stdout and "serve" in helped.stdout
    _run([str(installed / "refracture"), "synth", "--n", "200", "--seed", "1", "--out", str(tmp_path / "cohort")],
         cwd=tmp_path, env=_clean_env())
    assert {p.name for p in (tmp_path / "cohort").glob("*.csv")} >= {"patients.csv", "procedures.csv", "imaging.csv",
                                                                      "events.csv"}
    _run([str(installed / "refracture"), "validate", "--raw", str(tmp_path / "cohort")], cwd=tmp_path, env=_clean_env())


def test_bentoml_builds_the_service_from_the_sources(sources, installed, tmp_path):
    env = _clean_env(BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="True")
    built = _run([str(installed / "python"), "-m", "bentoml", "build", ".", "--output", "tag"], cwd=sources, env=env)
    assert "refracture-risk:" in built.stdout
    bentos = list((tmp_path / "bentoml" / "bentos" / "refracture-risk").glob("*/src/serving/ui/static/index.html"))
    assert bentos, "the Bento carries the clinician page"
    assert list((tmp_path / "bentoml" / "bentos" / "refracture-risk").glob("*/src/modelstore/tracking.py"))
