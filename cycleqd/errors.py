"""Errors that cycleqd raises for bad input; each message names the problem and the fix."""

from __future__ import annotations

__all__ = ["CycleQDError", "ModelLoadError", "UnknownNameError", "NonFiniteError"]


class CycleQDError(ValueError):
    """Base class: bad input that the user can fix."""


class ModelLoadError(CycleQDError):
    """A base or expert checkpoint is missing, unsafe to load, or does not match the base."""


class UnknownNameError(CycleQDError, KeyError):
    """A name looked up in a registry (operator, scorer, ...) is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class NonFiniteError(CycleQDError):
    """A materialised child holds NaN or Inf."""
