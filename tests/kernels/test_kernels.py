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


def _bank(n, K, numel, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, numel, generator=gen).to(dtype)
    taus = (0.1 * torch.randn(K, n, numel, generator=gen)).to(dtype)
    coef = torch.randn(n, K, generator=gen)
    extra = 0.01 * torch.randn(n, numel, generator=gen)
    return base, taus, coef, extra


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
    # fp32 accumulation in both; the compiled loop may contract a multiply-add, which can move
    # a value across a rounding boundary of the output dtype: one unit in the last place at most
    ulp = {torch.float32: 1e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    diff = (got.double() - want.double()).abs()
    assert float((diff / want.double().abs().clamp_min(1e-3)).max()) <= 2 * ulp


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
    got = torch.full((n, numel), float("nan"), dtype=dtype)
    want = torch.empty(n, numel, dtype=dtype)
    # a small block exercises several blocks per row and a ragged last block
    combine_triton(base, taus, coef, got, extra, block=256)
    combine_reference(base, taus, coef, want, extra)
    ulp = {torch.float32: 1e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    diff = (got.double() - want.double()).abs()
    assert float((diff / want.double().abs().clamp_min(1e-3)).max()) <= 2 * ulp


@triton_missing
def test_triton_kernel_refuses_non_contiguous_input():
    base, taus, coef, _ = _bank(2, 2, 64, torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        combine_triton(base, taus, coef, torch.empty(64, 2).T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n", "m", "c", "r"), [(1, 5, 3, 3), (4, 33, 17, 17), (3, 64, 129, 8)])
def test_lowrank_add_matches_reference(n, m, c, r, dtype):
    gen = torch.Generator().manual_seed(m)
    U = torch.randn(n, m, r, generator=gen).to(dtype)
    V = torch.randn(n, c, r, generator=gen).to(dtype)
    coords = torch.rand(n, r, generator=gen)
    start = torch.randn(n, m * c, generator=gen)
    got = lowrank_add(U, coords, V, start.clone())
    want = lowrank_add_reference(U, coords, V, start.clone())
    tol = 1e-5 if dtype == torch.float32 else 0.05 * float(want.abs().max())
    torch.testing.assert_close(got, want, atol=tol, rtol=1e-4 if dtype == torch.float32 else 0.02)
    with pytest.raises(ValueError, match=r"out must be \[n, m \* c\]"):
        lowrank_add(U, coords, V, start[:, :-1])


@pytest.mark.parametrize(("m", "c", "rank"), [(40, 30, 5), (17, 65, 8), (12, 9, 20)])
def test_batched_truncated_svd_matches_per_matrix_reference(m, c, rank):
    gen = torch.Generator().manual_seed(c)
    mats = []
    for i in range(3):
        left, _ = torch.linalg.qr(torch.randn(m, min(m, c), generator=gen))
        right, _ = torch.linalg.qr(torch.randn(c, min(m, c), generator=gen))
        spectrum = torch.exp(-torch.arange(min(m, c), dtype=torch.float32) / (2 + i))
        mats.append((left * spectrum) @ right.T)
    mats = torch.stack(mats)
    U, S, V = truncated_svd(mats, rank, oversample=6, niter=2, seed=1)
    Ur, Sr, Vr = truncated_svd_reference(mats, rank, oversample=6, niter=2, seed=1)
    exact = torch.linalg.svdvals(mats)[:, : S.shape[1]]
    assert U.shape == Ur.shape and S.shape == Sr.shape and V.shape == Vr.shape
    torch.testing.assert_close(S, exact, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(Sr, exact, atol=1e-3, rtol=1e-3)
    # same subspaces: the projections agree (singular vectors are defined up to sign)
    torch.testing.assert_close(U @ U.transpose(1, 2), Ur @ Ur.transpose(1, 2), atol=2e-3, rtol=0)
    again = truncated_svd(mats, rank, oversample=6, niter=2, seed=1)
    assert all(torch.equal(a, b) for a, b in zip((U, S, V), again, strict=True))
