"""Scorers that misbehave on purpose, for the Ray tests (workers import them by dotted path).

Each wraps the digits scorer and misbehaves once per run: the first process to reach its
``after``-th call claims ``marker`` (a file created exclusively) and then raises or hangs;
every other call scores normally.
"""

from __future__ import annotations

import os
import time

from cycleqd.scorers import SCORERS


def faulty(mode: str, marker: str, after: int = 5, **digits: object):
    """A digits scorer that, once, ``raise``s or ``hang``s (for 10 minutes)."""
    inner = SCORERS.build("digits_accuracy", **digits)
    calls = 0

    def score(model, split):
        nonlocal calls
        calls += 1
        if calls >= after and _claim(marker):
            if mode == "raise":
                raise RuntimeError("the scorer exploded")
            time.sleep(600)
        return inner(model, split)

    return score


def slow(delay: float, **digits: object):
    """A digits scorer that takes ``delay`` seconds more per call (time to kill its worker)."""
    inner = SCORERS.build("digits_accuracy", **digits)

    def score(model, split):
        time.sleep(delay)
        return inner(model, split)

    return score


def _claim(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
