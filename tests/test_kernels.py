from __future__ import annotations

import pytest
import torch
from cycleqd.kernels import backend_for, combine, combine_compiled, combine_reference

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
