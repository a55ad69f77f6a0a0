"""``cycleqd compare``: every method on the same experts and budget, over seeds, resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import digits_yaml, tiny_quickstart_yaml
from typer.testing import CliRunner

from cycleqd import load_config
from cycleqd.cli import app
from cycleqd.compare import ABLATIONS, compare, evaluation_budget, methods_of
from cycleqd.config import ConfigError
from cycleqd.errors import CycleQDError
from cycleqd.suite.tinylm import TinyLMRecipe


@pytest.fixture(scope="module")
def digits_compare(tmp_path_factory, digits_cache):
    root = tmp_path_factory.mktemp("compare")
    cfg = load_config(digits_yaml(root / "d.yaml", digits_cache, generations=3, batch_size=3))
    summary = compare(cfg, root / "out", seeds=2)
    return cfg, root / "out", summary


def test_every_method_is_reported_over_seeds_with_the_same_budget(digits_compare):
    cfg, root, summary = digits_compare
    methods = summary["methods"]
    assert list(methods) == [
        "base",
        *(f"expert_{t}" for t in cfg.task_names),
        "task_arithmetic",
        "ties",
        "dare_ties",
        "cma_es",
        *ABLATIONS,
    ]  # digits trains no language model: no multi-task fine-tune
    assert summary["experts_vary_with_seed"]  # digits builds its experts: each seed its own
    for data in methods.values():
        assert data["seeds"] == [0, 1]
        for column in [*cfg.task_names, "average"]:
            values = data["scores"][column]["values"]
            assert all(0 <= v <= 1 for v in values)
            assert data["scores"][column]["mean"] == pytest.approx(np.mean(values))
            if len(values) > 1:
                assert data["scores"][column]["sd"] == pytest.approx(np.std(values, ddof=1))
            # what one seed's figure resolves: its interval over the test requests
            for (low, high), value in zip(data["scores"][column]["intervals"], values, strict=True):
                assert low - 1e-9 <= value <= high + 1e-9
    # the experts differ between seeds: seed 1 built its own
    assert methods["expert_rotated"]["scores"]["rotated"]["values"][0] != pytest.approx(
        methods["expert_rotated"]["scores"]["rotated"]["values"][1]
    )
    # CycleQD minus each method, paired on the same requests and seed
    diffs = summary["differences"]
    assert summary["reference"] == "cycleqd" and "cycleqd" not in diffs
    for name, d in diffs.items():
        average = d["columns"]["average"]
        want = np.subtract(
            methods["cycleqd"]["scores"]["average"]["values"],
            methods[name]["scores"]["average"]["values"],
        )
        assert average["values"] == pytest.approx(want.tolist())
        low, high = average["interval"]
        assert low <= high
    budget = evaluation_budget(cfg)
    assert budget == 3 + 3 * 3 + 3 + 14  # seeds, children, experts on val, final candidates
    assert methods["cma_es"]["val_evaluations"] == [budget, budget]
    for name in ABLATIONS:
        assert all(3 + 9 <= n <= budget for n in methods[name]["val_evaluations"])
    # the expert of a task scores best on it among the experts: the table is what ran
    experts = {t: methods[f"expert_{t}"]["scores"] for t in cfg.task_names}
    for t in cfg.task_names:
        assert experts[t][t]["mean"] == max(e[t]["mean"] for e in experts.values())
    table = (root / "compare.md").read_text()
    assert all(f"| {name} |" in table for name in methods)
    assert (root / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((root / "compare.json").read_text()) == summary


def test_every_reported_method_is_a_registered_function(tmp_path, digits_cache):
    from cycleqd.compare.methods import METHODS, _method

    cfg = load_config(digits_yaml(tmp_path / "d.yaml", digits_cache))
    for name in methods_of(cfg):
        assert callable(_method(name))
        assert name in METHODS or name == "base" or name.startswith("expert_")
    with pytest.raises(CycleQDError, match="unknown comparison method 'tie'; known: base"):
        _method("tie")


def test_the_ablation_chain_changes_one_thing_at_a_time(digits_compare):
    cfg, root, _ = digits_compare
    evo = {
        name: yaml.safe_load((root / "runs" / f"{name}-seed1" / "config.yaml").read_text())[
            "evolution"
        ]
        for name in ABLATIONS
    }
    assert evo["cycleqd"] == cfg.evolution.model_dump() and cfg.evolution.cycle
    assert evo["svd_mutation"] == evo["cycleqd"] | {"selection": {"name": "uniform", "params": {}}}
    assert evo["cycling"]["mutation"]["name"] == "gaussian"
    assert evo["cycling"]["mutation"]["params"]["std"] > 0
    assert evo["cycling"] == evo["svd_mutation"] | {"mutation": evo["cycling"]["mutation"]}
    assert evo["fixed_axes"] == evo["cycling"] | {"cycle": False}
    seeds = yaml.safe_load((root / "runs" / "cycleqd-seed1" / "config.yaml").read_text())["seed"]
    assert seeds == 1


def test_a_comparison_resumes_from_its_cells(digits_compare):
    cfg, root, summary = digits_compare
    kept = {p.name: p.stat().st_mtime_ns for p in (root / "cells").iterdir()}
    (root / "cells" / "cma_es__1.json").unlink()
    (root / "cells" / "dare_ties__0.json").unlink()
    again = compare(cfg, root, seeds=2)
    for table in (again, summary):
        for data in table["methods"].values():
            data.pop("seconds")
    assert again == summary  # the recomputed cells are deterministic from their seeds
    for path in (root / "cells").iterdir():
        if path.name not in ("cma_es__1.json", "dare_ties__0.json"):
            assert path.stat().st_mtime_ns == kept[path.name], path.name
    with pytest.raises(ConfigError, match="another config or seed count"):
        compare(cfg, root, seeds=3)
    with pytest.raises(ConfigError, match="unknown method"):
        compare(cfg, root, seeds=2, methods=["mystery"])


def test_the_multitask_finetune_trains_as_long_as_all_experts(tinylm_micro, tmp_path):
    cache, _, _ = tinylm_micro
    tiny_quickstart_yaml(tmp_path / "tiny.yaml", cache, problems=3, final={"lambdas": [1.0]})
    result = CliRunner().invoke(
        app,
        ["compare", str(tmp_path / "tiny.yaml"), "--seeds", "1"]
        + ["--methods", "multitask_finetune,base", "--run-dir", str(tmp_path / "out")],
    )
    assert result.exit_code == 0, result.output
    cell = json.loads((tmp_path / "out" / "cells" / "multitask_finetune__0.json").read_text())
    assert cell["steps"] == 3 * TinyLMRecipe.micro().expert_steps
    trained = list(cache.glob("tinylm-*/multitask-0/model.safetensors"))
    assert len(trained) == 1
    assert "| multitask_finetune |" in result.output and "| base |" in result.output
    summary = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert list(summary["methods"]) == ["base", "multitask_finetune"]
