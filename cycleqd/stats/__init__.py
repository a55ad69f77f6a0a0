"""Scores with their resolution: per-request results, bootstrap intervals, paired differences.

A score over n requests is an estimate; with n distinct requests its 95% interval is about
``±1/√n``. Scorers that judge requests one by one return a :class:`Score`: a float (the mean, so
that every caller that wants a number keeps working) that also carries each request's result.
From those this module computes

* a score's 95% percentile-bootstrap interval over requests;
* a method's average over tasks and its worst-task retention (each task's score as a fraction of
  that task's expert's score), with intervals, resampling each task's requests;
* the paired difference between two methods scored on the same requests, resampling the same
  request indices for both, which cancels what the requests themselves contribute.

Every resample is seeded: the same results give the same intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "OBJECTIVES",
    "Score",
    "interval",
    "objective_value",
    "point_value",
    "report_intervals",
    "resampled_columns",
    "retention",
]

#: Bootstrap resamples; the percentile interval's ends move by well under 0.01 between seeds.
RESAMPLES = 2000
LEVEL = 0.95


class Score(float):
    """A score in [0, 1] that keeps each request's result (``items``, in request order)."""

    items: tuple[float, ...]

    def __new__(cls, items: Sequence[float]) -> Score:
        """The mean of ``items`` (each request's result in [0, 1]), keeping them."""
        values = tuple(float(v) for v in items)
        if not values:
            raise ValueError("a Score needs at least one request's result")
        score = super().__new__(cls, sum(values) / len(values))
        score.items = values
        return score

    def __reduce__(self) -> tuple[Any, ...]:
        return (Score, (self.items,))


def retention(scores: Mapping[str, float], expert_scores: Mapping[str, float]) -> float:
    """The worst task's score as a fraction of its expert's score (an expert at 0 counts as 1)."""
    return min(scores[t] / expert_scores[t] if expert_scores[t] > 0 else 1.0 for t in expert_scores)


def _mean(scores: Mapping[str, float], tasks: Sequence[str]) -> float:
    return float(np.mean([scores[t] for t in tasks]))


#: What a final choice maximises: name → key of a candidate's task scores (given the experts'
#: scores on the same split). Larger tuples compare element by element: ties on the first value
#: fall to the next.
OBJECTIVES: dict[str, Callable[[Mapping[str, float], Mapping[str, float]], tuple[float, ...]]] = {
    "mean": lambda scores, experts: (_mean(scores, list(experts)),),
    "retention": lambda scores, experts: (
        round(retention(scores, experts), 6),
        _mean(scores, list(experts)),
    ),
}


def objective_value(
    name: str, scores: Mapping[str, float], expert_scores: Mapping[str, float]
) -> tuple[float, ...]:
    """The objective ``name``'s key for a candidate (``-inf`` where a score is missing or NaN)."""
    values = [scores.get(t, float("nan")) for t in expert_scores]
    if any(not np.isfinite(v) for v in values):
        return (float("-inf"),) * (2 if name == "retention" else 1)
    return OBJECTIVES[name](scores, expert_scores)


def _resample_means(
    items: Mapping[str, Mapping[str, Sequence[float]]], tasks: Sequence[str], seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Per method and task, the mean over each bootstrap resample of the task's requests.

    The resampled request indices are the same for every method: differences are paired.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {m: {} for m in items}
    for task in tasks:
        lengths = {len(items[m][task]) for m in items if task in items[m]}
        if len(lengths) != 1:
            continue  # methods scored on different requests cannot be paired
        n = lengths.pop()
        idx = rng.integers(0, n, size=(RESAMPLES, n))
        for method in items:
            if task in items[method]:
                values = np.asarray(items[method][task], dtype=np.float64)
                out[method][task] = values[idx].mean(axis=1)
    return out


def resampled_columns(
    items: Mapping[str, Mapping[str, Sequence[float]]],
    tasks: Sequence[str],
    experts: Mapping[str, str],
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Per method, each column's bootstrap samples (``RESAMPLES`` values, paired across methods).

    Columns: each task, ``average`` (over ``tasks``) and ``retention`` (the worst task's score
    as a fraction of its expert's, ``experts`` naming each task's expert method); a column is
    missing where a method lacks a task's per-request results.
    """
    means = _resample_means(items, tasks, seed)
    columns: dict[str, dict[str, np.ndarray]] = {}
    for method, per_task in means.items():
        cols = dict(per_task)
        if all(t in per_task for t in tasks):
            cols["average"] = np.mean([per_task[t] for t in tasks], axis=0)
            if all(t in means.get(experts.get(t, ""), {}) for t in tasks):
                ratios = []
                for t in tasks:
                    own = means[experts[t]][t]
                    safe = np.where(own > 0, own, 1.0)
                    ratios.append(np.where(own > 0, per_task[t] / safe, 1.0))
                cols["retention"] = np.min(ratios, axis=0)
        columns[method] = cols
    return columns


def interval(samples: np.ndarray) -> list[float]:
    """The percentile interval (:data:`LEVEL`) of bootstrap ``samples``."""
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return [float(lo), float(hi)]


def report_intervals(
    items: Mapping[str, Mapping[str, Sequence[float]]],
    tasks: Sequence[str],
    experts: Mapping[str, str],
    reference: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Intervals of every method's scores, average and retention; differences to ``reference``.

    Args:
        items: method → task → each request's result (methods scored on the same requests).
        tasks: the tasks averaged over.
        experts: task → the method that is that task's expert (for retention).
        reference: the method the others are compared with (``None``: no differences).
        seed: seeds the resampling.

    Returns:
        ``{"level": 0.95, "resamples": R, "methods": {method: {column: [low, high]}},
        "reference": reference, "differences": {method: {column: [reference − method, low,
        high]}}}`` (see :func:`resampled_columns` for the columns).
    """
    columns = resampled_columns(items, tasks, experts, seed)
    out: dict[str, Any] = {
        "level": LEVEL,
        "resamples": RESAMPLES,
        "methods": {m: {c: interval(v) for c, v in cols.items()} for m, cols in columns.items()},
    }
    if reference is not None and reference in columns:
        ref = columns[reference]
        out["reference"] = reference
        out["differences"] = {
            method: {
                c: [
                    point_value(items, reference, c, tasks, experts)
                    - point_value(items, method, c, tasks, experts),
                    *interval(ref[c] - v),
                ]
                for c, v in cols.items()
                if c in ref
            }
            for method, cols in columns.items()
            if method != reference
        }
    return out


def point_value(
    items: Mapping[str, Mapping[str, Sequence[float]]],
    method: str,
    column: str,
    tasks: Sequence[str],
    experts: Mapping[str, str],
) -> float:
    """``method``'s value of ``column`` on the full (not resampled) results."""
    scores = {t: float(np.mean(items[method][t])) for t in tasks if t in items[method]}
    if column == "average":
        return _mean(scores, tasks)
    if column == "retention":
        own = {t: float(np.mean(items[experts[t]][t])) for t in tasks}
        return retention(scores, own)
    return scores[column]
