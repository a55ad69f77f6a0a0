from __future__ import annotations

import pytest
import torch
from conftest import EXPERTS, save_safetensors_space, synthetic_state_dicts
from safetensors.torch import save_file

from cycleqd import Genome, Materializer, ModelLoadError, WeightSpace, load_state_dict


def test_task_vectors_are_expert_minus_base(space, state_dicts):
    base, experts = state_dicts
    assert space.expert_names == list(EXPERTS)
    for k, name in enumerate(EXPERTS):
        for t in space.tensor_names:
            want = experts[name][t].float() - base[t].float()
            assert torch.equal(space.task_vector(k, t), want)
    assert "model.position_ids" not in space.tensor_names
    assert torch.equal(space.buffers["model.position_ids"], base["model.position_ids"])


def test_banks_group_same_shape_tensors(space):
    shapes = [b.shape for b in space.banks]
    assert len(shapes) == len(set(shapes))
    q_bank = next(b for b in space.banks if b.shape == (6, 6))
    assert q_bank.names == [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
    ]
    assert q_bank.taus.shape == (3, 2, 36)


def test_expert_genome_materialises_the_expert(space, state_dicts):
    _, experts = state_dicts
    mat = Materializer(space)
    for k, name in enumerate(EXPERTS):
        out = mat.materialize(Genome.expert(space, k))
        for t, v in experts[name].items():
            torch.testing.assert_close(out[t], v, rtol=0, atol=1e-6)


def test_tiny_llama_task_vectors_round_trip_through_save_and_load(tiny_llama_dirs, tmp_path):
    from transformers import LlamaForCausalLM

    base_dir, expert_dirs = tiny_llama_dirs
    space = WeightSpace.from_paths(base=base_dir, experts=expert_dirs)
    base_model = LlamaForCausalLM.from_pretrained(base_dir)
    base_sd = base_model.state_dict()
    for k, (name, path) in enumerate(expert_dirs.items()):
        expert_sd = LlamaForCausalLM.from_pretrained(path).state_dict()
        for t in space.tensor_names:
            assert torch.equal(space.task_vector(k, t), expert_sd[t] - base_sd[t]), (name, t)
    # a merged child, saved by transformers and loaded back, keeps its exact bytes
    child = Genome.linear(space, torch.tensor([0.5, 0.3, 0.2]))
    weights = Materializer(space).weights(child)
    base_model.load_state_dict(weights)
    base_model.save_pretrained(tmp_path / "child")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "child").state_dict()
    for t in space.tensor_names:
        assert torch.equal(reloaded[t], weights[t]), t


def test_safetensors_files_and_dtype_cast(tmp_path):
    base_path, expert_paths = save_safetensors_space(tmp_path)
    space = WeightSpace.from_paths(base=base_path, experts=expert_paths, dtype="bfloat16")
    assert {b.dtype for b in space.banks} == {torch.bfloat16}
    assert space.buffers["model.position_ids"].dtype == torch.int64
    assert space.checkpoint_bytes == space.num_parameters * 2 + 7 * 8


def test_missing_expert_path_is_named(tmp_path):
    base_path, expert_paths = save_safetensors_space(tmp_path)
    expert_paths["sql"] = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match=r"expert 'sql': path .*nowhere does not exist"):
        WeightSpace.from_paths(base=base_path, experts=expert_paths)


def test_expert_with_other_shape_names_the_tensor():
    base, experts = synthetic_state_dicts()
    experts["sql"]["model.layers.1.mlp.up_proj.weight"] = torch.zeros(9, 6)
    with pytest.raises(
        ModelLoadError,
        match=r"expert 'sql': tensor "
        r"'model.layers.1.mlp.up_proj.weight' has shape \(9, 6\).*base has "
        r"shape \(10, 6\)",
    ):
        WeightSpace(base=base, experts=experts)


def test_expert_with_other_dtype_or_names_is_refused():
    base, experts = synthetic_state_dicts()
    experts["code"]["model.norm.weight"] = experts["code"]["model.norm.weight"].half()
    with pytest.raises(
        ModelLoadError,
        match=r"'model.norm.weight' has shape \(6,\) dtype "
        r"float16 but the base has shape \(6,\) dtype float32",
    ):
        WeightSpace(base=base, experts=experts)
    base, experts = synthetic_state_dicts()
    del experts["shell"]["lm_head.weight"]
    with pytest.raises(ModelLoadError, match=r"expert 'shell' lacks tensor 'lm_head.weight'"):
        WeightSpace(base=base, experts=experts)
    base, experts = synthetic_state_dicts()
    experts["shell"]["extra.bias"] = torch.zeros(2)
    with pytest.raises(
        ModelLoadError,
        match=r"expert 'shell' has tensor 'extra.bias' that the "
        r"base lacks",
    ):
        WeightSpace(base=base, experts=experts)


def test_pickle_checkpoints_need_allow_pickle(tmp_path):
    base, experts = synthetic_state_dicts()
    torch.save(base, tmp_path / "base.pt")
    (tmp_path / "expert").mkdir()
    torch.save(experts["code"], tmp_path / "expert" / "pytorch_model.bin")
    with pytest.raises(
        ModelLoadError,
        match=r"base: .*base.pt is a pickle checkpoint.*"
        r"allow_pickle: true",
    ):
        WeightSpace.from_paths(base=tmp_path / "base.pt", experts={"code": tmp_path / "expert"})
    save_file(base, tmp_path / "base.safetensors")
    with pytest.raises(ModelLoadError, match=r"expert 'code': .*pytorch_model.bin is a pickle"):
        WeightSpace.from_paths(
            base=tmp_path / "base.safetensors", experts={"code": tmp_path / "expert"}
        )
    space = WeightSpace.from_paths(
        base=tmp_path / "base.pt", experts={"code": tmp_path / "expert"}, allow_pickle=True
    )
    assert torch.equal(
        space.task_vector(0, "lm_head.weight"),
        experts["code"]["lm_head.weight"] - base["lm_head.weight"],
    )


def test_unreadable_paths_are_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="holds no weights"):
        load_state_dict(tmp_path / "empty", what="base")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a weights file"):
        load_state_dict(tmp_path / "w.npz", what="base")


def test_svd_factors_are_cached_on_disk(tmp_path, state_dicts, monkeypatch):
    base, experts = state_dicts
    names = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    first = WeightSpace(base=base, experts=experts, cache_dir=tmp_path).svd_factors(1, names)
    assert len(list(tmp_path.glob("svd-*.safetensors"))) == 1
    second_space = WeightSpace(base=base, experts=experts, cache_dir=tmp_path)

    def no_svd(*args, **kwargs):
        raise AssertionError("the cached factors should have been read, not recomputed")

    monkeypatch.setattr(torch.linalg, "svd", no_svd)
    second = second_space.svd_factors(1, names)
    for n in names:
        U, S, V = second[n]
        torch.testing.assert_close(U * S @ V.T, second_space.task_vector(1, n), atol=1e-5, rtol=0)
        for a, b in zip(first[n], second[n], strict=True):
            assert torch.equal(a, b)


def test_fingerprint_samples_stay_inside_large_tensors():
    from cycleqd.weights.space import sample_indices

    for numel in (1, 2, 63, 64, 65, 32_768_000, 525_336_576):
        picks = sample_indices(numel, 64)
        assert len(picks) == min(64, numel) and int(picks[0]) == 0
        assert int(picks[-1]) == numel - 1 and bool((picks[1:] > picks[:-1]).all())


def test_svd_factors_come_a_few_matrices_at_a_time(state_dicts, monkeypatch):
    """Chunking the batched SVD (to bound its memory) changes no factor and no shape."""
    import cycleqd.weights.space as weights

    base, experts = state_dicts
    space = WeightSpace(base=base, experts=experts)
    names = space.svd_targets()
    batch_sizes = []
    svd = torch.linalg.svd

    def counting(mats, **kwargs):
        batch_sizes.append(mats.shape[0])
        return svd(mats, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", counting)
    monkeypatch.setattr(weights, "SVD_CHUNK", 1)
    one_by_one = space.svd_factors(0, names, rank=2)
    assert batch_sizes and set(batch_sizes) == {1}
    for name in names:
        U, S, Vh = svd(space.task_vector(0, name).float(), full_matrices=False)
        u, s, v = one_by_one[name]
        assert u.is_contiguous() and v.is_contiguous() and s.shape == (2,)
        torch.testing.assert_close(s, S[:2])
        torch.testing.assert_close(u @ torch.diag(s) @ v.T, U[:, :2] @ torch.diag(S[:2]) @ Vh[:2])
