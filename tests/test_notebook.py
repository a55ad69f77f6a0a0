"""The example notebook runs headless against a small run made here, and shows what it says."""

from __future__ import annotations

from dataclasses import asdict

import nbformat
import yaml
from conftest import REPO
from nbclient import NotebookClient

from cycleqd import Evolver, load_config
from cycleqd.store import RunStore
from cycleqd.tinylm import TinyLMRecipe


def outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_the_inspect_archive_notebook_runs_on_a_finished_run(tinylm_micro, tmp_path, monkeypatch):
    cache, _, _ = tinylm_micro
    config = yaml.safe_load(open(REPO / "experiments" / "quickstart.yaml"))
    config["cache_dir"] = str(cache)
    config["models"]["params"] = asdict(TinyLMRecipe.micro())
    for task in config["tasks"]:
        task["params"] |= {"problems": 4, "test_problems": 4, "max_new_tokens": 8}
    config["evolution"] |= {"generations": 3, "batch_size": 3, "bins": 5}
    config["final"] = {"lambdas": [0.5, 1.0], "ties_densities": [0.5]}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    cfg = load_config(tmp_path / "tiny.yaml")
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
