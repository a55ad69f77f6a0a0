"""Scores with their resolution: bootstrap intervals, paired differences, the objectives."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cycleqd.stats import Score, objective_value, report_intervals, retention


def test_a_score_is_its_mean_and_keeps_each_request():
    score = Score([1, 0, 1, 1])
    assert score == 0.75 and isinstance(score, float) and score.items == (1.0, 0.0, 1.0, 1.0)
    assert pickle.loads(pickle.dumps(score)).items == score.items  # travels to Ray workers
    with pytest.raises(ValueError, match="at least one"):
        Score([])


def test_intervals_narrow_with_distinct_requests_as_one_over_root_n():
    rng = np.random.default_rng(0)
    widths = {}
    for n in (50, 600):
        items = {"m": {"t": (rng.random(n) < 0.5).astype(float)}}
        low, high = report_intervals(items, ["t"], {})["methods"]["m"]["t"]
        widths[n] = high - low
    # ±1/√n at p = 0.5: 50 requests resolve about ±0.14, 600 about ±0.04
    assert widths[50] / 2 == pytest.approx(0.98 / np.sqrt(50), rel=0.2)
    assert widths[600] / 2 == pytest.approx(0.98 / np.sqrt(600), rel=0.2)


def test_paired_differences_cancel_what_the_requests_share():
    rng = np.random.default_rng(1)
    n = 400
    a = (rng.random(n) < 0.6).astype(float)
    b = a.copy()
    flip = rng.choice(n, 20, replace=False)
    b[flip] = 1 - b[flip]  # b differs from a on 20 requests only
    items = {"a": {"t": a, "u": a}, "b": {"t": b, "u": b}, "ea": {"t": a}, "eb": {"u": b}}
    out = report_intervals(items, ["t", "u"], {"t": "ea", "u": "eb"}, reference="a")
    point, low, high = out["differences"]["b"]["t"]
    assert point == pytest.approx(a.mean() - b.mean())
    unpaired = np.subtract(*out["methods"]["a"]["t"][::-1]) + np.subtract(
        *out["methods"]["b"]["t"][::-1]
    )
    assert high - low < unpaired / 3  # pairing resolves far finer than two separate intervals
    assert low <= point <= high
    # retention: the worst task's share of its expert's score
    r_point = out["differences"]["b"]["retention"][0]
    want = retention({"t": a.mean(), "u": a.mean()}, {"t": a.mean(), "u": b.mean()}) - retention(
        {"t": b.mean(), "u": b.mean()}, {"t": a.mean(), "u": b.mean()}
    )
    assert r_point == pytest.approx(want)


def test_objectives_rank_a_model_that_keeps_every_skill_above_one_that_drops_one():
    experts = {"code": 0.9, "sql": 0.8, "shell": 0.9}
    drops_sql = {"code": 0.9, "sql": 0.0, "shell": 0.9}  # average 0.60
    keeps_all = {"code": 0.6, "sql": 0.5, "shell": 0.6}  # average 0.57
    assert objective_value("mean", drops_sql, experts) > objective_value("mean", keeps_all, experts)
    assert objective_value("retention", keeps_all, experts) > objective_value(
        "retention", drops_sql, experts
    )
    assert objective_value("retention", keeps_all, experts) == (
        pytest.approx(0.5 / 0.8),
        pytest.approx((0.6 + 0.5 + 0.6) / 3),
    )
    broken = {"code": float("nan"), "sql": 0.5, "shell": 0.6}
    assert objective_value("retention", broken, experts)[0] == float("-inf")
