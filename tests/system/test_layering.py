"""The package layering (docs/architecture.md) holds: import-linter's contracts in
pyproject.toml, checked with the real ``lint-imports`` on this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_layering_contracts_are_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layering(tmp_path):
    """The contract is not vacuous: a feature module importing the CLI is reported."""
    for package in ("features", "modelstore", "training", "serving", "refracture"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "features" / "upward.py").write_text("import refracture.cli\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "features.upward -> refracture.cli" in result.stdout
