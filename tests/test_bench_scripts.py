"""The benchmark scripts run (in their --small mode) and end with a parseable RESULT line.

Their figures are measured by running them, never asserted here.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.parametrize(
    ("script", "keys"),
    [
        ("materialize.py", ["bandwidth_fraction", "vs_mergekit_mem", "vs_mergekit_disk"]),
        ("gpu.py", ["hbm_fraction", "vs_torch_ref", "vs_mergekit", "svd_mutation_s"]),
        ("decode.py", ["decode_speedup", "lean_speedup", "flop_roofline", "roofline"]),
        (
            "throughput.py",
            [
                "s_per_child_before",
                "s_per_child_exact",
                "speedup_exact",
                "cache_hit",
                "speedup_racing",
                "raced_agreement",
                "tokens_identical",
            ],
        ),
        ("replay.py", ["replay_ratio_default"]),
        ("sandbox.py", ["python_s_per_100", "shell_s_per_100"]),
        (
            "stage.py",
            [
                "distinct_val_min",
                "distinct_test_min",
                "overlap",
                "own_skill_min",
                "above_base_min",
                "mean_merge_retention_min",
                "build_s",
                "weights_hash",
            ],
        ),
        ("evaluators.py", ["speedup_2v1", "bytes_per_candidate"]),
    ],
)
def test_benchmark_runs_small(script, keys):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--small", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    number = r"-?[0-9.]+(e-?[0-9]+)?"
    pattern = "RESULT " + " ".join(
        rf"{k}=[0-9a-f]{{16}}" if k.endswith("hash") else rf"{k}={number}" for k in keys
    )
    assert re.fullmatch(pattern, last), last
