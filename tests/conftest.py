"""Shared fixtures: tiny weight spaces (synthetic and a real transformers Llama)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from cycleqd import WeightSpace

# GPU kernels run under Triton's interpreter where no GPU exists (set before any kernel is built)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

EXPERTS = ("code", "sql", "shell")
REPO = Path(__file__).resolve().parent.parent


def synthetic_state_dicts(seed: int = 0, *, dtype: torch.dtype = torch.float32):
    """A Llama-named base and three experts: two layers, odd shapes, one integer buffer."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    base = {
        "model.embed_tokens.weight": rand(11, 6),
        "model.norm.weight": rand(6),
        "lm_head.weight": rand(11, 6),
        "model.position_ids": torch.arange(7),
    }
    for layer in range(2):
        p = f"model.layers.{layer}."
        base |= {
            p + "self_attn.q_proj.weight": rand(6, 6),
            p + "self_attn.k_proj.weight": rand(3, 6),
            p + "mlp.up_proj.weight": rand(10, 6),
            p + "mlp.down_proj.weight": rand(6, 10),
            p + "input_layernorm.weight": rand(6),
        }
    experts = {}
    for name in EXPERTS:
        experts[name] = {
            k: (v + 0.1 * rand(*v.shape) if v.is_floating_point() else v.clone())
            for k, v in base.items()
        }
    return base, experts


@pytest.fixture
def state_dicts():
    return synthetic_state_dicts()


@pytest.fixture
def space(state_dicts):
    base, experts = state_dicts
    return WeightSpace(base=base, experts=experts)


def save_safetensors_space(root: Path, seed: int = 0) -> tuple[Path, dict[str, Path]]:
    """Write a synthetic base and experts as .safetensors files under ``root``."""
    base, experts = synthetic_state_dicts(seed)
    root.mkdir(parents=True, exist_ok=True)
    save_file(base, root / "base.safetensors")
    paths = {}
    for name, sd in experts.items():
        save_file(sd, root / f"{name}.safetensors")
        paths[name] = root / f"{name}.safetensors"
    return root / "base.safetensors", paths


def tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="session")
def tiny_llama_dirs(tmp_path_factory):
    """A tiny transformers Llama base and three experts saved with save_pretrained."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_llama_config())
    base.save_pretrained(root / "base")
    experts = {}
    for i, name in enumerate(EXPERTS):
        torch.manual_seed(100 + i)
        model = LlamaForCausalLM(tiny_llama_config())
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        model.save_pretrained(root / name)
        experts[name] = root / name
    return root / "base", experts


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def digits_yaml(path, cache, **evolution):
    data = yaml.safe_load(open(REPO / "experiments" / "digits.yaml"))
    data["cache_dir"] = str(cache)
    data["evolution"].update({"generations": 12, "batch_size": 4, **evolution})
    path.write_text(yaml.safe_dump(data))
    return path


def ray_yaml(path, cache, *, tasks=None, short_report=False, **evaluation):
    """A short digits run scored on Ray workers of half a CPU (room for two on two cores)."""
    data = yaml.safe_load(open(digits_yaml(path, cache, generations=3)))
    data["evaluation"] = {"backend": "ray", "workers": 2, "cpus_per_worker": 0.5, **evaluation}
    if tasks:
        data["tasks"] = tasks
    if short_report:  # the paper's final model and one λ: few evaluations after the loop
        data["final"] = {"method": "softmax", "lambdas": [1.0]}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def tinylm_micro(tmp_path_factory):
    """The tiny language models of the micro recipe, built once: (cache, source, paths)."""
    from dataclasses import asdict

    from cycleqd.suite.tinylm import TinyLMRecipe, TinyLMSource

    cache = tmp_path_factory.mktemp("tinylm")
    source = TinyLMSource(**asdict(TinyLMRecipe.micro()))
    return cache, source, source.prepare(cache)


def tiny_quickstart_yaml(path, cache, *, problems=4, final=None, evaluation=None, **evolution):
    """The quickstart config on the micro tiny LMs in ``cache``: a run of seconds."""
    from dataclasses import asdict

    from cycleqd.suite.tinylm import TinyLMRecipe

    data = yaml.safe_load(open(REPO / "experiments" / "quickstart.yaml"))
    data["cache_dir"] = str(cache)
    data["models"]["params"] = asdict(TinyLMRecipe.micro())
    for task in data["tasks"]:
        task["params"] |= {"problems": problems, "test_problems": problems, "max_new_tokens": 8}
        task["params"]["search_problems"] = max(1, problems // 2)
    data["evolution"] |= evolution
    data["final"] = final or {"lambdas": [0.5, 1.0]}
    if evaluation:
        data["evaluation"] = evaluation
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def tiny_lm(tinylm_micro):
    """The micro tiny base language model, weights loaded (nothing attached to it)."""
    import transformers

    _, _, (base, _) = tinylm_micro
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_ctx(tinylm_micro):
    """The scoring context an evaluator builds for ``tiny_lm``: its tokenizer and directory."""
    from cycleqd.scorers import ScoringContext

    _, _, (base, _) = tinylm_micro
    return ScoringContext.for_base(base)


def limit_to_children(evolver):
    """Lift ``evolver``'s evaluation time limit while it seeds and reports.

    A test's short limit is meant for the child it makes hang; the experts' first scoring (a
    worker's imports and loads) and the report are honest work that a loaded machine may slow.
    """
    limit = evolver.evaluator.timeout_s

    def unlimited(phase):
        def call(*args, **kwargs):
            evolver.evaluator.timeout_s = None
            try:
                return phase(*args, **kwargs)
            finally:
                evolver.evaluator.timeout_s = limit

        return call

    evolver.seed, evolver.finish = unlimited(evolver.seed), unlimited(evolver.finish)
    return evolver
