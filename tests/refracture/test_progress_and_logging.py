"""What a command prints while it runs: training's step lines with their time, the live bar
in a terminal, logging (our lines, others' warnings, MLflow quiet unless --verbose), and
Ctrl-C/SIGTERM noted and raised at the next checkpoint."""

from __future__ import annotations

import io
import logging
import os
import signal
import warnings

import pytest
from rich.console import Console

from refracture.cli import QUIET_MLFLOW, configure_logging
from refracture.interrupts import Terminated, exit_code, stop_at_checkpoints, terminate_as_interrupt
from refracture.progress import TrainingDisplay, clock


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120), out


def test_clock_reads_minutes_and_hours():
    assert [clock(s) for s in (0, 9.9, 61, 3599, 3600, 7322)] == [" 0:00", " 0:09", " 1:01", "59:59", "1:00:00", "2:02:02"]


def test_each_step_is_a_line_with_the_time_and_trials_print_nothing_off_a_terminal():
    console, out = _console(terminal=False)
    with TrainingDisplay(console) as display:
        display.step("adjacent_fracture: xgboost: search, 20 trials")
        for i in range(1, 21):
            display.trials(i, 20)
        display.step("adjacent_fracture: xgboost: refit, cross-validated and test metrics")
    assert out.getvalue().splitlines() == [" 0:00  adjacent_fracture: xgboost: search, 20 trials",
                                           " 0:00  adjacent_fracture: xgboost: refit, cross-validated and test metrics"]


def test_in_a_terminal_the_live_bar_runs_and_the_lines_stay():
    console, out = _console(terminal=True)
    with TrainingDisplay(console) as display:
        display.step("death: logistic: fixed parameters")
        display.trials(1, 1)
    text = out.getvalue()
    assert "death: logistic: fixed parameters" in text and " 0:00  death" in text


def test_steps_and_trials_are_checkpoints():
    calls = []
    display = TrainingDisplay(_console(False)[0], checkpoint=lambda: calls.append(1))
    display.step("a")
    display.trials(1, 2)
    assert len(calls) == 2

    def stop():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        TrainingDisplay(_console(False)[0], checkpoint=stop).trials(1, 2)


@pytest.fixture
def clean_logging(monkeypatch):
    for name in QUIET_MLFLOW:
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {n: logging.getLogger(n).level for n in ("training", "mlflow", "alembic")}
    showwarning = warnings.showwarning
    yield
    warnings.showwarning = showwarning
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_our_lines_and_every_warning_are_shown_other_libraries_information_is_not(clean_logging, capsys):
    configure_logging(verbose=False)
    logging.getLogger("training.search").info("xgboost: best CV log loss 0.2571 after 20 trials")
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger("urllib3.connectionpool").warning("Retrying (1 attempt left)")
    logging.getLogger("training.data").debug("not shown")
    err = capsys.readouterr().err  # written to sys.stderr as it is now (capsys's), not as it was
    assert err.splitlines() == ["xgboost: best CV log loss 0.2571 after 20 trials",
                                "warning (urllib3.connectionpool): Retrying (1 attempt left)"]
    assert {k: os.environ[k] for k in QUIET_MLFLOW} == QUIET_MLFLOW  # read by MLflow when it is imported


def test_library_notices_wait_for_verbose_other_warnings_are_shown(clean_logging, capsys):
    configure_logging(verbose=False)
    warnings.warn_explicit("range is deprecated", FutureWarning, "mlflow/models/utils.py", 211)
    warnings.warn_explicit("logged with requirements this environment does not meet", UserWarning,
                           "modelstore/artifact.py", 99)
    assert capsys.readouterr().err.splitlines() == [
        "warning (py.warnings): UserWarning: logged with requirements this environment does not meet "
        "(modelstore/artifact.py:99)"]
    configure_logging(verbose=True)
    warnings.warn_explicit("range is deprecated", FutureWarning, "mlflow/models/utils.py", 212)
    assert "DEBUG py.warnings: FutureWarning: range is deprecated" in capsys.readouterr().err


def test_a_users_own_mlflow_logging_level_wins(clean_logging, monkeypatch):
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "INFO")
    configure_logging(verbose=False)
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "INFO"


def test_verbose_shows_everything_with_time_level_and_source(clean_logging, capsys):
    configure_logging(verbose=True)
    logging.getLogger("somelibrary.internals").debug("Will assume non-transactional DDL.")
    err = capsys.readouterr().err
    assert "DEBUG somelibrary.internals: Will assume non-transactional DDL." in err
    assert "MLFLOW_LOGGING_LEVEL" not in os.environ


def test_a_signal_is_noted_then_raised_at_the_checkpoint(capfd):
    before = signal.getsignal(signal.SIGINT)  # not always Python's default: a test worker may ignore SIGINT
    with stop_at_checkpoints() as checkpoint:
        checkpoint()  # nothing yet
        os.kill(os.getpid(), signal.SIGINT)  # noted, not raised here
        assert "stopping at the end of the current step" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt) as raised:
            checkpoint()
    assert not isinstance(raised.value, Terminated) and exit_code(raised.value) == 130
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_sigterm_is_raised_as_terminated_and_a_second_signal_at_once():
    with stop_at_checkpoints() as checkpoint:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt) as second:
            os.kill(os.getpid(), signal.SIGINT)  # the second signal: raised where the program is
        assert not isinstance(second.value, Terminated)
        with pytest.raises(Terminated) as raised:
            checkpoint()  # the first one decides what the command stops as
    assert exit_code(raised.value) == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_terminate_as_interrupt_raises_where_the_program_is():
    with pytest.raises(Terminated), terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
