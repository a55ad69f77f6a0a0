"""Parent selection over an archive's elites."""

from __future__ import annotations

import numpy as np

from cycleqd.errors import CycleQDError
from cycleqd.registry import Registry

__all__ = ["SELECTIONS", "EliteSampling", "UniformSelection", "elite_sampling_weights"]

#: Selection operators by name; plug-ins extend it through the ``cycleqd.selection`` group.
SELECTIONS: Registry = Registry(kind="selection", entry_point_group="cycleqd.selection")


def elite_sampling_weights(
    values: np.ndarray, *, alpha_low: float = 0.5, alpha_high: float = 0.8
) -> np.ndarray:
    """CycleQD's elite-sampling weights, normalised to sum to 1.

    Each elite's weight is ``Π_d (α_low + norm_d(v) · (α_high − α_low))`` over the columns ``d``
    (the quality and every behaviour descriptor), ``norm_d`` min-max normalising column ``d`` over
    the elites. A column whose values are all equal carries no preference: its ``norm_d`` is 1
    for every elite (so the factor is ``α_high``, the same for all).

    Args:
        values: ``[N, D]`` quality and BC values of the N elites.
        alpha_low: factor of the worst elite along a column.
        alpha_high: factor of the best elite along a column.

    Returns:
        ``[N]`` probabilities.

    Raises:
        CycleQDError: no elites, non-finite values, or ``0 < α_low <= α_high`` violated.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise CycleQDError(
            f"elite sampling needs an [N>=1, D] array of values, got shape {values.shape}"
        )
    if not np.isfinite(values).all():
        raise CycleQDError("elite sampling got NaN/Inf quality or BC values")
    if not 0 < alpha_low <= alpha_high:
        raise CycleQDError(
            f"elite sampling needs 0 < alpha_low <= alpha_high, got {alpha_low}, {alpha_high}"
        )
    low, high = values.min(axis=0), values.max(axis=0)
    span = high - low
    norm = np.divide(values - low, span, out=np.ones_like(values), where=span > 0)
    weights = np.prod(alpha_low + norm * (alpha_high - alpha_low), axis=1)
    return weights / weights.sum()


def _draw(n_elites: int, n: int, p: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices without replacement.

    With fewer elites than ``n``: every elite once, then repeats (one elite is crossed with itself).
    """
    if n_elites >= n:
        return rng.choice(n_elites, size=n, replace=False, p=p)
    first = rng.permutation(n_elites)
    return np.concatenate([first, rng.choice(n_elites, size=n - n_elites, replace=True, p=p)])


@SELECTIONS.register("elite_sampling")
class EliteSampling:
    """CycleQD's elite sampling (Kuroki et al., ICLR 2025, §3.2).

    Args:
        alpha_low: weight factor of the worst elite along each of quality and BCs (paper: 0.5).
        alpha_high: weight factor of the best (paper: 0.8).
    """

    def __init__(self, *, alpha_low: float = 0.5, alpha_high: float = 0.8) -> None:
        self.alpha_low, self.alpha_high = alpha_low, alpha_high

    def weights(self, objectives: np.ndarray, measures: np.ndarray) -> np.ndarray:
        """Sampling probabilities of the elites (objective first, then each BC)."""
        values = np.column_stack([np.asarray(objectives, float), np.asarray(measures, float)])
        return elite_sampling_weights(values, alpha_low=self.alpha_low, alpha_high=self.alpha_high)

    def __call__(
        self, objectives: np.ndarray, measures: np.ndarray, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Indices of ``n`` parents drawn from the elites, without replacement."""
        return _draw(len(objectives), n, self.weights(objectives, measures), rng)


@SELECTIONS.register("uniform")
class UniformSelection:
    """Parents drawn uniformly from the elites, without replacement (the ablation baseline)."""

    def __call__(
        self, objectives: np.ndarray, measures: np.ndarray, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Indices of ``n`` parents drawn uniformly, without replacement."""
        if len(objectives) == 0:
            raise CycleQDError("cannot select parents from an empty archive")
        return _draw(len(objectives), n, None, rng)
