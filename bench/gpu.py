"""The GPU hot path at the paper's scale: one prepared script for a GPU machine (< 5 minutes).

On a synthetic Llama-3-8B-shaped state dict (8.03 B parameters, bf16, 224 projection matrices)
with K = 3 task vectors, in one process:

1. HBM streaming bandwidth: a device-to-device copy of 4 GiB;
2. child materialisation through cycleqd's engine with the Triton kernel, and with the plain-torch
   reference (its oracle), as effective bandwidth (reads base + K task vectors, writes the child);
3. SVD mutation per child: ``U diag(r ⊙ S) Vᵀ`` for all 224 matrices from cached bf16 factors
   (batched GEMMs per shape, accumulated in fp32);
4. mergekit ``merge_state_dicts`` of the same task-arithmetic merge on the GPU.

Last line: ``RESULT hbm_fraction=<x> vs_torch_ref=<y> vs_mergekit=<z> svd_mutation_s=<s>``.
``--small`` runs a 2-layer miniature (on the CPU when no GPU exists, the Triton kernel then runs
under Triton's interpreter): a check that the script works, not a measurement.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch
from _timing import timed  # bench/ is the script folder

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from cycleqd.kernels import lowrank_add  # noqa: E402

from cycleqd import Genome, Materializer, WeightSpace  # noqa: E402

K = 3
COEFFICIENTS = (0.45, 0.35, 0.3)
LLAMA3_8B = dict(vocab=128256, hidden=4096, inter=14336, layers=32, kv=1024)
SMALL = dict(vocab=512, hidden=128, inter=448, layers=2, kv=32)


def shapes(vocab: int, hidden: int, inter: int, layers: int, kv: int) -> dict[str, tuple]:
    """Llama tensor names and shapes (embeddings, 7 projections and 2 norms per layer, head)."""
    out = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: torch.device, small: bool, repeats: int) -> float:
    n = (64 << 20) if small else (2 << 30)  # bf16 elements: 128 MiB or 4 GiB
    src = torch.empty(n, dtype=torch.bfloat16, device=device).fill_(1)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 2 / timed(lambda: dst.copy_(src), repeats, lambda: sync(device))


def materialise(
    space: WeightSpace, genome: Genome, backend: str, device: torch.device, repeats: int
) -> tuple[float, dict[str, torch.Tensor]]:
    """Median time of one child through the engine, and (for checking) the child's weights."""
    materializer = Materializer(space, backend=backend)
    seconds = timed(lambda: materializer.materialize(genome), repeats, lambda: sync(device))
    return seconds, materializer.state_dict


def svd_mutation(
    layout: dict[str, tuple],
    rand: Callable,
    gen: torch.Generator,
    device: torch.device,
    repeats: int,
) -> tuple[float, int]:
    """``U diag(r ⊙ S) Vᵀ`` for every projection matrix, from full-rank bf16 factors."""
    targets = [
        n for n, s in layout.items() if len(s) == 2 and "embed" not in n and "lm_head" not in n
    ]
    by_shape: dict[tuple, list[str]] = {}
    for name in targets:
        by_shape.setdefault(layout[name], []).append(name)
    chunk = 8  # matrices per batched GEMM: bounds the fp32 workspace
    factors = {}
    for (m, c), names in by_shape.items():
        r = min(m, c)
        factors[(m, c)] = (
            rand((len(names), m, r), r**-0.5),
            rand((len(names), c, r), r**-0.5),
            torch.rand(len(names), r, generator=gen, device=device),
        )
    workspace = torch.empty(chunk * max(m * c for m, c in by_shape), device=device)

    def mutate() -> None:
        for (m, c), (U, V, coords) in factors.items():
            for i in range(0, U.shape[0], chunk):
                j = min(i + chunk, U.shape[0])
                out = workspace[: (j - i) * m * c].view(j - i, m * c).zero_()
                lowrank_add(U[i:j], coords[i:j], V[i:j], out)

    return timed(mutate, repeats, lambda: sync(device)), len(targets)


def mergekit_merge(space: WeightSpace, device: torch.device, repeats: int) -> float:
    """The same task-arithmetic merge through mergekit, on the same device.

    Frees the space's task vectors first: mergekit reads full expert models instead.
    """
    from mergekit.merge_methods.api import merge_state_dicts

    names = space.tensor_names
    models = {"base": {n: space.base_tensor(n) for n in names}}
    for k in range(K):
        models[f"e{k}"] = {n: space.base_tensor(n) + space.task_vector(k, n) for n in names}
    for bank in space.banks:
        bank.taus = torch.empty(0)
    weights = {f"e{k}": c for k, c in enumerate(COEFFICIENTS)}
    return timed(
        lambda: merge_state_dicts(
            models,
            "task_arithmetic",
            base="base",
            parameters={"weight": weights},
            out_dtype=torch.bfloat16,
        ),
        repeats,
        lambda: sync(device),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a 2-layer miniature (smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.small:
        parser.error("no GPU here: run with --small for a smoke run on the CPU")
    layout = shapes(**(SMALL if args.small else LLAMA3_8B))
    gen = torch.Generator(device=device).manual_seed(0)
    few = max(1, args.repeats // 2)

    def rand(shape: tuple, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(shape, generator=gen, device=device) * scale).to(torch.bfloat16)

    hbm = copy_bandwidth(device, args.small, args.repeats)
    print(f"device {device}: copy bandwidth {hbm / 1e9:.0f} GB/s")

    base = {name: rand(shape) for name, shape in layout.items()}

    def expert() -> dict[str, torch.Tensor]:
        return {n: t + rand(t.shape, 0.01) for n, t in base.items()}

    space = WeightSpace(base=base, experts={f"e{k}": expert for k in range(K)}, device=device)
    base.clear()
    print(
        f"model: {space.num_parameters / 1e9:.2f} B parameters, "
        f"{space.checkpoint_bytes / 1e9:.1f} GB, {len(space.banks)} banks, K={K}"
    )
    genome = Genome.linear(space, torch.tensor(COEFFICIENTS))
    moved = (2 + K) * space.checkpoint_bytes
    t_fast, fast_state = materialise(space, genome, "triton", device, args.repeats)
    fast_state = {k: v.clone() for k, v in fast_state.items()} if args.small else {}
    t_ref, ref_state = materialise(space, genome, "reference", device, few)
    if fast_state:
        worst = max(
            float((fast_state[k].float() - ref_state[k].float()).abs().max()) for k in fast_state
        )
        print(f"max |triton - reference| = {worst:.3g} (bf16 rounding of equal fp32 sums)")
    del ref_state
    print(
        f"triton materialise: {t_fast * 1e3:.1f} ms ({moved / t_fast / 1e9:.0f} GB/s); "
        f"torch reference: {t_ref * 1e3:.1f} ms"
    )

    t_svd, n_matrices = svd_mutation(layout, rand, gen, device, few)
    print(f"SVD mutation of {n_matrices} matrices: {t_svd:.3f} s")

    t_mk = mergekit_merge(space, device, few)
    print(f"mergekit merge_state_dicts: {t_mk * 1e3:.1f} ms")
    print(
        f"RESULT hbm_fraction={moved / t_fast / hbm:.3f} vs_torch_ref={t_ref / t_fast:.1f} "
        f"vs_mergekit={t_mk / t_fast:.1f} svd_mutation_s={t_svd:.3f}"
    )


if __name__ == "__main__":
    main()
