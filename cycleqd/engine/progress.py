"""Progress lines for runs whose output is not a terminal (a log file, a pipe, CI).

On a terminal the CLI draws live bars; a bar drawn into a log shows nothing until it ends, so a
run piped to a file would be silent for its whole length. There, each stage (building a model,
seeding, every generation, the report) prints one line to stderr instead.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

__all__ = ["GenerationReport", "progress"]

_START = time.monotonic()


def progress(message: str) -> None:
    """Print ``[elapsed] message`` to stderr when stdout is not a terminal."""
    if sys.stdout.isatty():
        return
    elapsed = time.monotonic() - _START
    print(f"[{elapsed:7.1f} s] {message}", file=sys.stderr, flush=True)


@dataclass
class GenerationReport:
    """What one generation did, for progress displays (the evolver's ``on_generation``)."""

    generation: int
    generations: int
    active_task: str
    stats: dict[str, dict[str, float]]
    seconds: float
