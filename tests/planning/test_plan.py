"""``cycleqd plan``: the memory and cost arithmetic, the refusal, reading model shapes offline."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import REPO
from safetensors.torch import load_file
from typer.testing import CliRunner

from cycleqd.cli import app
from cycleqd.config import load_config
from cycleqd.errors import CycleQDError
from cycleqd.models.sources import PathsSource, resolve_model
from cycleqd.planning import GiB, architecture, make_plan, workload
from cycleqd.weights.space import DEFAULT_SVD_EXCLUDE

runner = CliRunner()


@pytest.fixture
def small_config(tmp_path, tiny_llama_dirs):
    base, experts = tiny_llama_dirs
    questions = tmp_path / "db.jsonl"
    questions.write_text("".join(json.dumps({"question": f"q{i}"}) + "\n" for i in range(3)))
    generation = {"max_new_tokens": 4, "backend_params": {"batch_size": 4, "max_prompt_tokens": 8}}
    data = {
        "name": "small",
        "models": {
            "base": str(base),
            "experts": {"code": str(experts["code"]), "sql": str(experts["sql"])},
            "device": "cuda",
        },
        "tasks": [
            {
                "name": "code",
                "scorer": "code_pass_at_1",
                "params": {"val": "humaneval", "limit": 10, **generation},
            },
            {
                "name": "sql",
                "scorer": "dbbench",
                "params": {"val": str(questions), "max_turns": 2, **generation},
            },
        ],
        "evolution": {
            "generations": 10,
            "batch_size": 4,
            "mutation": {"name": "svd_expert", "params": {"rank": 2}},
        },
    }
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, base


def test_plan_arithmetic_on_a_small_config(small_config):
    path, base = small_config
    plan = make_plan(load_config(path), device="h200")
    weights = load_file(base / "model.safetensors")
    params = sum(t.numel() for t in weights.values() if t.is_floating_point())
    assert plan.architecture.parameters == params
    assert plan.memory["base"] == params * 4  # float32 as stored
    assert plan.memory["task vectors"] == 2 * params * 4
    assert plan.memory["resident model"] == params * 4
    svd = sum(
        (t.shape[0] + t.shape[1]) * 2 + 2
        for name, t in weights.items()
        if t.dim() == 2 and not re.search(DEFAULT_SVD_EXCLUDE, name)
    )
    assert plan.memory["svd cache"] == 2 * svd * 4  # two experts, rank 2, float32 factors
    code, sql = plan.workloads
    assert (code.problems, code.turns, code.batch, code.sequence) == (10, 1, 4, 12)
    assert (sql.problems, sql.turns, sql.batch, sql.sequence) == (3, 2, 3, 20)
    per_token = 2 * 2 * 1 * 8 * 4  # layers × (K, V) × kv heads × head dim × bytes
    assert plan.memory["kv cache"] == 3 * 20 * per_token
    assert plan.memory["activations"] == 3 * 20 * (4 * 16 + 2 * 32) * 4 + 4 * 64 * 4
    banks = {}
    for t in weights.values():
        banks[tuple(t.shape)] = banks.get(tuple(t.shape), 0) + t.numel()
    assert plan.memory["materialiser workspace"] == max(banks.values()) * 4
    # the first child's SVD: the gate and up projections (32 × 16, 4 of them) are the costliest
    # chunk: gathered in float32 and the storage dtype, U, S and V
    per_matrix = 32 * 16 * (4 + 4) + (32 + 16 + 1) * 16 * 4
    # replaying a child's rank-2 spectral terms: the same 4 matrices' stacked U, V and scaled U
    replay = 4 * (2 * 32 + 16) * 2 * 4
    assert plan.transient == {
        "svd at the first child": 4 * per_matrix,
        "spectral terms of a child": replay,
    }
    steady = sum(v for k, v in plan.memory.items() if k != "overhead")
    generation = plan.memory["kv cache"] + plan.memory["activations"]
    assert plan.steady == steady
    assert plan.first_child == steady - generation + max(4 * per_matrix, replay)
    peak = max(plan.steady, plan.first_child)
    assert plan.memory["overhead"] == pytest.approx(2 * GiB + 0.05 * peak)
    assert plan.total == pytest.approx(peak + plan.memory["overhead"])
    assert plan.budget == 143771 * 2**20 and plan.fits  # an H200 as nvidia-smi reports it
    assert plan.driver == (
        params * 4 * (1 + 2 + 1)
        + plan.memory["materialiser workspace"]
        + plan.memory["svd cache"]
        + 4 * per_matrix
    )
    decode_code = 3 * 4 * (params * 4 + 4 * 12 * per_token / 2) / 4.8e12  # 3 batches × 4 steps
    assert plan.seconds["generate code"] > decode_code
    assert plan.run_hours == pytest.approx(40 * plan.per_child / 3600)


def test_plan_refuses_what_does_not_fit(small_config):
    path, _ = small_config
    result = runner.invoke(app, ["plan", str(path), "--memory-gb", "1"])
    assert result.exit_code == 1
    assert "does not fit" in result.output and "a worker needs 2.0 GiB but has 0.9 GiB" in (
        result.output
    )
    assert "peak, generating" in result.output
    result = runner.invoke(app, ["plan", str(path), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["fits"] and data["memory_bytes"]["svd cache"] > 0
    result = runner.invoke(app, ["plan", str(path), "--device", "tpu"])
    assert result.exit_code == 2 and "unknown device 'tpu'" in result.output


def test_plan_vllm_engine_share_and_blockers(small_config):
    path, _ = small_config
    cfg = load_config(
        path,
        [
            "tasks.0.params.backend=vllm",
            "tasks.1.params.backend=vllm",
            "tasks.0.params.backend_params={gpu_memory_utilization: 0.25}",
            "tasks.1.params.backend_params={gpu_memory_utilization: 0.25}",
        ],
    )
    plan = make_plan(cfg, device="h100")
    assert plan.memory["vllm engine"] == pytest.approx(0.25 * 81559 * 2**20)  # one engine
    assert "kv cache" not in plan.memory and plan.fits
    cfg = load_config(path, ["tasks.1.params.backend=vllm"])  # a second engine, other params
    cfg.tasks[0].params["backend"] = "vllm"
    cfg.tasks[0].params["backend_params"] = {"gpu_memory_utilization": 0.3}
    plan = make_plan(cfg, device="h100")
    assert plan.memory["vllm engine"] == pytest.approx((0.3 + 0.35) * 81559 * 2**20)
    assert any("2 vLLM engines" in n for n in plan.notes)


def test_the_papers_config_plans_for_one_h200():
    result = runner.invoke(app, ["plan", str(REPO / "experiments/llama3_8b_agentbench.yaml")])
    assert result.exit_code == 0, result.output
    assert "8.03 B parameters" in result.output and "NVIDIA H200" in result.output
    assert "fits" in result.output
    # the paper's budget: 1,200 children, one per generation as the reference code makes them
    assert "1200 generations × 1 child = 1,200 children" in result.output
    cfg = load_config(REPO / "experiments/llama3_8b_agentbench.yaml")
    cfg.check_names()  # every scorer and operator it names exists
    assert [t.scorer for t in cfg.tasks] == ["code_pass_at_1", "dbbench", "os_interaction"]
    from cycleqd.scorers import SCORERS

    with pytest.raises(CycleQDError, match="data/dbbench/dev.jsonl does not exist"):
        SCORERS.build(cfg.tasks[1].scorer, **cfg.tasks[1].params)
    plan = make_plan(cfg)
    assert plan.architecture.parameters == 8_030_261_248  # Llama-3-8B's published count
    assert plan.memory["base"] == 8_030_261_248 * 2  # bfloat16
    full = make_plan(
        load_config(
            REPO / "experiments/llama3_8b_agentbench.yaml",
            ["evolution.mutation.params.rank=null"],
        )
    )
    assert not full.fits and full.advice()[0].startswith("svd cache")


def _fake_hub_cache(root, repo_id, model_dir):
    """Lay ``model_dir``'s files out as the Hugging Face cache does for ``repo_id``."""
    commit = "0" * 40
    folder = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for item in model_dir.iterdir():
        (snapshot / item.name).write_bytes(item.read_bytes())
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_ids_resolve_through_the_local_cache(tmp_path, tiny_llama_dirs, monkeypatch):
    base, experts = tiny_llama_dirs
    cache = tmp_path / "hub"
    snapshot = _fake_hub_cache(cache, "acme/tiny-base", base)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model("acme/tiny-base") == snapshot
    assert architecture("acme/tiny-base").source.startswith("the Hugging Face cache")
    source = PathsSource(base="acme/tiny-base", experts={"code": str(experts["code"])})
    resolved_base, resolved = source.prepare(tmp_path)
    assert resolved_base == snapshot and resolved["code"] == experts["code"]
    with pytest.raises(CycleQDError, match="not in the local Hugging Face cache.*hf download"):
        resolve_model("acme/not-cached")
    with pytest.raises(CycleQDError, match="cannot read the shape.*hf download"):
        architecture("acme/not-cached")
    with pytest.raises(CycleQDError, match="does not exist"):
        resolve_model(str(tmp_path / "no" / "such" / "dir"))


def test_a_plug_in_scorer_is_planned_by_its_own_hook_or_an_announced_guess(
    small_config, tmp_path, monkeypatch
):
    path, _ = small_config
    (tmp_path / "plan_shaped_scorers.py").write_text(
        "from cycleqd.scorers import TaskShape\n"
        "class Shaped:\n"
        "    @staticmethod\n"
        "    def plan_shape(params):\n"
        "        return TaskShape(problems=params['n'], turns=3, prompt_tokens=6, new_tokens=2)\n"
        "    def __init__(self, n):\n"
        "        self.n = n\n"
        "def unshaped(**params):\n"
        "    return lambda model, split: 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = yaml.safe_load(path.read_text())
    data["tasks"][0] = {"name": "code", "scorer": "plan_shaped_scorers:Shaped", "params": {"n": 7}}
    data["tasks"][1] = {"name": "sql", "scorer": "plan_shaped_scorers:unshaped", "params": {}}
    path.write_text(yaml.safe_dump(data))
    shaped, unshaped = make_plan(load_config(path), device="h200").workloads
    # the hook's shape: 7 conversations of 3 turns, a 6-token prompt and 2-token replies
    assert (shaped.problems, shaped.turns, shaped.sequence) == (7, 3, 6 + 3 * 2 * 2 - 2)
    assert shaped.assumed == []
    assert (unshaped.problems, unshaped.prompt_tokens, unshaped.new_tokens) == (100, 512, 256)
    assert unshaped.assumed == [
        "scorer 'plan_shaped_scorers:unshaped' has no plan_shape hook: "
        "100 problems of 512 + 256 tokens"
    ]


def test_the_skill_scorers_shape_is_a_child_on_the_search_split():
    cfg = load_config(REPO / "experiments" / "quickstart.yaml")
    for task in cfg.tasks:  # 80 search requests each, in one decoding batch
        shape = workload(task)
        assert (shape.problems, shape.batch, shape.turns, shape.assumed) == (80, 80, 1, [])
