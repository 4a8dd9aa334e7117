"""The guides run as written: every shell and Python block of README.md and the guides in
docs/, in order, in a temporary copy of the checkout (tests/support/docs_runner.py; the
convention is in docs/architecture.md, "Docs that run").

README.md runs first, in a fresh copy, as a new user starts; each guide then runs in a
copy of the folder README.md left (its trained champions, data/demo, the local store), as
"with what the README installs" means. A failing command fails its guide and names the
block. The fast tier checks only that every block follows the convention.
"""

from __future__ import annotations

import shutil
import typing
from pathlib import Path

import pytest

from docs_runner import ROOT, TRAIN_BUDGET, blocks, convention_problems, copy_state, fresh_copy, run_doc

#: The guides run by the docs tier, in order; README.md first (the others start from its state).
DOCS_IN_ORDER = ("README.md", "docs/deployment.md", "docs/serving.md", "docs/monitoring.md", "docs/simulator.md",
                 "docs/fhir.md", "docs/cds-hooks.md")
#: The files the convention holds for (bench/README.md records benchmark runs: not a guide).
MARKDOWN = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
ARTIFACTS = ROOT / "test-artifacts" / "docs"


def test_every_block_names_its_language_and_says_why_it_is_not_run():
    problems = [p for path in MARKDOWN for p in convention_problems(path)]
    assert not problems, "\n".join(problems)


def test_every_guide_with_runnable_blocks_is_run():
    runnable = {b.doc for path in MARKDOWN for b in blocks(path) if b.runs}
    assert runnable <= set(DOCS_IN_ORDER), f"add to DOCS_IN_ORDER (or mark the blocks): {sorted(runnable - set(DOCS_IN_ORDER))}"


def test_the_training_budget_is_what_train_reads():
    """The docs tier shortens training only through `refracture train`'s own environment
    defaults, so the commands it runs are the guides' text."""
    from refracture.options.training import train

    envvars = {getattr(meta, "envvar", None) for hint in typing.get_type_hints(train, include_extras=True).values()
               for meta in typing.get_args(hint)[1:]}
    assert set(TRAIN_BUDGET) <= envvars, sorted(set(TRAIN_BUDGET) - envvars)


@pytest.fixture(scope="module")
def readme_state(tmp_path_factory):
    """README.md run in a fresh copy: (the copy, the run)."""
    copy = fresh_copy(ROOT, tmp_path_factory.mktemp("docs") / "readme")
    return copy, _keep(run_doc(copy, "README.md"))


def test_readme_runs(readme_state):
    _copy, run = readme_state
    assert run.ok, run.report()


@pytest.mark.parametrize("doc", DOCS_IN_ORDER[1:])
def test_guide_runs(doc, readme_state, tmp_path):
    readme_copy, readme = readme_state
    if not readme.ok:
        pytest.fail("README.md did not run (test_readme_runs), so no guide can start from what it leaves")
    copy = copy_state(readme_copy, tmp_path / "copy")
    run = _keep(run_doc(copy, doc))
    assert run.ok, run.report()
    shutil.rmtree(copy, ignore_errors=True)  # a copy holds trained stores: free the disk


def _keep(run):
    """The run's log and per-block seconds in test-artifacts/docs/ (what the docs tier costs)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = run.doc.replace("/", "_")
    shutil.copy(run.log, ARTIFACTS / f"{name}.log")
    lines = [f"{seconds:8.1f} s  {block}" for block, seconds in run.block_seconds]
    lines.append(f"{run.seconds:8.1f} s  {run.doc} ({'ok' if run.ok else 'FAILED'})")
    (ARTIFACTS / f"{name}.seconds.txt").write_text("\n".join(lines) + "\n")
    return run


def test_docs_runner_runs_blocks_in_order_and_stops_services(tmp_path):
    """The runner itself, on a small guide: state carries across blocks, a service line runs
    in the background until the end and stops on SIGINT, a marked block is not run, and a
    process left running fails the guide."""
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / ".venv").symlink_to((ROOT / ".venv").resolve())
    (copy / "guide.md").write_text(
        "# Guide\n\n## Serve\n\n"
        "```bash\nexport X=1; Y=2\n"
        "python -m http.server 8765 --bind 127.0.0.1   # serves on 127.0.0.1:8765 until Ctrl-C\n```\n\n"
        "### In another shell\n\n"
        "```python\nimport os; assert os.environ['X'] == '1'\n```\n\n"
        "```bash\ntest \"$Y\" = 2 && curl -sf -o /dev/null http://127.0.0.1:8765/\n```\n\n"
        "## Next section: the server got Ctrl-C\n\n"
        "```bash\n! curl -s -o /dev/null http://127.0.0.1:8765/\n```\n\n"
        "```bash\n# not run by the docs tests: it would fail\nfalse\n```\n", encoding="utf-8")
    run = run_doc(copy, "guide.md")
    assert run.ok, run.report()
    assert [b for b, _ in run.block_seconds] == ["guide.md:5 (bash)", "guide.md:12 (python)", "guide.md:16 (bash)",
                                                 "guide.md:22 (bash)"]

    (copy / "bad.md").write_text("```bash\nsleep 600 &\ntrue\n```\n\n```bash\necho before; false; echo after\n```\n",
                                 encoding="utf-8")
    bad = run_doc(copy, "bad.md")
    assert not bad.ok and bad.failed_block == "bad.md:6 (bash)"
    assert any("left running" in p and "sleep 600" in p for p in bad.problems), bad.problems
    assert "after" not in bad.log.read_text()
