"""The Bento's installed environment: its size, and that it serves.

    .venv/bin/python bench/bench_bento_env.py --label after                    # bentofile.yaml of this checkout
    .venv/bin/python bench/bench_bento_env.py --label before --bentofile-rev a5b859e

Trains (once, tiny budget) a champion per outcome in ``--work``, pins them and builds the
Bento (``refracture bento``) from a copy of the sources with the chosen ``bentofile.yaml``,
creates a fresh virtual environment, installs the Bento's ``env/python/requirements.txt``
into it with pip (as ``bentoml containerize`` does in the image), measures its size
(``du -sm``, and the installed packages' own files), then serves the Bento from that
environment alone (no checkout on the path, the tracking store unreachable) and sends the
documented example record to ``/predict``. Writes ``bench/out/bento-env-<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from serving_support import API_KEY, Server, ensure_trained_store, free_port, store_env  # noqa: E402

SOURCES = ("features", "modelstore", "serving", "training", "refracture", "pyproject.toml", "requirements.lock",
           "requirements-serve.lock")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def build_bento(work: Path, label: str, bentofile: str, store: Path) -> tuple[str, Path, dict[str, str]]:
    """(tag, bento folder, environment) of a Bento built from a copy of the sources."""
    src = work / f"src-{label}"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "bento_models.json"))
        elif path.exists():
            shutil.copy(path, src / name)
    (src / "bentofile.yaml").write_text(bentofile)
    shutil.rmtree(work / f"bentoml-{label}", ignore_errors=True)
    env = store_env(store, BENTOML_HOME=str(work / f"bentoml-{label}"), PYTHONPATH=str(src))
    _run([sys.executable, "-c", "from refracture.cli import main; main()", "bento"], cwd=src, env=env, timeout=1800)
    (bento,) = [p for p in (work / f"bentoml-{label}" / "bentos" / "refracture-risk").iterdir() if p.is_dir()]
    return f"refracture-risk:{bento.name}", bento, env


def fresh_env(work: Path, label: str, requirements: Path) -> tuple[Path, float | None]:
    """A new virtual environment with ``requirements`` installed: (its folder, seconds the
    install took). One already built from the same requirements is reused (seconds None)."""
    venv = work / f"venv-{label}"
    stamp = venv / "requirements.installed"
    if stamp.exists() and stamp.read_text() == requirements.read_text():
        return venv, None
    shutil.rmtree(venv, ignore_errors=True)
    python = subprocess.run(["bash", str(ROOT / "scripts" / "find-python.sh")], capture_output=True, text=True,
                            check=True).stdout.strip()
    _run([python, "-m", "venv", str(venv)])
    started = time.perf_counter()
    _run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)],
         timeout=3600)
    seconds = time.perf_counter() - started
    stamp.write_text(requirements.read_text())
    return venv, seconds


def sizes(venv: Path) -> dict[str, float]:
    """``du -sm`` of the environment, and the MB of the installed packages' own files."""
    du = int(_run(["du", "-sm", str(venv)]).stdout.split()[0])
    code = ("import importlib.metadata as m, json, os\n"
            "print(json.dumps(sum(os.path.getsize(d.locate_file(f)) for d in m.distributions() for f in d.files or []"
            " if os.path.isfile(d.locate_file(f))) / 1e6))")
    packages = json.loads(_run([str(venv / "bin" / "python"), "-c", code], cwd=venv).stdout)
    return {"du_mb": du, "package_files_mb": round(packages, 1)}


class BentoFrom(Server):
    """A built Bento served by the BentoML of another environment (``venv``)."""

    def __init__(self, venv: Path, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.venv = venv

    def __enter__(self) -> "BentoFrom":
        try:
            return super().__enter__()
        except BaseException:
            self.__exit__()  # a server that never became ready is stopped too
            raise

    def wait_ready(self, timeout: float = 300) -> None:  # a fresh environment's first start compiles its files
        super().wait_ready(timeout)

    def command(self) -> list[str]:
        return [str(self.venv / "bin" / "python"), "-m", "bentoml", "serve", self.bento, "--host", "127.0.0.1",
                "--port", str(self.port)]


def serves(venv: Path, tag: str, env: dict[str, str], work: Path) -> dict:
    """Serve ``tag`` from ``venv`` alone (no checkout on the path, no registry); the example
    record's answer."""
    run_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    run_env.update(REFRACTURE_API_KEY=API_KEY, REFRACTURE_AUDIT_SALT="bench-salt", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
                   REFRACTURE_MLFLOW_DIR=str(work / "no-registry"))
    with BentoFrom(venv, run_env, bento=tag, cwd=work, log=work / f"serve-{tag.replace(':', '-')}.log") as server:
        example = httpx.get(f"{server.url}/model", timeout=30).json()["example_request"]
        answer = httpx.post(f"{server.url}/predict", json=example, headers={"Authorization": f"Bearer {API_KEY}"},
                            timeout=60)
    return {"status": answer.status_code,
            "adjacent_fracture_probability": answer.json()["predictions"][0]["outcomes"]["adjacent_fracture"]["probability"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--bentofile-rev", help="take bentofile.yaml from this git revision (default: the checkout's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-bento-env"))
    args = parser.parse_args()
    bentofile = (_run(["git", "show", f"{args.bentofile_rev}:bentofile.yaml"], cwd=ROOT).stdout if args.bentofile_rev
                 else (ROOT / "bentofile.yaml").read_text())
    args.work.mkdir(parents=True, exist_ok=True)
    store = ensure_trained_store(args.work)
    tag, bento, env = build_bento(args.work, args.label, bentofile, store)
    requirements = bento / "env" / "python" / "requirements.txt"
    venv, seconds = fresh_env(args.work, args.label, requirements)
    result = {"label": args.label, "bentofile_rev": args.bentofile_rev or "checkout", "bento": tag,
              "requirements": sum(1 for line in requirements.read_text().splitlines() if "==" in line),
              "install_seconds": None if seconds is None else round(seconds), **sizes(venv), "served": serves(venv, tag, env, args.work)}
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / f"bento-env-{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
