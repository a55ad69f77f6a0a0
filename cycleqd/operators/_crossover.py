"""Crossover: merging parent models into a child genome."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from cycleqd.errors import CycleQDError
from cycleqd.registry import Registry
from cycleqd.weights._mergekit import merge_plan, mergekit_method, mergekit_method_names
from cycleqd.weights.genome import Genome
from cycleqd.weights.space import WeightSpace

__all__ = ["CROSSOVERS", "GaussianTaskArithmetic", "MergekitCrossover"]

#: Crossover operators by name; plug-ins extend it through the ``cycleqd.crossover`` group.
#: Every merge method that mergekit registers is offered under mergekit's own name.
CROSSOVERS: Registry = Registry(kind="crossover", entry_point_group="cycleqd.crossover")

_GRANULARITIES = ("model", "layer", "tensor")


def _draw_weights(
    rng: np.random.Generator,
    n_parents: int,
    space: WeightSpace,
    *,
    mu: float,
    sigma: float,
    granularity: str,
) -> np.ndarray:
    """``[P, T]`` weights ``~ N(mu, sigma²)``: one per parent, per layer group, or per tensor."""
    T = len(space.tensor_names)
    if granularity == "model":
        return np.repeat(rng.normal(mu, sigma, size=(n_parents, 1)), T, axis=1)
    if granularity == "layer":
        groups = np.asarray(space.layer_groups())
        return rng.normal(mu, sigma, size=(n_parents, groups.max() + 1))[:, groups]
    return rng.normal(mu, sigma, size=(n_parents, T))


def _check_granularity(granularity: str) -> None:
    if granularity not in _GRANULARITIES:
        raise CycleQDError(f"granularity {granularity!r} is not one of {', '.join(_GRANULARITIES)}")


@CROSSOVERS.register("gaussian_task_arithmetic")
class GaussianTaskArithmetic:
    """CycleQD's model-merging crossover: ``δ_child = Σ_i w_i δ_{p_i}``, ``w_i ~ N(μ, σ²)``.

    With ``normalize`` the weights are divided by their sum per tensor, as the reference code does
    (``N(1, 0.01)`` then ``w / Σw``, so two parents get about 0.5 each).

    Args:
        mu: mean of the weights.
        sigma: standard deviation of the weights.
        granularity: ``"model"`` (one weight per parent), ``"layer"`` (per layer group) or
            ``"tensor"``.
        normalize: divide the weights by their per-tensor sum.
    """

    def __init__(
        self,
        *,
        mu: float = 1.0,
        sigma: float = 0.1,
        granularity: str = "model",
        normalize: bool = True,
    ) -> None:
        _check_granularity(granularity)
        self.mu, self.sigma, self.granularity, self.normalize = mu, sigma, granularity, normalize

    def __call__(
        self, parents: Sequence[Genome], rng: np.random.Generator, space: WeightSpace
    ) -> Genome:
        """The child of ``parents``."""
        weights = _draw_weights(
            rng, len(parents), space, mu=self.mu, sigma=self.sigma, granularity=self.granularity
        )
        if self.normalize:
            total = weights.sum(axis=0, keepdims=True)
            if np.any(np.abs(total) < 1e-8):
                raise CycleQDError(
                    "crossover weights summed to ~0 and cannot be normalised; "
                    "use a mean far from 0 relative to sigma"
                )
            weights = weights / total
        return Genome.weighted_sum(
            parents,
            torch.from_numpy(weights).float(),
            op="gaussian_task_arithmetic",
            parent_ids=[p.id for p in parents],
        )


class MergekitCrossover:
    """Crossover by one of mergekit's merge methods (ties, dare_ties, slerp, …), in memory.

    The child is a merge node over its parents, replayed through the materialiser's cache. Where
    the method takes a per-input ``weight``, the weights are drawn as in
    :class:`GaussianTaskArithmetic` unless ``parameters`` fixes them; an interpolation factor
    ``t`` that ``parameters`` leaves open is drawn from U[0, 1).

    Args:
        method: the mergekit method's name.
        parameters: fixed method parameters (``density``, ``lambda``, ``normalize``, ...).
        mu: mean of drawn weights.
        sigma: standard deviation of drawn weights.
        granularity: ``"model"``, ``"layer"`` or ``"tensor"`` weights.

    Raises:
        CycleQDError: an unknown parameter for the method, or a required one that is neither
            given nor drawable.
    """

    def __init__(
        self,
        method: str,
        *,
        parameters: Mapping[str, Any] | None = None,
        mu: float = 1.0,
        sigma: float = 0.1,
        granularity: str = "model",
    ) -> None:
        _check_granularity(granularity)
        self.method = method
        self.parameters = dict(parameters or {})
        self.mu, self.sigma, self.granularity = mu, sigma, granularity
        merge_plan(mergekit_method(method), 2)
        specs = {p.name: p for p in mergekit_method(method).spec.parameters}
        unknown = sorted(set(self.parameters) - set(specs))
        if unknown:
            raise CycleQDError(
                f"mergekit method {method!r} has no parameter "
                f"{', '.join(map(repr, unknown))}; it takes: {', '.join(specs)}"
            )
        self.draw_weight = "weight" in specs and "weight" not in self.parameters
        self.draw_t = "t" in specs and specs["t"].required and "t" not in self.parameters
        missing = [
            n
            for n, s in specs.items()
            if s.required and n not in self.parameters and n not in ("weight", "t")
        ]
        if missing:
            raise CycleQDError(
                f"mergekit method {method!r} needs parameter(s) "
                f"{', '.join(missing)}; set them under the crossover's parameters"
            )

    def __call__(
        self, parents: Sequence[Genome], rng: np.random.Generator, space: WeightSpace
    ) -> Genome:
        """The child of ``parents``: a merge node."""
        merge_plan(mergekit_method(self.method), len(parents))
        parameters = dict(self.parameters)
        weights = None
        if self.draw_weight:
            weights = torch.from_numpy(
                _draw_weights(
                    rng,
                    len(parents),
                    space,
                    mu=self.mu,
                    sigma=self.sigma,
                    granularity=self.granularity,
                )
            ).float()
        if self.draw_t:
            parameters["t"] = float(rng.random())
        seed = int(rng.integers(2**31))
        return Genome.merged(
            self.method,
            parents,
            parameters=parameters,
            seed=seed,
            weights=weights,
            op=f"mergekit:{self.method}",
            parent_ids=[p.id for p in parents],
        )


CROSSOVERS.add_provider(
    mergekit_method_names, lambda name: functools.partial(MergekitCrossover, name)
)
