from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch

from cycleqd import CycleQDError, Genome, Materializer, UnknownNameError
from cycleqd.operators import (
    CROSSOVERS,
    MUTATIONS,
    SELECTIONS,
    EliteSampling,
    MergekitCrossover,
    MutationContext,
    SvdChild,
    elite_sampling_weights,
    mergekit_method_names,
    svd_child_error_bound,
)
from cycleqd.weights.materialize import tensor_seed

# --- selection -------------------------------------------------------------------------------


def test_elite_sampling_weights_match_the_formula_by_hand():
    # columns: quality, bc1, bc2; α_low = 0.5, α_high = 0.8 (span 0.3)
    values = np.array([[0.2, 0.5, 0.0], [0.6, 0.5, 1.0], [0.4, 0.9, 0.5]])
    # norm: q = [0, 1, .5]; bc1 = [0, 0, 1]; bc2 = [0, 1, .5]
    raw = np.array([0.5 * 0.5 * 0.5, 0.8 * 0.5 * 0.8, 0.65 * 0.8 * 0.65])
    np.testing.assert_allclose(elite_sampling_weights(values), raw / raw.sum(), rtol=1e-12)
    alt = elite_sampling_weights(values, alpha_low=0.1, alpha_high=0.9)
    raw = np.array([0.1 * 0.1 * 0.1, 0.9 * 0.1 * 0.9, 0.5 * 0.9 * 0.5])
    np.testing.assert_allclose(alt, raw / raw.sum(), rtol=1e-12)


def test_elite_sampling_degenerate_cases():
    np.testing.assert_allclose(elite_sampling_weights(np.array([[0.3, 0.7]])), [1.0])
    equal = elite_sampling_weights(np.full((4, 3), 0.25))
    np.testing.assert_allclose(equal, np.full(4, 0.25))
    # one column constant, one varying: the constant one must not change the ratios
    w = elite_sampling_weights(np.array([[0.5, 0.0], [0.5, 1.0]]))
    np.testing.assert_allclose(w, np.array([0.5, 0.8]) / 1.3)
    rng = np.random.default_rng(0)
    assert list(EliteSampling()(np.array([0.4]), np.array([[0.1, 0.2]]), 2, rng)) == [0, 0]
    with pytest.raises(CycleQDError, match="NaN/Inf"):
        elite_sampling_weights(np.array([[np.nan, 1.0]]))
    with pytest.raises(CycleQDError, match=r"\[N>=1, D\]"):
        elite_sampling_weights(np.zeros((0, 2)))


def test_elite_sampling_draws_two_distinct_parents_at_the_weighted_rate():
    rng = np.random.default_rng(1)
    objectives = np.array([0.1, 0.9, 0.5, 0.3])
    measures = np.array([[0.2], [0.8], [0.4], [0.9]])
    sampler = SELECTIONS.build("elite_sampling")
    counts = np.zeros(4)
    for _ in range(4000):
        first, second = sampler(objectives, measures, 2, rng)
        assert first != second
        counts[first] += 1
    np.testing.assert_allclose(
        counts / counts.sum(), sampler.weights(objectives, measures), atol=0.03
    )


def test_uniform_selection_is_without_replacement():
    rng = np.random.default_rng(2)
    sampler = SELECTIONS.build("uniform")
    picks = [tuple(sampler(np.zeros(3), np.zeros((3, 1)), 2, rng)) for _ in range(300)]
    assert all(a != b for a, b in picks)
    assert {a for a, _ in picks} == {0, 1, 2}


# --- crossover -------------------------------------------------------------------------------


def test_gaussian_task_arithmetic_normalises_per_tensor(space):
    rng = np.random.default_rng(0)
    parents = [Genome.expert(space, 0), Genome.expert(space, 2)]
    for granularity in ("model", "layer", "tensor"):
        op = CROSSOVERS.build("gaussian_task_arithmetic", granularity=granularity)
        child = op(parents, rng, space)
        c = child.coefficients
        torch.testing.assert_close(c.sum(dim=1), torch.ones(len(space.tensor_names)))
        assert torch.all(c[:, 1] == 0)
        distinct = len(set(c[:, 0].tolist()))
        expected = {
            "model": 1,
            "layer": len(set(space.layer_groups())),
            "tensor": len(space.tensor_names),
        }[granularity]
        assert distinct == expected
    raw = CROSSOVERS.build("gaussian_task_arithmetic", mu=1.0, sigma=0.1, normalize=False)
    child = raw(parents, np.random.default_rng(5), space)
    w = np.random.default_rng(5).normal(1.0, 0.1, size=2)
    torch.testing.assert_close(child.coefficients[0, [0, 2]], torch.tensor(w).float())


def test_weighted_sum_of_mutated_parents_equals_weighted_sum_of_their_deltas(space):
    mat = Materializer(space)
    rng = np.random.default_rng(3)
    ctx = MutationContext(space, mat, active_task=1, rng=rng)
    a = MUTATIONS.build("svd_expert", rate=0.2)(Genome.expert(space, 0), ctx)
    b = MUTATIONS.build("gaussian", std=0.05)(Genome.expert(space, 2), ctx)
    deltas = []
    for g in (a, b):
        w = mat.weights(g)
        deltas.append({t: w[t].float() - space.base_tensor(t).float() for t in space.tensor_names})
    child = Genome.weighted_sum([a, b], torch.tensor([0.7, -0.4]))
    assert child.is_linear
    out = mat.materialize(child)
    for t in space.tensor_names:
        want = space.base_tensor(t) + 0.7 * deltas[0][t] - 0.4 * deltas[1][t]
        torch.testing.assert_close(out[t], want, atol=1e-5, rtol=1e-5)


_NEEDS = {
    "nearswap": {"t": 0.5},
    "ties": {"density": 0.6},
    "dare_ties": {"density": 0.6},
    "dare_linear": {"density": 0.6},
    "breadcrumbs": {"density": 0.8},
    "breadcrumbs_ties": {"density": 0.8},
    "della": {"density": 0.6},
    "della_linear": {"density": 0.6},
}


def _one_parent_methods():
    from mergekit.merge_methods.registry import get

    return {n for n in mergekit_method_names() if get(n).spec.contract.max_inputs == 1}


@pytest.mark.parametrize("method", sorted(set(mergekit_method_names()) - {"passthrough"}))
def test_every_mergekit_method_equals_mergekit_output(space, method):
    from mergekit.merge_methods.api import merge_tensors
    from mergekit.merge_methods.registry import get

    rng = np.random.default_rng(7)
    parents = [Genome.linear(space, torch.tensor([0.8, 0.3, 0.0])), Genome.expert(space, 2)]
    op = CROSSOVERS.build(method, parameters=_NEEDS.get(method, {}))
    child = op(parents, rng, space)
    assert child.merge is not None and child.merge.method == method
    out = Materializer(space).materialize(Genome.from_bytes(child.to_bytes()))
    mat = Materializer(space)
    thetas = [mat.weights(p) for p in parents]
    contract = get(method).spec.contract
    node = child.merge
    for t, name in enumerate(space.tensor_names):
        base = space.base_tensor(name).float()
        if contract.base.value in ("ignored", "forbidden"):
            tensors, ids, base_index = [th[name] for th in thetas], ["p0", "p1"], None
        elif contract.max_inputs == 2:  # slerp-like: interpolate between the two parents
            tensors, ids, base_index = [th[name] for th in thetas], ["p0", "p1"], 0
        else:
            tensors, ids, base_index = [base] + [th[name] for th in thetas], ["b", "p0", "p1"], 0
        params = dict(node.parameters)
        if node.weights is not None:
            params["weight"] = {"p0": float(node.weights[0, t]), "p1": float(node.weights[1, t])}
        torch.manual_seed(tensor_seed(node.seed, t))
        want = merge_tensors(
            [x.float() for x in tensors],
            method,
            parameters=params,
            ids=ids,
            base_index=base_index,
            dtype=torch.float32,
        )
        torch.testing.assert_close(out[name], want, atol=2e-6, rtol=2e-6, msg=name)


def test_one_input_mergekit_methods_are_refused_as_crossover(space):
    for method in _one_parent_methods():
        with pytest.raises(CycleQDError, match=f"mergekit method '{method}' cannot merge 2"):
            CROSSOVERS.build(method)


def test_mergekit_parameters_are_checked():
    with pytest.raises(CycleQDError, match=r"'ties' has no parameter 'densty'.*density"):
        MergekitCrossover("ties", parameters={"densty": 0.5})


# --- mutation --------------------------------------------------------------------------------


def test_svd_expert_adds_U_diag_rS_Vt_of_the_active_expert(space):
    mat = Materializer(space)
    rng = np.random.default_rng(11)
    parent = Genome.expert(space, 0)
    child = MUTATIONS.build("svd_expert", rate=0.3)(parent, MutationContext(space, mat, 2, rng))
    coords = child.spectral[(2, None)]
    targets = space.svd_targets()
    assert "model.embed_tokens.weight" not in targets and "lm_head.weight" not in targets
    assert {space.tensor_names[t] for t in coords} == set(targets)
    out = mat.materialize(child)
    parent_w = Materializer(space).weights(parent)
    for name in space.tensor_names:
        want = parent_w[name].float()
        if name in targets:
            U, S, Vh = torch.linalg.svd(space.task_vector(2, name).float(), full_matrices=False)
            r = coords[space.index(name)]
            assert r.shape == S.shape and float(r.min()) >= 0 and float(r.max()) < 0.3
            want = want + U @ torch.diag(r * S) @ Vh
        torch.testing.assert_close(out[name], want, atol=1e-5, rtol=1e-5, msg=name)


def test_making_an_svd_expert_child_computes_no_svd(space):
    """The factors are an evaluator's business: the process that makes children needs none."""
    for rank in (None, 3):
        child = MUTATIONS.build("svd_expert", rate=0.1, rank=rank)(
            Genome.expert(space, 0), MutationContext(space, None, 1, np.random.default_rng(0))
        )
        assert space._svd == {}  # nothing computed (or cached) by making the child
        factors = space.svd_factors(1, space.svd_targets(), rank=rank)
        for name, (_, S, _) in factors.items():
            assert child.spectral[(1, rank)][space.index(name)].shape == S.shape
        space._svd.clear()


def test_svd_child_error_is_within_its_bound():
    gen = torch.Generator().manual_seed(0)
    m, n = 96, 80
    mats, tails = [], []
    for decay in (3.0, 6.0, 12.0):
        Q1, _ = torch.linalg.qr(torch.randn(m, n, generator=gen))
        Q2, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
        spectrum = torch.exp(-torch.arange(n, dtype=torch.float32) / decay)
        mats.append((Q1 * spectrum) @ Q2.T)
        tails.append(spectrum)
    mats = torch.stack(mats)
    for rank, oversample in [(4, 4), (8, 8), (16, 2)]:
        U, S, V, error = SvdChild(rank=rank, oversample=oversample, niter=1).factor(mats, seed=3)
        assert U.shape == (3, m, rank) and S.shape == (3, rank) and V.shape == (3, n, rank)
        for i, spectrum in enumerate(tails):
            tail = float(torch.linalg.norm(spectrum[rank:]) / torch.linalg.norm(spectrum))
            assert tail - 1e-5 <= float(error[i]) <= svd_child_error_bound(tail, rank, oversample)
    _, _, _, exact = SvdChild(rank=n).factor(mats, seed=0)
    assert float(exact.max()) < 1e-5


def test_svd_child_rescales_the_childs_top_spectrum(space):
    mat = Materializer(space)
    rng = np.random.default_rng(4)
    parent = Genome.linear(space, torch.tensor([0.4, 0.4, 0.2]))
    child = SvdChild(rank=2, scale=0.5)(parent, MutationContext(space, mat, 0, rng))
    assert child.meta["mutation"]["op"] == "svd_child"
    assert 0 <= child.meta["mutation"]["svd_child_error"] < 1
    parent_w = Materializer(space).weights(parent)
    out = mat.materialize(child)
    name = "model.layers.1.mlp.up_proj.weight"
    before = torch.linalg.svdvals(parent_w[name] - space.base_tensor(name))
    after = torch.linalg.svdvals(out[name] - space.base_tensor(name))
    ratio = after[:2] / before[:2]
    assert torch.all((ratio > 0.5 - 1e-4) & (ratio < 1.5 + 1e-4))
    assert not torch.allclose(before[:2], after[:2])
    torch.testing.assert_close(after[2:], before[2:], atol=1e-4, rtol=1e-4)
    assert torch.equal(out["model.norm.weight"], parent_w["model.norm.weight"])


@pytest.mark.parametrize("basis", [0, 8])
def test_gaussian_mutation_replays_its_seeded_noise(space, basis):
    mat = Materializer(space)
    ctx = MutationContext(space, mat, 0, np.random.default_rng(9))
    parent = Genome.expert(space, 1)
    child = MUTATIONS.build("gaussian", std=0.5, basis=basis)(parent, ctx)
    assert len(child.noise) == max(1, basis)
    a = {k: v.clone() for k, v in mat.materialize(child).items()}
    b = Materializer(space).materialize(Genome.from_bytes(child.to_bytes()))
    parent_w = Materializer(space).weights(parent)
    noise = torch.cat([(a[t] - parent_w[t]).flatten() for t in space.tensor_names])
    # one draw per tensor (basis 0) is N(0, 0.5²); on a basis, each tensor's scale is drawn too
    assert abs(float(noise.std()) - 0.5) < (0.05 if basis == 0 else 0.15)
    for t in a:
        assert torch.equal(a[t], b[t])
    assert MUTATIONS.build("none")(parent, ctx) is parent


def test_a_lineage_of_noise_on_a_fixed_basis_holds_at_most_basis_terms(space):
    mat = Materializer(space)
    ctx = MutationContext(space, mat, 0, np.random.default_rng(2))
    crossover = CROSSOVERS.build("gaussian_task_arithmetic")
    on_basis, fresh = MUTATIONS.build("gaussian", basis=4), MUTATIONS.build("gaussian", basis=0)
    a = b = Genome.expert(space, 0)
    for k in range(12):
        other = Genome.expert(space, k % 3)
        a = on_basis(crossover([a, other], ctx.rng, space), ctx)
        b = fresh(crossover([b, other], ctx.rng, space), ctx)
    assert len(a.noise) == 4  # replay: four draws, however deep the lineage
    assert len(b.noise) == 12  # a fresh seed per mutation: one draw per ancestor


def test_svd_child_folds_a_lineage_into_one_term_per_matrix(space):
    mat = Materializer(space)
    ctx = MutationContext(space, mat, 0, np.random.default_rng(5))
    crossover = CROSSOVERS.build("gaussian_task_arithmetic")
    mutation = SvdChild(rank=2, scale=0.3)
    child = Genome.expert(space, 0)
    for k in range(6):
        child = mutation(crossover([child, Genome.expert(space, k % 3)], ctx.rng, space), ctx)
        tensors = [t.tensor for t in child.lowrank]
        assert len(tensors) == len(set(tensors))  # one term per matrix
    for term in child.lowrank:
        shape = space.shapes[space.tensor_names[term.tensor]]
        assert term.u.shape[1] == term.s.numel() <= min(shape)


def test_folding_low_rank_terms_keeps_their_sum():
    from cycleqd.weights.terms import LowRankTerm, fold_lowrank

    gen = torch.Generator().manual_seed(0)
    terms = [
        LowRankTerm(
            f"k{i}",
            t,
            torch.randn(12, r, generator=gen),
            torch.rand(r, generator=gen),
            torch.randn(5, r, generator=gen),
        )
        for i, (t, r) in enumerate([(0, 3), (1, 2), (0, 4), (0, 2)])
    ]
    folded = fold_lowrank(terms, "f")
    assert [t.key for t in folded] == ["f:0", "f:1"]
    for f in folded:
        want = sum(t.u @ torch.diag(t.s) @ t.v.T for t in terms if t.tensor == f.tensor)
        torch.testing.assert_close(f.u @ torch.diag(f.s) @ f.v.T, want, atol=1e-5, rtol=1e-5)
    assert folded[0].s.numel() == 5  # 9 directions summed, at most min(12, 5) independent
    u, s, v = terms[0].u, terms[0].s, terms[0].v
    cancelled = [LowRankTerm("a", 0, u, s, v), LowRankTerm("b", 0, u, -s, v)]
    assert fold_lowrank(cancelled, "f") == ()  # nothing left of terms that cancel


# --- registries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "bad", "listed"),
    [
        (SELECTIONS, "elite_sampler", "elite_sampling, uniform"),
        (MUTATIONS, "svd", "gaussian, none, svd_child, svd_expert"),
        (CROSSOVERS, "gaussian_arithmetic", "gaussian_task_arithmetic"),
    ],
)
def test_unknown_operator_names_list_the_registered_ones(registry, bad, listed):
    with pytest.raises(UnknownNameError, match=f"unknown {registry.kind} '{bad}'") as info:
        registry.get(bad)
    assert listed in str(info.value)
    if registry is CROSSOVERS:
        assert "dare_ties" in str(info.value) and "Did you mean 'gaussian_task_arithmetic'" in str(
            info.value
        )


def test_operator_parameters_are_checked():
    with pytest.raises(CycleQDError, match=r"svd_expert.*rates.*Accepted parameters: rate, rank"):
        MUTATIONS.build("svd_expert", rates=0.1)
    with pytest.raises(CycleQDError, match="rate must be a finite number >= 0"):
        MUTATIONS.build("svd_expert", rate=-1.0)
    with pytest.raises(CycleQDError, match="granularity 'block'"):
        CROSSOVERS.build("gaussian_task_arithmetic", granularity="block")


def test_plugins_register_by_dotted_path_and_entry_point(tmp_path, monkeypatch, space):
    (tmp_path / "my_ops.py").write_text(
        textwrap.dedent("""
        class Scale:
            def __init__(self, *, factor=2.0):
                self.factor = factor
            def __call__(self, genome, ctx):
                import torch
                from cycleqd import Genome
                return Genome.weighted_sum([genome], torch.tensor([self.factor]))
    """)
    )
    dist = tmp_path / "my_ops-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-ops\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[cycleqd.mutation]\nscale = my_ops:Scale\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ctx = MutationContext(space, Materializer(space), 0, np.random.default_rng(0))
    by_path = MUTATIONS.build("my_ops:Scale", factor=3.0)(Genome.expert(space, 0), ctx)
    assert by_path.coefficients[0].tolist() == [3.0, 0.0, 0.0]
    assert "scale" in MUTATIONS.names()
    by_entry_point = MUTATIONS.build("scale")(Genome.expert(space, 1), ctx)
    assert by_entry_point.coefficients[0].tolist() == [0.0, 2.0, 0.0]
    assert math.isclose(MUTATIONS.build("scale").factor, 2.0)


def test_a_registry_imports_a_dotted_path_in_public_or_says_how_to_write_it():
    from cycleqd.weights.genome import Genome as G

    assert MUTATIONS.import_path("cycleqd.weights.genome:Genome") is G
    assert MUTATIONS.import_path("cycleqd.weights.genome.Genome") is G
    with pytest.raises(UnknownNameError, match="does not import.*'package.module:attribute'"):
        MUTATIONS.import_path("cycleqd.weights.genome:NoSuchThing")
