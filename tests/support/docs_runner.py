"""Run the shell and Python blocks of a Markdown guide as written, in order (the docs tier).

The convention every guide follows (docs/architecture.md, "Docs that run"):

- Every fenced block names its language. ``bash``/``sh``/``shell`` and ``python`` blocks
  run; other languages (``json``, ``sql``, ``ini``, ``nginx``, ``promql``, ``text``, ...)
  are shown, never run.
- A shell or Python block that must not run (a real server's unit file, a cluster's
  ``spark-submit``) starts with the visible line ``# not run by the docs tests: <why>``.
- A command that keeps running until the reader presses Ctrl-C (a server) says so in its
  comment, on one line: ``refracture serve --port 3000   # ... until Ctrl-C``. The runner
  starts it in the background in a process group of its own, as a terminal would, waits
  until its port answers HTTP (``--port N`` in the command, else ``127.0.0.1:N`` in the
  comment) and goes on with the next lines and blocks, as the reader does "in another
  shell". When its section ends (the next heading of the same or a higher level, or the
  end of the guide) it sends the group SIGINT, which is what Ctrl-C does, and requires
  every process of it to be gone within a minute.
- Everything else runs in one ``bash`` script per guide (``set -eo pipefail``), so
  variables, ``cd`` and background jobs carry from one block to the next, and a failing
  command fails the guide, naming its block. Python blocks run with ``python -`` (the
  project's venv comes first on PATH, as after ``source .venv/bin/activate``).

Where it runs: a copy of the checkout's files (``git ls-files``: tracked and new files, not
ignored ones such as ``data/`` or ``mlflow/``), with the project's ``.venv`` linked in and
its packages imported from the copy, a home folder of its own, and, where the kernel lets
us (root), a network namespace of its own: ports 3000 and 5000 of the guides never clash
with anything else on the machine, and nothing can be fetched. Any process the guide
leaves running (found by a token in its environment) fails the guide and is killed.

None of the maintained plugins fits this (checked 2026-12): pytest-markdown-docs and
mktestdocs run Python blocks (mktestdocs shell blocks one at a time, no shared state);
pytest-codeblocks runs shell blocks each in its own process, marks with HTML comments a
reader does not see, and has no notion of a server left running. The parsing is
markdown-it-py's (already in the lock, through rich).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[2]

#: Languages whose blocks run, and how.
RUN_LANGUAGES = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python"}
#: Languages shown but never run (anything else is a typo or needs a decision here).
SHOWN_LANGUAGES = frozenset({"json", "sql", "ini", "nginx", "promql", "text", "yaml", "toml", "http", "console"})
#: The visible first line of a shell/Python block that is not run, followed by why.
NOT_RUN = "# not run by the docs tests:"
#: A command line that runs until Ctrl-C: ``command   # ... until Ctrl-C ...``.
SERVICE_LINE = re.compile(r"^(?P<cmd>[^#\s][^#]*?)\s+#(?P<comment>.*\buntil Ctrl-C\b.*)$")
_PORT_OPTION = re.compile(r"--port[ =](\d+)")
_PORT_COMMENT = re.compile(r"(?:127\.0\.0\.1|localhost):(\d+)")

#: Seconds a guide may take in all, and a service to listen (``make demo`` trains first).
DOC_TIMEOUT_S = 2400
SERVICE_START_TIMEOUT_S = 900
#: Seconds a service has to stop after SIGINT (Ctrl-C).
SERVICE_STOP_TIMEOUT_S = 60

#: What the docs tier sets for every ``refracture train`` of the guides: one candidate, no
#: hyperparameter search, 2 folds, 50 bootstrap resamples (the commands run as written;
#: these are the defaults ``refracture train --help`` shows as [env var: ...]).
TRAIN_BUDGET = {
    "REFRACTURE_TRAIN_CANDIDATES": "xgboost",
    "REFRACTURE_TRAIN_SEARCH_TRIALS": "0",
    "REFRACTURE_TRAIN_CV_FOLDS": "2",
    "REFRACTURE_TRAIN_BOOTSTRAP": "50",
}


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text, and whether it runs."""

    doc: str
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    #: Levels of the headings between the previous block and this one (1 = ``#``).
    headings_before: tuple[int, ...] = ()
    #: Level of the heading this block sits under (0: none).
    section_level: int = 0

    @property
    def runs(self) -> bool:
        return self.language in RUN_LANGUAGES and not self.code.lstrip().startswith(NOT_RUN)

    @property
    def not_run_reason(self) -> str | None:
        """Why a shell/Python block is not run (its first line), None if it runs or is not code."""
        first = self.code.lstrip().splitlines()[0] if self.code.strip() else ""
        if self.language in RUN_LANGUAGES and first.startswith(NOT_RUN):
            return first[len(NOT_RUN):].strip()
        return None

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """Every fenced block of a Markdown file, in order (list items and quotes included)."""
    text = path.read_text(encoding="utf-8")
    doc = path.resolve().relative_to(root.resolve()).as_posix() if path.resolve().is_relative_to(root.resolve()) else str(path)
    out = []
    headings: list[int] = []
    level = 0
    for token in MarkdownIt("commonmark").parse(text):
        if token.type == "heading_open":
            level = int(token.tag[1])
            headings.append(level)
        elif token.type == "fence":
            info = (token.info or "").strip()
            language = info.split(maxsplit=1)[0].lower() if info else ""
            out.append(Block(doc, token.map[0] + 1, language, token.content, tuple(headings), level))
            headings = []
    return out


def convention_problems(path: Path, root: Path = ROOT) -> list[str]:
    """What breaks the convention above in one file (empty when it follows it)."""
    problems = []
    for b in blocks(path, root):
        if not b.language:
            problems.append(f"{b.where}: a fenced block without a language (```bash, ```python, ```text, ...)")
        elif b.language not in RUN_LANGUAGES and b.language not in SHOWN_LANGUAGES:
            problems.append(f"{b.where}: unknown language {b.language!r} (add it to SHOWN_LANGUAGES if it is never run)")
        elif b.not_run_reason == "":
            problems.append(f"{b.where}: say why after '{NOT_RUN}'")
        if b.runs and b.language in ("bash", "sh", "shell"):
            for number, line in enumerate(b.code.splitlines(), b.line + 1):
                match = SERVICE_LINE.match(line)
                if match and service_port(match) is None:
                    problems.append(f"{b.doc}:{number}: a line that runs until Ctrl-C needs --port N or "
                                    "127.0.0.1:N in its comment (the port the runner waits for)")
    return problems


def service_port(match: re.Match) -> int | None:
    found = _PORT_OPTION.search(match["cmd"]) or _PORT_COMMENT.search(match["comment"])
    return int(found.group(1)) if found else None


# --------------------------------------------------------------------------- the script

_PRELUDE = r"""
set -eo pipefail
__DOCS_SERVICES=()
__docs_block() {
  printf '%s\t%s\n' "$(date +%s.%N)" "$1" >> "$DOCS_STATE/blocks"
  printf '\n[docs] ---- %s ----\n' "$1"
}
__docs_service() {  # $1: port, $2: level of its section; the command line on stdin
  local port=$1 level=$2 cmd n log pid
  cmd=$(cat)
  n=$(( $(wc -l < "$DOCS_STATE/services") + 1 ))   # every service of the guide has a log of its own
  log="$DOCS_STATE/service-$n.log"
  printf '[docs] in the background until Ctrl-C (port %s, log %s): %s\n' "$port" "$log" "$cmd"
  # A session of its own (Ctrl-C reaches its whole group), and SIGINT as in a terminal: a
  # background job of a script starts with SIGINT ignored, which a shell cannot undo.
  "$DOCS_PYTHON" -c "$DOCS_FOREGROUND" "$cmd" > "$log" 2>&1 < /dev/null &
  pid=$!
  __DOCS_SERVICES+=("$pid $level $port")
  printf '%s\t%s\t%s\n' "$pid" "$port" "$cmd" >> "$DOCS_STATE/services"
  local deadline=$((SECONDS + DOCS_SERVICE_START_TIMEOUT))
  until curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$port/"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      printf '[docs] it exited before answering on port %s; its log ends:\n' "$port"; tail -n 60 "$log"; return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf '[docs] nothing answers on port %s after %s s; its log ends:\n' "$port" "$DOCS_SERVICE_START_TIMEOUT"
      tail -n 60 "$log"; return 1
    fi
    sleep 1
  done
  printf '[docs] port %s answers\n' "$port"
}
__docs_section_end() {  # Ctrl-C (SIGINT) to the services of sections of level >= $1, last first
  local i pid level port failed=0
  for (( i=${#__DOCS_SERVICES[@]}-1; i>=0; i-- )); do
    read -r pid level port <<< "${__DOCS_SERVICES[$i]}"
    [ "$level" -ge "$1" ] || continue
    unset '__DOCS_SERVICES[i]'
    printf '[docs] Ctrl-C to the service on port %s (process group %s)\n' "$port" "$pid"
    if ! "$DOCS_PYTHON" -c "$DOCS_INTERRUPT" "$pid" "$DOCS_SERVICE_STOP_TIMEOUT"; then
      printf '[docs] the service on port %s was still running %s s after Ctrl-C (killed)\n' "$port" "$DOCS_SERVICE_STOP_TIMEOUT"
      failed=1
    fi
    wait "$pid" 2>/dev/null || true
  done
  __DOCS_SERVICES=("${__DOCS_SERVICES[@]}")
  return "$failed"
}
trap '__docs_section_end 0 || exit 1' EXIT
"""


def shell_text(block: Block) -> str:
    """A shell block as the script runs it: lines that run until Ctrl-C go to the background."""
    out = []
    for line in block.code.splitlines():
        match = SERVICE_LINE.match(line)
        if match:
            out.append(f"__docs_service {service_port(match)} {block.section_level} <<'__DOCS_SERVICE__'\n"
                       f"{match['cmd'].strip()}\n__DOCS_SERVICE__")
        else:
            out.append(line)
    return "\n".join(out)


def script(doc_blocks: list[Block]) -> str:
    """The bash script that runs a guide's runnable blocks in order."""
    parts = [_PRELUDE]
    ended: list[int] = []  # headings passed since the last block that ran
    for b in doc_blocks:
        ended += b.headings_before
        if not b.runs:
            continue
        if ended:
            parts.append(f"__docs_section_end {min(ended)}")
            ended = []
        parts.append(f"__docs_block {_quote(b.where + ' (' + b.language + ')')}")
        if RUN_LANGUAGES[b.language] == "python":
            parts.append(f"python - <<'__DOCS_PYTHON__'\n{b.code.rstrip()}\n__DOCS_PYTHON__")
        else:
            parts.append(shell_text(b))
    parts.append("__docs_block end")
    parts.append("__docs_section_end 0")
    return "\n".join(parts) + "\n"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


# --------------------------------------------------------------------------- the copy

class StaleVenv(RuntimeError):
    """The project's .venv was installed from another requirements.lock/pyproject.toml."""


def venv_is_current(root: Path) -> bool:
    """Whether ``make setup`` would find ``root/.venv`` up to date (scripts/bootstrap.sh's
    stamp: the hash of requirements.lock and pyproject.toml)."""
    stamp = root / ".venv" / ".lock-installed"
    want = hashlib.sha256((root / "requirements.lock").read_bytes() + (root / "pyproject.toml").read_bytes()).hexdigest()
    return stamp.is_file() and stamp.read_text().strip() == want


def fresh_copy(source: Path, target: Path) -> Path:
    """The checkout's files as a fresh clone would have them (tracked and new, not ignored),
    with ``.venv`` linked in (``make setup`` finds it up to date). A stale venv is refused:
    a guide's ``make setup`` would reinstall the project into the shared venv from the
    temporary copy, and the checkout's venv would then import a folder that is deleted."""
    if not venv_is_current(source):
        raise StaleVenv(f"{source}/.venv is not up to date with requirements.lock and pyproject.toml: run `make setup`")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=source,
                            capture_output=True, check=True).stdout.decode().split("\0")
    target.mkdir(parents=True)
    for name in filter(None, listed):
        src = source / name
        if not src.exists() and not src.is_symlink():  # deleted in the work tree, not yet committed
            continue
        dst = target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
    (target / ".venv").symlink_to((source / ".venv").resolve())
    return target


def copy_state(source: Path, target: Path) -> Path:
    """A copy of a guide's folder as another guide left it (data, stores and all)."""
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns(".docs-run"))
    return target


# --------------------------------------------------------------------------- running

@dataclass
class DocRun:
    """What running one guide gave: ``ok``, the log, per-block seconds, and what went wrong."""

    doc: str
    ok: bool
    log: Path
    seconds: float
    block_seconds: list[tuple[str, float]] = field(default_factory=list)
    failed_block: str | None = None
    problems: list[str] = field(default_factory=list)

    def report(self, tail: int = 120) -> str:
        """A failure report: the block, what went wrong, the log's end."""
        lines = [f"{self.doc}: " + ("ran" if self.ok else f"FAILED in block {self.failed_block}")]
        lines += [f"  - {p}" for p in self.problems]
        log = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        lines += [f"--- last {min(tail, len(log))} lines of {self.log}:"] + log[-tail:]
        return "\n".join(lines)


def network_isolation() -> list[str]:
    """The command prefix that gives a guide its own network namespace (loopback only), or
    [] where the kernel does not let us (not root): the guide then needs its ports free."""
    probe = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True) if shutil.which("unshare") else None
    return ["unshare", "--net", "--"] if probe is not None and probe.returncode == 0 else []


# Bring the namespace's loopback interface up (SIOCSIFFLAGS: IFF_UP | IFF_LOOPBACK | IFF_RUNNING).
_LOOPBACK_UP = ("import fcntl, socket, struct; s = socket.socket(); "
                "fcntl.ioctl(s, 0x8914, struct.pack('16sH14s', b'lo', 0x1 | 0x8 | 0x40, bytes(14)))")


# Start a service line as a terminal's foreground job would run: own session and process
# group, SIGINT and SIGQUIT at their defaults; then become ``bash -c LINE``.
_FOREGROUND = ("import os, signal, sys; os.setsid(); signal.signal(signal.SIGINT, signal.SIG_DFL); "
               "signal.signal(signal.SIGQUIT, signal.SIG_DFL); os.execvp('bash', ['bash', '-c', sys.argv[1]])")


# Ctrl-C to a process group, then wait until none of its processes is left (zombies aside)
# for up to argv[2] seconds; else SIGKILL and exit 1.
_INTERRUPT = r"""
import os, signal, sys, time
def alive(group):
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read() if entry.isdigit() else ""
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split() if stat else []
        if fields and fields[0] != "Z" and int(fields[2]) == group:
            found.append(entry)
    return found
group, timeout = int(sys.argv[1]), float(sys.argv[2])
if alive(group):
    os.killpg(group, signal.SIGINT)
deadline = time.monotonic() + timeout
while alive(group) and time.monotonic() < deadline:
    time.sleep(0.5)
if alive(group):
    os.killpg(group, signal.SIGKILL)
    sys.exit(1)
"""


def doc_env(copy: Path, home: Path, token: str, state: Path) -> dict[str, str]:
    """The environment a reader has after ``source .venv/bin/activate`` in a fresh clone,
    plus the docs tier's training budget and the runner's own variables."""
    drop = ("MLFLOW_", "REFRACTURE_", "BENTOML_", "SPARK_", "PYSPARK_", "VIRTUAL_ENV", "PYTHONPATH", "PYTEST_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    venv_bin = copy / ".venv" / "bin"
    env.update({
        "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        "VIRTUAL_ENV": str(copy / ".venv"),
        # The venv's project install points at the original checkout: import the copy's.
        "PYTHONPATH": str(copy),
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "BENTOML_DO_NOT_TRACK": "True",
        "MPLBACKEND": "Agg",
        "DOCS_RUN_TOKEN": token,
        "DOCS_PYTHON": sys.executable,
        "DOCS_FOREGROUND": _FOREGROUND,
        "DOCS_INTERRUPT": _INTERRUPT,
        "DOCS_SERVICE_STOP_TIMEOUT": str(SERVICE_STOP_TIMEOUT_S),
        "DOCS_STATE": str(state),
        "DOCS_SERVICE_START_TIMEOUT": str(SERVICE_START_TIMEOUT_S),
        **TRAIN_BUDGET,
    })
    return env


def run_doc(copy: Path, doc: str, isolate: list[str] | None = None, timeout: float = DOC_TIMEOUT_S) -> DocRun:
    """Run the guide ``doc`` (a path relative to the checkout) inside ``copy``."""
    state = copy / ".docs-run" / doc.replace("/", "_")
    state.mkdir(parents=True)
    (state / "services").touch()
    (state / "blocks").touch()
    home = copy.parent / f"home-{state.name}"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    _traversable(copy, home)
    env = doc_env(copy, home, token, state)
    doc_blocks = blocks(copy / doc, copy)
    (state / "run.sh").write_text(script(doc_blocks), encoding="utf-8")
    log = state / "run.log"
    isolate = network_isolation() if isolate is None else isolate
    run_sh = (state / "run.sh").relative_to(copy).as_posix()
    if isolate:
        cmd = [*isolate, "bash", "-c", f"{_quote(sys.executable)} -c {_quote(_LOOPBACK_UP)} && exec bash {run_sh}"]
    else:
        cmd = ["bash", run_sh]
    start = time.monotonic()
    problems: list[str] = []
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            code = proc.wait()
            problems.append(f"timed out after {timeout:.0f} s")
    seconds = time.monotonic() - start
    marks = _block_marks(state / "blocks")
    failed = None
    if code != 0:
        failed = marks[-1][1] if marks else "(before the first block)"
        problems.append(f"exit status {code}")
    problems += [line[len("[docs] "):] for line in log.read_text(errors="replace").splitlines()
                 if line.startswith("[docs] the service on port")]
    problems += _stop_services(state)
    problems += _leftovers(token)
    durations = [(name, round(t1 - t0, 1)) for (t0, name), (t1, _) in zip(marks, marks[1:])]
    return DocRun(doc, not problems, log, seconds, durations, failed, problems)


def _traversable(*folders: Path) -> None:
    """As root, let other users pass through the folders above the copy and its home (o+x,
    not read): tracking-stack.sh runs PostgreSQL as ``postgres``, which must reach its data
    folder under them (temporary folders are made 0700). A reader's home is passable so."""
    if os.geteuid() != 0:
        return
    for folder in folders:
        for d in (folder, *folder.parents):
            if d == Path(d.anchor):
                break
            mode = d.stat().st_mode
            if not mode & 0o001:
                os.chmod(d, (mode | 0o011) & 0o7777)


def _block_marks(path: Path) -> list[tuple[float, str]]:
    out = []
    for line in path.read_text().splitlines():
        stamp, _, name = line.partition("\t")
        out.append((float(stamp), name))
    return out


def _stop_services(state: Path) -> list[str]:
    """SIGINT (Ctrl-C) to every service the guide started, last first; each must be gone
    within SERVICE_STOP_TIMEOUT_S, or it is killed and reported."""
    problems = []
    lines = [line.split("\t", 2) for line in (state / "services").read_text().splitlines() if line]
    for pid, port, cmd in reversed(lines):
        pgid = int(pid)
        if not _group(pgid):
            continue
        _signal_group(pgid, signal.SIGINT)
        deadline = time.monotonic() + SERVICE_STOP_TIMEOUT_S
        while _group(pgid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _group(pgid):
            problems.append(f"`{cmd}` (port {port}) was still running {SERVICE_STOP_TIMEOUT_S} s after Ctrl-C: "
                            f"{_describe(_group(pgid))}")
            _signal_group(pgid, signal.SIGKILL)
    return problems


def _leftovers(token: str) -> list[str]:
    """Processes the guide started and left running (its token in their environment): a
    guide must stop what it starts. Killed, and reported."""
    found = _processes(lambda pid, pgid, env: token.encode() in env)
    if not found:
        return []
    for pid, _pgid, _cmd in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [f"left running (killed now): {_describe(found)}"]


def _group(pgid: int) -> list[tuple[int, int, str]]:
    return _processes(lambda pid, g, env: g == pgid)


def _processes(keep) -> list[tuple[int, int, str]]:
    """(pid, process group, command line) of live, non-zombie processes ``keep`` selects."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] == "Z":
                continue
            pgid = int(fields[2])
            env = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        if keep(int(entry.name), pgid, env):
            out.append((int(entry.name), pgid, cmdline))
    return out


def _describe(found: list[tuple[int, int, str]]) -> str:
    return "; ".join(f"pid {pid}: {cmd[:120]}" for pid, _, cmd in found[:8])


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    """Run guides by hand in a temporary copy: ``.venv/bin/python tests/support/docs_runner.py
    README.md docs/serving.md`` (in that order, one copy, so a guide sees what the ones
    before it left). Prints each block's seconds; keeps the copy when one fails."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="refracture-docs-"))
    copy = fresh_copy(ROOT, base / "copy")
    status = 0
    for doc in argv or ["README.md"]:
        run = run_doc(copy, doc)
        for name, seconds in run.block_seconds:
            print(f"{seconds:8.1f} s  {name}")
        print(f"{run.seconds:8.1f} s  {doc}: {'ok' if run.ok else 'FAILED'}")
        if not run.ok:
            print(run.report())
            status = 1
            break
    if status == 0:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"kept {base}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
