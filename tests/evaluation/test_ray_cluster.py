"""A two-node Ray cluster (simulated on this machine) runs a short evolution via --ray-address."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ray
from conftest import ray_yaml
from ray.cluster_utils import Cluster


def test_a_two_node_cluster_runs_an_evolution_through_ray_address(tmp_path, digits_cache):
    ray.shutdown()  # this process attaches to nothing: the CLI below is the cluster's driver
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        nodes = {node.node_id for node in cluster.list_all_nodes()}
        assert len(nodes) == 2
        # one CPU per worker, one CPU per node: the two workers must run on different nodes
        path = ray_yaml(tmp_path / "c.yaml", digits_cache, cpus_per_worker=1, short_report=True)
        env = {**os.environ, "COLUMNS": "200"}
        cmd = [sys.executable, "-m", "cycleqd", "evolve", str(path), "--run-dir"]
        done = subprocess.run(
            [*cmd, str(tmp_path / "run"), "--ray-address", cluster.address],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        cluster.shutdown()
    events = [json.loads(line) for line in open(tmp_path / "run" / "events.jsonl")]
    workers = [e for e in events if e["event"] == "workers"]
    assert len(workers) == 1 and set(workers[0]["nodes"]) == nodes
    children = [e for e in events if e["event"] in ("child", "failed")]
    assert sorted(e["child"] for e in children) == list(range(3 * 4))
    assert "cycleqd_final" in json.loads((tmp_path / "run" / "summary.json").read_text())["methods"]
    # the terminal shows cycleqd's output only: no Ray start-up, dashboard or token lines
    assert "finished 3 generations" in done.stdout
    for noise in ("Ray", "INFO", "WARNING", "dashboard", "token"):
        assert noise not in done.stdout + done.stderr, (noise, done.stdout + done.stderr)
