"""Child materialisation against the memory bandwidth and against mergekit, in one process.

On a synthetic Llama-shaped model (>= 0.5 B parameters, bf16) with K = 3 experts:

1. streaming bandwidth: ``torch.add`` and ``copy_`` over 1 GiB bf16 tensors (the faster counts);
2. cycleqd: materialising a task-arithmetic child from its genome (reads base + K task vectors,
   writes the child), as effective bandwidth;
3. mergekit ``merge_state_dicts`` (in memory) of the same merge;
4. mergekit ``run_merge`` (disk to disk, safetensors, warm page cache) of the same merge.

Every timing is the median of ``--repeats`` runs after one warm-up. The last line is
``RESULT bandwidth_fraction=<x> vs_mergekit_mem=<y> vs_mergekit_disk=<z>``.

    python bench/materialize.py            # ~0.53 B parameters, a few minutes on 2 cores
    python bench/materialize.py --small    # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _timing import timed  # bench/ is the script folder

from cycleqd import Genome, Materializer, WeightSpace

K = 3
COEFFICIENTS = (0.45, 0.35, 0.3)


SIZES = {
    "small": dict(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    ),
    "0.5B": dict(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=16,
    ),
}


def llama_config(small: bool):
    from transformers import LlamaConfig

    return LlamaConfig(
        **SIZES["small" if small else "0.5B"],
        tie_word_embeddings=False,
        dtype="bfloat16",
        architectures=["LlamaForCausalLM"],
    )


def synthetic_models(config) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Llama tensor names and shapes (from a meta-device model), random bf16 values."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        shapes = {n: p.shape for n, p in LlamaForCausalLM(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=gen, dtype=torch.bfloat16) for n, s in shapes.items()}
    experts = []
    for _ in range(K):
        expert = {}
        for n, t in base.items():
            noise = torch.randn(t.shape, generator=gen, dtype=torch.bfloat16)
            expert[n] = t + noise.mul_(0.02)
        experts.append(expert)
    return base, experts


def streaming_bandwidth(repeats: int) -> float:
    numel = (1 << 30) // 2  # 1 GiB of bf16
    x = torch.ones(numel, dtype=torch.bfloat16)
    y = torch.ones(numel, dtype=torch.bfloat16)
    z = torch.empty(numel, dtype=torch.bfloat16)
    add = 3 * (1 << 30) / timed(lambda: torch.add(x, y, out=z), repeats)
    copy = 2 * (1 << 30) / timed(lambda: z.copy_(x), repeats)
    print(f"streaming bandwidth: add {add / 1e9:.1f} GB/s, copy {copy / 1e9:.1f} GB/s")
    return max(add, copy)


def write_hf_model(config, state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    config.save_pretrained(path)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny model, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    stream = streaming_bandwidth(args.repeats)

    config = llama_config(args.small)
    base, experts = synthetic_models(config)
    space = WeightSpace(base=base, experts={f"e{k}": e for k, e in enumerate(experts)})
    print(
        f"model: {space.num_parameters / 1e9:.3f} B parameters, "
        f"{space.checkpoint_bytes / 1e9:.2f} GB bf16 checkpoint, {len(space.banks)} banks, K={K}"
    )

    mat = Materializer(space)
    genome = Genome.linear(space, torch.tensor(COEFFICIENTS))
    t_ours = timed(lambda: mat.materialize(genome), args.repeats)
    moved = (2 + K) * space.checkpoint_bytes
    ours_bw = moved / t_ours
    with tempfile.TemporaryDirectory() as tmp:
        size = genome.save(Path(tmp) / "child.genome")
    print(
        f"cycleqd materialise ({mat.backend}): {t_ours:.3f} s, {ours_bw / 1e9:.1f} GB/s "
        f"effective; genome {size} bytes = {size / space.checkpoint_bytes:.2e} of the checkpoint"
    )

    from mergekit.merge_methods.api import merge_state_dicts

    models = {"base": base} | {f"e{k}": e for k, e in enumerate(experts)}
    weights = {f"e{k}": c for k, c in enumerate(COEFFICIENTS)}
    merged: dict[str, torch.Tensor] = {}

    def mergekit_mem() -> None:
        merged.clear()
        merged.update(
            merge_state_dicts(
                models,
                "task_arithmetic",
                base="base",
                parameters={"weight": weights},
                out_dtype=torch.bfloat16,
            )
        )

    t_mem = timed(mergekit_mem, args.repeats)
    ours = mat.materialize(genome)
    diff = max(float((ours[n].float() - merged[n].float()).abs().max()) for n in ours)
    print(f"mergekit merge_state_dicts: {t_mem:.3f} s (max |ours - mergekit| = {diff:.3g})")

    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_hf_model(config, base, root / "base")
        for k, expert in enumerate(experts):
            write_hf_model(config, expert, root / f"e{k}")
        merge_config = MergeConfiguration.model_validate(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(root / "base"),
                "models": [
                    {"model": str(root / f"e{k}"), "parameters": {"weight": c}}
                    for k, c in enumerate(COEFFICIENTS)
                ],
                "dtype": "bfloat16",
            }
        )
        options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True)
        runs = iter(range(10**6))

        def mergekit_disk() -> None:
            run_merge(merge_config, str(root / f"out{next(runs)}"), options=options)

        t_disk = timed(mergekit_disk, args.repeats)
    print(f"mergekit run_merge (disk to disk, warm cache): {t_disk:.3f} s")

    print(
        f"RESULT bandwidth_fraction={ours_bw / stream:.3f} vs_mergekit_mem={t_mem / t_ours:.1f} "
        f"vs_mergekit_disk={t_disk / t_ours:.1f}"
    )


if __name__ == "__main__":
    main()
