"""The command registry (refracture/cli.py) and its lazy loading (refracture/lazy_group.py):
what `refracture --help` lists is what each command says of itself, options and work agree,
and the everyday commands leave the heavy packages unimported (checked in a fresh process)."""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from features.catalog import FEATURE_SETS
from refracture.cli import COMMANDS as TOP_LEVEL, app
from refracture.lazy_group import Subcommands, resolve, summary_of
from refracture.options.predictions import MIN_PRUNE_DAYS, OE_BAND_TEXT
from refracture.options.data import FEATURE_SET_NAMES

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _with_subcommands(entries, prefix=()):
    """(argv prefix, entry) for every command, a group's subcommands after the group."""
    for entry in entries:
        yield (*prefix, entry.name), entry
        target = resolve(entry.options)
        if isinstance(target, Subcommands):
            yield from _with_subcommands(target.entries, (*prefix, entry.name))


#: Every command and subcommand: (argv, registry entry).
COMMANDS = [entry for _, entry in _with_subcommands(TOP_LEVEL)]
ARGVS = [list(argv) for argv, _ in _with_subcommands(TOP_LEVEL)]

#: What no `--help` may import: the heavy packages and the data stack itself.
NOT_FOR_HELP = ("mlflow", "bentoml", "shap", "pyspark", "xgboost", "sklearn", "scipy", "optuna", "matplotlib",
                "statsmodels", "pandas", "numpy", "pyarrow")
#: What validate, synth, features and dictionary may not import (they need pandas and numpy).
NOT_FOR_DATA = ("mlflow", "bentoml", "shap", "pyspark", "xgboost", "sklearn", "scipy", "optuna", "matplotlib",
                "statsmodels")

#: Runs each command in argv order in one fresh interpreter, printing per command the top-level
#: packages of ``watch`` it imported (cumulative: what a command imports stays imported).
_PROBE = """
import json, sys
from refracture.cli import app
watch, commands = json.loads(sys.argv[1])
seen = {}
for argv in commands:
    try:
        app(argv, prog_name="refracture")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise SystemExit(f"{argv} exited {exc.code}")
    seen[" ".join(argv)] = sorted(w for w in watch if w in sys.modules)
print("PROBE" + json.dumps(seen))
"""


def _imported(commands: list[list[str]], watch: tuple[str, ...], cwd: Path) -> dict[str, list[str]]:
    result = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([list(watch), commands])], cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads(result.stdout.split("PROBE", 1)[1])


def test_the_listed_help_is_each_commands_own_first_paragraph():
    for entry in COMMANDS:
        doc = inspect.getdoc(resolve(entry.options))
        assert doc, f"{entry.options} has no docstring: it is the command's help"
        assert entry.summary == summary_of(doc), (
            f"refracture/cli.py lists {entry.name!r} as {entry.summary!r}, but its help starts {summary_of(doc)!r}")


def test_the_root_help_lists_every_command_in_the_registry_order():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    listed = re.findall(r"^│ (\S+) ", result.output.split("Commands", 1)[1], flags=re.MULTILINE)
    assert listed == [entry.name for entry in TOP_LEVEL], result.output
    text = " ".join(result.output.replace("│", " ").split())
    for entry in TOP_LEVEL:
        assert f"{entry.name} {entry.summary}" in text


def _keyword_only_parameters(target: str) -> list[str]:
    """The parameters of ``"module:function"``, read from its source (importing the work
    modules would load MLflow and BentoML into the test process); all must be keyword-only."""
    module, _, name = target.partition(":")
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
    (function,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    assert not function.args.args and not function.args.posonlyargs, f"{target}: parameters after a bare *"
    return [arg.arg for arg in function.args.kwonlyargs]


def test_options_and_work_take_the_same_parameters():
    for entry in COMMANDS:
        if entry.run is None:
            continue
        options = list(inspect.signature(resolve(entry.options)).parameters)
        run = _keyword_only_parameters(entry.run)
        assert options == run, f"{entry.name}: {entry.options} takes {options}, {entry.run} takes {run}"


def test_names_are_unique_and_the_light_constants_match_the_code():
    names = [entry.name for entry in TOP_LEVEL]
    assert len(names) == len(set(names))
    assert FEATURE_SET_NAMES == tuple(FEATURE_SETS)
    from predictionlog.settings import MIN_RETENTION_DAYS
    from training.realized import OE_BAND
    assert OE_BAND_TEXT == f"{OE_BAND[0]:g},{OE_BAND[1]:g}" and MIN_PRUNE_DAYS == MIN_RETENTION_DAYS
    from refracture.options.clients import CLIENTS_FILE_ENV
    from serving.config import ENV_CLIENTS_FILE
    assert CLIENTS_FILE_ENV == ENV_CLIENTS_FILE


def test_a_bad_option_is_refused_before_the_work_is_imported(tmp_path):
    """The options' own checks run first: a wrong --engine costs no model loading."""
    probe = _PROBE.replace('raise SystemExit(f"{argv} exited {exc.code}")', "pass")
    result = subprocess.run([sys.executable, "-c", probe, json.dumps([["refracture.commands.serving", "mlflow"], [[
        "predict", "--input", str(tmp_path), "--output", str(tmp_path / "o.csv"), "--engine", "dask"]]])],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "use pandas or spark" in result.stdout + result.stderr
    assert json.loads(result.stdout.split("PROBE", 1)[1]) == {
        f"predict --input {tmp_path} --output {tmp_path / 'o.csv'} --engine dask": []}


def test_every_help_leaves_the_heavy_packages_unimported():
    """All in one interpreter: what a command imports stays imported, so each command's
    entry names what it (first) imported."""
    commands = [["--help"], *([*argv, "--help"] for argv in ARGVS)]
    seen = _imported(commands, NOT_FOR_HELP, ROOT)
    assert seen == {" ".join(argv): [] for argv in commands}


def test_the_data_commands_leave_mlflow_bentoml_shap_and_spark_unimported(tmp_path):
    raw = tmp_path / "raw"
    commands = [
        ["synth", "--n", "60", "--seed", "3", "--out", str(raw)],
        ["validate", "--raw", str(raw)],
        ["features", "--raw", str(raw), "--feature-set", "preop", "--out", str(tmp_path / "preop.parquet")],
        ["dictionary", "--out", str(tmp_path / "dictionary.md")],
    ]
    seen = _imported(commands, NOT_FOR_DATA + ("pandas",), ROOT)
    assert (tmp_path / "preop.parquet").exists() and (tmp_path / "dictionary.md").exists()
    # pandas, which they need, is seen: the probe is not blind.
    assert seen == {" ".join(argv): ["pandas"] for argv in commands}
