"""Model sources: Hugging Face directories and plain state dicts, resolving, loading, export."""

from __future__ import annotations

import pytest
import torch
from conftest import save_safetensors_space
from safetensors.torch import load_file

from cycleqd.errors import CycleQDError
from cycleqd.models.sources import PathsSource, is_hub_id, load_into, resolve_model
from cycleqd.weights.checkpoints import load_state_dict


def test_a_transformers_base_builds_its_architecture_and_exports_a_loadable_folder(
    tiny_llama_dirs, tmp_path
):
    base, experts = tiny_llama_dirs
    source = PathsSource(base=base, experts=experts)
    assert source.is_transformers
    model = source.make_model()
    assert type(model).__name__ == "LlamaForCausalLM"
    weights = {k: v + 1.0 for k, v in load_state_dict(experts["code"]).items()}
    out = source.export(weights, tmp_path / "out")
    assert (out / "config.json").is_file()
    back = load_state_dict(out)
    assert set(back) == set(weights)
    assert all(torch.equal(back[k], weights[k]) for k in weights)


def test_a_plain_state_dict_needs_its_architecture_named(tmp_path):
    base, experts = save_safetensors_space(tmp_path)
    source = PathsSource(base=base, experts=experts)
    with pytest.raises(CycleQDError, match=r"models\.params\.model"):
        source.make_model()
    source.export(load_file(base), tmp_path / "out")  # without one it exports the state dict
    assert set(load_file(tmp_path / "out" / "model.safetensors")) == set(load_file(base))


def test_weights_of_another_architecture_are_refused_by_name(tiny_llama_dirs):
    base, _ = tiny_llama_dirs
    model = PathsSource(base=base, experts={}).make_model()
    weights = load_state_dict(base)
    weights.pop("model.norm.weight")
    with pytest.raises(CycleQDError, match=r"do not fit.*model\.norm\.weight"):
        load_into(model, weights)


def test_local_paths_resolve_as_they_are_and_ids_read_as_ids(tmp_path):
    assert resolve_model(tmp_path) == tmp_path
    assert is_hub_id("acme/tiny-base") and not is_hub_id(tmp_path)
    with pytest.raises(CycleQDError, match="does not exist"):
        resolve_model(str(tmp_path / "no" / "such" / "dir"))
