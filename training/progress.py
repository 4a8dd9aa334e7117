"""What training reports while it runs: the step it begins, and how far a search has got.

``training.pipeline`` and ``training.fitting`` call ``step`` when a step begins (the text
says which outcome, candidate and step) and ``trials`` after each search trial. The command
line shows them (``refracture.progress``); library callers and tests pass nothing and get
``NullProgress``.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def step(self, text: str) -> None:
        """A step begins, e.g. "adjacent_fracture: xgboost: search, 20 trials"."""

    def trials(self, done: int, total: int) -> None:
        """``done`` of the current search's ``total`` trials have finished."""


class NullProgress:
    """Reports nowhere."""

    def step(self, text: str) -> None:
        pass

    def trials(self, done: int, total: int) -> None:
        pass
