"""Training progress for a person (``training.progress.Progress``).

Every step is one line, with the time since the command started::

     0:41  adjacent_fracture: xgboost: search, 20 trials

so a log or a pasted transcript reads as a progress report. In a terminal a live line below
them also shows the current step's search trials and its own elapsed time. Each step and
each trial is also a checkpoint (``refracture.interrupts.stop_at_checkpoints``): where a
Ctrl-C stops the training.
"""

from __future__ import annotations

import time
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on), right-aligned to 5 characters."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:>2d}:{secs:02d}"


class TrainingDisplay:
    """Use as a context manager around ``training.pipeline.run(cfg, display)``."""

    def __init__(self, console: Console, live: bool | None = None, checkpoint: Callable[[], None] = lambda: None):
        self.console = console
        self._checkpoint = checkpoint
        self._started = time.perf_counter()
        live = console.is_terminal if live is None else live
        self._live = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=console, transient=True) if live else None
        self._task = None

    def __enter__(self) -> TrainingDisplay:
        if self._live is not None:
            self._live.start()
            self._task = self._live.add_task("starting", total=None)
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()

    def elapsed(self) -> str:
        return clock(time.perf_counter() - self._started)

    def step(self, text: str) -> None:
        self._checkpoint()
        self.console.print(f"{self.elapsed()}  {text}", markup=False, highlight=False, soft_wrap=True)
        if self._live is not None:
            self._live.reset(self._task, description=text, total=None)

    def trials(self, done: int, total: int) -> None:
        self._checkpoint()
        if self._live is not None:
            self._live.update(self._task, completed=done, total=total)
