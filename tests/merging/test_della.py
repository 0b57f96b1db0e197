"""DELLA: rank-based keep probabilities, MAGPRUNE with seeded generators, and the two merges."""

from __future__ import annotations

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging import get_method
from modmerge.merging.della import della_magprune, keep_probabilities
from modmerge.merging.generalized import generalized_task_arithmetic

T = torch.tensor


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("tau", "density", "epsilon", "expected"),
    [
        # ranks by |.|: 0.1 -> 0, 2 -> 1, -3 -> 2; q = 0.3 + 0.4 * rank / 2
        ([0.1, -3.0, 2.0], 0.5, 0.2, [0.3, 0.7, 0.5]),
        # per row of a matrix; in row 1 the tied |1| are ranked by position
        (
            [[0.1, -3.0, 2.0, 0.5], [1.0, -1.0, 0.2, 4.0]],
            0.5,
            0.2,
            [[0.3, 0.7, 0.5 + 0.2 / 3, 0.5 - 0.2 / 3], [0.5 - 0.2 / 3, 0.5 + 0.2 / 3, 0.3, 0.7]],
        ),
        # rows of one entry get the density
        ([[5.0], [-1.0]], 0.4, 0.1, [[0.4], [0.4]]),
        # a 3-D tensor is ranked along dimension 1 (mergekit's axis): columns [1, 2, 3] and [4, 5, 0]
        ([[[1.0, 4.0], [2.0, 5.0], [3.0, 0.0]]], 0.5, 0.2, [[[0.3, 0.5], [0.5, 0.7], [0.7, 0.3]]]),
    ],
)
def test_keep_probabilities(tau, density, epsilon, expected):
    torch.testing.assert_close(keep_probabilities(T(tau), density, epsilon), T(expected))


TAU = T([[0.1, -3.0, 2.0, 0.5], [1.0, -1.0, 0.2, 4.0]])
Q = T([[0.3, 0.7, 0.5 + 0.2 / 3, 0.5 - 0.2 / 3], [0.5 - 0.2 / 3, 0.5 + 0.2 / 3, 0.3, 0.7]])


@pytest.mark.parametrize(("rescale", "rescale_by"), [(False, "l1"), (True, "probability"), (True, "l1")])
def test_magprune_keeps_u_below_q_and_rescales(rescale, rescale_by):
    u = torch.rand(TAU.shape, generator=_gen(3))
    kept = torch.where(u < Q, TAU, 0.0)
    if not rescale:
        expected = kept
    elif rescale_by == "probability":
        expected = kept / Q
    else:
        expected = kept * (TAU.abs().sum() / kept.abs().sum())
    out = della_magprune(TAU, 0.5, 0.2, _gen(3), rescale=rescale, rescale_by=rescale_by)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    ("density", "expected"),
    [(1.0, TAU), (1.5, TAU), (0.0, torch.zeros(2, 4))],
)
def test_magprune_edges(density, expected):
    assert torch.equal(della_magprune(TAU, density, 0.4, _gen(0)), expected)


@pytest.mark.parametrize(("density", "epsilon"), [(0.1, 0.15), (0.9, 0.1), (0.5, 0.5)])
def test_magprune_rejects_probabilities_outside_0_1(density, epsilon):
    with pytest.raises(MergeMethodError, match="density - epsilon") as info:
        della_magprune(TAU, density, epsilon, _gen(0))
    assert "\n" not in str(info.value)


BASE = T([1.0, 0.0, -1.0, 2.0, 0.5, 0.0])
TAUS = [T([0.4, -0.2, 1.0, 0.0, -0.6, 0.8]), T([-0.4, 0.6, 0.2, 1.0, 0.3, -0.8])]
MODELS = [BASE + tau for tau in TAUS]
# keep probabilities at density 0.5, epsilon 0.2 (n = 6: q = 0.3 + 0.08 rank), ranks by |tau|:
# model 0 ranks [2, 1, 5, 0, 3, 4], model 1 ranks [2, 3, 0, 5, 1, 4]
QS = [T([0.46, 0.38, 0.70, 0.30, 0.54, 0.62]), T([0.46, 0.54, 0.30, 0.70, 0.38, 0.62])]


@pytest.mark.parametrize(
    ("name", "rescale_by", "lam", "weights"),
    [
        ("della_linear", "l1", 0.5, None),
        ("della_linear", "probability", 1.0, [1.0, 2.0]),
        ("della", "l1", 1.0, None),
        ("della", "probability", 0.8, [2.0, 1.0]),
    ],
)
def test_della_merges_match_the_formula(name, rescale_by, lam, weights):
    """theta_0 + lambda * combine(rescale(m_t * tau_t)), masks drawn model by model."""
    g = _gen(11)
    masks = [torch.rand(BASE.shape, generator=g) < q for q in QS]
    kept = [torch.where(m, tau, 0.0) for m, tau in zip(masks, TAUS, strict=True)]
    if rescale_by == "probability":
        pruned = [k / q for k, q in zip(kept, QS, strict=True)]
    else:
        pruned = [k * (tau.abs().sum() / k.abs().sum()) for k, tau in zip(kept, TAUS, strict=True)]
    w = weights or [1.0, 1.0]
    if name == "della_linear":
        merged = sum(wt * p for wt, p in zip(w, pruned, strict=True))
    else:
        sign = torch.where(sum(wt * p for wt, p in zip(w, pruned, strict=True)) >= 0, 1.0, -1.0)
        agree = [(p * sign > 0).float() for p in pruned]
        num = sum(wt * a * p for wt, a, p in zip(w, agree, pruned, strict=True))
        den = sum(wt * a for wt, a in zip(w, agree, strict=True))
        merged = torch.where(den > 0, num / den.clamp_min(1e-30), 0.0)
    method = get_method(name)
    params = method.validate_params({"density": 0.5, "epsilon": 0.2, "lambda": lam, "rescale_by": rescale_by})
    out = method(BASE, MODELS, **params, weights=weights, generator=_gen(11))
    torch.testing.assert_close(out, BASE + lam * merged)


def test_della_without_pruning_is_ties_without_trim_and_della_linear_is_task_arithmetic():
    della = get_method("della")(BASE, MODELS, **{"lambda": 0.7}, generator=_gen(0))
    torch.testing.assert_close(della, get_method("ties")(BASE, MODELS, density=1.0, scaling=0.7))
    linear = get_method("della_linear")(BASE, MODELS, **{"lambda": 0.3}, generator=_gen(0))
    torch.testing.assert_close(linear, get_method("task_arithmetic")(BASE, MODELS, scaling=0.3))


def test_della_is_reproducible_under_a_seed_and_registered_with_mergekit_names():
    method = get_method("della")
    assert method.randomized and {"weights", "generator"} <= method.accepts
    assert method.defaults() == {"density": 1.0, "epsilon": 0.15, "lambda": 1.0, "rescale": True, "rescale_by": "l1"}
    a = method(BASE, MODELS, density=0.5, generator=_gen(4))
    b = method(BASE, MODELS, density=0.5, generator=_gen(4))
    c = method(BASE, MODELS, density=0.5, generator=_gen(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generalized_task_arithmetic_applies_a_step_to_each_task_vector_in_order():
    seen = []

    def halve(tau, generator):
        seen.append(tau.clone())
        return tau * 0.5

    out = generalized_task_arithmetic(BASE, MODELS, sparsify=halve, consensus="none", scaling=1.0)
    assert [s.tolist() for s in seen] == [t.tolist() for t in torch.stack(MODELS) - BASE]
    torch.testing.assert_close(out, BASE + 0.5 * (TAUS[0] + TAUS[1]))
