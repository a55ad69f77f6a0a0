"""The example notebook runs headless against a small run made here, and shows what it says."""

from __future__ import annotations

import nbformat
from conftest import REPO, tiny_quickstart_yaml
from nbclient import NotebookClient

from cycleqd import Evolver, load_config
from cycleqd.engine.store import RunStore


def outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_the_inspect_archive_notebook_runs_on_a_finished_run(tinylm_micro, tmp_path, monkeypatch):
    final = {"lambdas": [0.5, 1.0], "ties_densities": [0.5]}
    path = tiny_quickstart_yaml(
        tmp_path / "tiny.yaml", tinylm_micro[0], final=final, generations=3, batch_size=3, bins=5
    )
    cfg = load_config(path)
    Evolver(cfg, RunStore.create(tmp_path / "run", cfg)).run()

    monkeypatch.setenv("CYCLEQD_RUN", str(tmp_path / "run"))
    notebook = nbformat.read(REPO / "experiments" / "inspect_archive.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    code = [c for c in notebook.cells if c.cell_type == "code"]
    text = "\n".join(outputs(c) for c in code)
    assert "tasks ['code', 'sql', 'shell'], generation 3" in text
    assert "cycleqd_final" in outputs(code[1])  # the summary table
    for task in ("code", "sql", "shell"):
        assert f"archive {task!r}:" in text
    assert any(o.get("data", {}).get("image/png") for o in code[3]["outputs"])  # heatmaps
    assert "genomes in its lineage" in text
    assert "config.json" in outputs(code[5]) and "model.safetensors" in outputs(code[5])
    assert text.count("request: ") == 3 and text.count("  model: ") == 3
