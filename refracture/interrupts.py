"""How a command stops on Ctrl-C (SIGINT) or SIGTERM: with its MLflow runs marked KILLED.

SIGTERM (a process manager, a container runtime, ``kill``) ends Python at once by default:
no ``finally``, no ``except``, so the runs a command had open stay RUNNING. And Ctrl-C's
``KeyboardInterrupt``, raised wherever the program happens to be, can land in a C library's
callback (XGBoost's data iterator), which prints it as "Exception ignored" and carries on:
the training went on to the end. So:

- ``terminate_as_interrupt``: SIGTERM raises ``Terminated``, a ``KeyboardInterrupt``, as
  Ctrl-C does, and the same clean-up runs (``modelstore.runs``: runs marked KILLED);
- ``stop_at_checkpoints`` (training): either signal is noted, not raised, and the command
  stops at its next checkpoint (a step's start, a search trial's end), where the exception
  cannot be swallowed; a second signal raises at once.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

#: Exit status of a command stopped by SIGINT (Ctrl-C) or SIGTERM, as a shell reports a
#: process killed by those signals (128 + the signal number).
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
_NOTED = (b"\nstopping at the end of the current step or search trial (runs marked KILLED); "
          b"Ctrl-C again to stop at once\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt."""


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def exit_code(exc: KeyboardInterrupt) -> int:
    """The exit status for a command stopped by ``exc``."""
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


@contextmanager
def _handlers(handler, signums) -> Iterator[None]:
    """``handler`` for ``signums`` inside the block (main thread only: elsewhere Python
    cannot install one, and the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` inside the block, where the program is."""

    def raise_terminated(signum, frame) -> None:
        raise Terminated()

    with _handlers(raise_terminated, (signal.SIGTERM,)):
        yield


@contextmanager
def stop_at_checkpoints() -> Iterator[Callable[[], None]]:
    """Yields ``checkpoint()``: it raises ``KeyboardInterrupt`` (``Terminated`` for SIGTERM)
    once SIGINT or SIGTERM has come within the block, and does nothing before. The first
    signal is only noted (and said on stderr); a second one raises where the program is."""
    received: list[int] = []

    def note(signum, frame) -> None:
        if received:
            raise _interrupt(signum)
        received.append(signum)
        os.write(2, _NOTED)  # a signal handler may run mid-print: no buffered I/O here

    def checkpoint() -> None:
        if received:
            raise _interrupt(received[0])

    with _handlers(note, (signal.SIGINT, signal.SIGTERM)):
        yield checkpoint
