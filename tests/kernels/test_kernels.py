from __future__ import annotations

import pytest
import torch
from cycleqd.kernels import (
    backend_for,
    combine,
    combine_compiled,
    combine_reference,
    combine_triton,
    lowrank_add,
    lowrank_add_reference,
    triton_available,
    truncated_svd,
    truncated_svd_reference,
)

SHAPES = [(1, 1, 1), (3, 2, 37), (5, 3, 1000), (2, 4, 4099), (7, 1, 129)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# the Triton kernel runs on the GPU where one exists, else on the CPU under Triton's interpreter
# (tests/conftest.py sets TRITON_INTERPRET); the batched low-rank kernels run on every device here
GPU = torch.device("cuda") if torch.cuda.is_available() else None
TRITON_DEVICE = GPU or torch.device("cpu")
DEVICES = ["cpu"] + (["cuda"] if GPU else [])


def _bank(n, K, numel, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, numel, generator=gen).to(dtype)
    taus = (0.1 * torch.randn(K, n, numel, generator=gen)).to(dtype)
    coef = torch.randn(n, K, generator=gen)
    extra = 0.01 * torch.randn(n, numel, generator=gen)
    return base, taus, coef, extra


def _assert_within_rounding(got, want, base, taus, coef, extra):
    """``got`` equals the reference ``want`` up to the rounding both may do.

    Both accumulate in fp32 but may round differently on the way: a fused multiply-add (the
    compiled loop's contraction, the GPU's FMA) rounds once where the reference rounds twice, and
    each of the K + 1 additions can then differ by one fp32 unit of the running sum's magnitude,
    which cancellation can make large against the result. The output then rounds once to its
    dtype, where a moved sum can land one unit in the last place away.
    """
    terms = base.double().abs() + (coef.double().T[:, :, None].abs() * taus.double().abs()).sum(0)
    if extra is not None:
        terms = terms + extra.double().abs()
    accumulation = 2 * (taus.shape[0] + 2) * 2**-24 * terms
    ulp = {torch.float32: 2**-23, torch.bfloat16: 2**-7, torch.float16: 2**-10}[want.dtype]
    output = 2 * ulp * want.double().abs()
    diff = (got.double() - want.double()).abs()
    excess = diff - (accumulation + output)
    assert float(excess.max()) <= 0, f"beyond rounding by {float(excess.max()):.3g}"


@pytest.mark.parametrize(("n", "K", "numel"), SHAPES)
def test_reference_is_the_formula(n, K, numel):
    base, taus, coef, extra = _bank(n, K, numel, torch.float64)
    out = torch.empty(n, numel, dtype=torch.float32)
    combine_reference(base.float(), taus.float(), coef, out, extra.float())
    want = base + (coef.double().T[:, :, None] * taus).sum(0) + extra
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "K", "numel"), SHAPES)
@pytest.mark.parametrize("with_extra", [False, True])
def test_compiled_kernel_matches_reference(n, K, numel, dtype, with_extra):
    base, taus, coef, extra = _bank(n, K, numel, dtype, seed=numel)
    extra = extra if with_extra else None
    got = torch.full((n, numel), float("nan"), dtype=dtype)
    want = torch.empty(n, numel, dtype=dtype)
    combine_compiled(base, taus, coef, got, extra)
    combine_reference(base, taus, coef, want, extra)
    _assert_within_rounding(got, want, base, taus, coef, extra)


def test_combine_checks_shapes():
    base, taus, coef, _ = _bank(3, 2, 10, torch.float32)
    with pytest.raises(ValueError, match=r"coef must be \[n, K\] = \[3, 2\]"):
        combine(base, taus, coef[:, :1], torch.empty_like(base))
    with pytest.raises(ValueError, match=r"taus must be \[K, n, numel\]"):
        combine(base, taus[:, :2], coef, torch.empty_like(base))


def test_backend_choice(monkeypatch):
    assert backend_for("cpu") in ("compiled", "reference")
    backend_for.cache_clear()
    monkeypatch.setenv("CYCLEQD_KERNEL", "reference")
    assert backend_for("cpu") == "reference"
    backend_for.cache_clear()
    monkeypatch.setenv("CYCLEQD_KERNEL", "fast")
    with pytest.raises(ValueError, match="CYCLEQD_KERNEL='fast'"):
        backend_for("cpu")
    backend_for.cache_clear()


triton_missing = pytest.mark.skipif(
    not triton_available(),
    reason="no Triton runtime: install the 'triton' package (the test "
    "extra has it) to run the GPU kernel here under its interpreter",
)


@triton_missing
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "K", "numel"), SHAPES)
@pytest.mark.parametrize("with_extra", [False, True])
def test_triton_kernel_matches_reference(n, K, numel, dtype, with_extra):
    base, taus, coef, extra = _bank(n, K, numel, dtype, seed=numel + 1)
    extra = extra if with_extra else None
    got = torch.full((n, numel), float("nan"), dtype=dtype, device=TRITON_DEVICE)
    want = torch.empty(n, numel, dtype=dtype)
    # a small block exercises several blocks per row and a ragged last block
    on = [None if t is None else t.to(TRITON_DEVICE) for t in (base, taus, coef, extra)]
    combine_triton(*on[:3], got, on[3], block=256)
    got = got.cpu()
    combine_reference(base, taus, coef, want, extra)
    _assert_within_rounding(got, want, base, taus, coef, extra)


@triton_missing
def test_triton_kernel_refuses_non_contiguous_input():
    base, taus, coef, _ = _bank(2, 2, 64, torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        combine_triton(base, taus, coef, torch.empty(64, 2).T)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n", "m", "c", "r"), [(1, 5, 3, 3), (4, 33, 17, 17), (3, 64, 129, 8)])
def test_lowrank_add_matches_reference(n, m, c, r, dtype, device):
    gen = torch.Generator().manual_seed(m)
    U = torch.randn(n, m, r, generator=gen).to(dtype)
    V = torch.randn(n, c, r, generator=gen).to(dtype)
    coords = torch.rand(n, r, generator=gen)
    start = torch.randn(n, m * c, generator=gen)
    on = [t.to(device) for t in (U, coords, V)] + [start.clone().to(device)]
    got = lowrank_add(*on).cpu()
    want = lowrank_add_reference(U, coords, V, start.clone())
    tol = 1e-5 if dtype == torch.float32 else 0.05 * float(want.abs().max())
    torch.testing.assert_close(got, want, atol=tol, rtol=1e-4 if dtype == torch.float32 else 0.02)
    with pytest.raises(ValueError, match=r"out must be \[n, m \* c\]"):
        lowrank_add(U, coords, V, start[:, :-1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("m", "c", "rank"), [(40, 30, 5), (17, 65, 8), (12, 9, 20)])
def test_batched_truncated_svd_matches_per_matrix_reference(m, c, rank, device):
    gen = torch.Generator().manual_seed(c)
    mats = []
    for i in range(3):
        left, _ = torch.linalg.qr(torch.randn(m, min(m, c), generator=gen))
        right, _ = torch.linalg.qr(torch.randn(c, min(m, c), generator=gen))
        spectrum = torch.exp(-torch.arange(min(m, c), dtype=torch.float32) / (2 + i))
        mats.append((left * spectrum) @ right.T)
    mats = torch.stack(mats)
    U, S, V = (t.cpu() for t in truncated_svd(mats.to(device), rank, oversample=6, niter=2, seed=1))
    Ur, Sr, Vr = truncated_svd_reference(mats, rank, oversample=6, niter=2, seed=1)
    exact = torch.linalg.svdvals(mats)[:, : S.shape[1]]
    assert U.shape == Ur.shape and S.shape == Sr.shape and V.shape == Vr.shape
    torch.testing.assert_close(S, exact, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(Sr, exact, atol=1e-3, rtol=1e-3)
    # same subspaces: the projections agree (singular vectors are defined up to sign)
    torch.testing.assert_close(U @ U.transpose(1, 2), Ur @ Ur.transpose(1, 2), atol=2e-3, rtol=0)
    again = truncated_svd(mats.to(device), rank, oversample=6, niter=2, seed=1)
    assert all(torch.equal(a, b.cpu()) for a, b in zip((U, S, V), again, strict=True))


@pytest.mark.skipif(
    GPU is None,
    reason="needs a CUDA device (the engine's GPU path); the CPU paths are tested above",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_engine_makes_the_same_child_on_the_gpu(state_dicts, dtype):
    """A child with crossover coefficients, an SVD mutation and Gaussian noise, made on the GPU
    (Triton combine, device SVD factors and low-rank adds) equals the same child made on the CPU."""
    import numpy as np

    from cycleqd import Genome, Materializer, WeightSpace
    from cycleqd.operators import MUTATIONS, MutationContext

    base, experts = state_dicts
    made = {}
    for device in ("cpu", "cuda"):
        space = WeightSpace(base=base, experts=experts, device=device, dtype=dtype)
        mat = Materializer(space)
        parent = Genome.linear(space, torch.tensor([0.5, 0.3, 0.4]))
        child = MUTATIONS.build("svd_expert", rate=0.3)(
            parent, MutationContext(space, mat, 1, np.random.default_rng(3))
        )
        child = MUTATIONS.build("gaussian", std=0.01)(
            child, MutationContext(space, mat, 0, np.random.default_rng(4))
        )
        made[device] = {n: t.float().cpu() for n, t in mat.materialize(child).items()}
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for name, want in made["cpu"].items():
        torch.testing.assert_close(made["cuda"][name], want, atol=tol, rtol=tol, msg=name)
