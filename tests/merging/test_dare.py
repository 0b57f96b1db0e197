"""DARE: drop-and-rescale step and the merge, with seeded generators."""

from __future__ import annotations

import pytest
import torch

from modmerge.merging import get_method
from modmerge.merging.sparsify import dare_drop

T = torch.tensor


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_dare_drop_matches_bernoulli_keep_and_rescale():
    # The spec written out: keep entry e iff u_e >= p for u ~ U[0,1) drawn from the generator,
    # and divide survivors by (1 - p).
    tau = T([0.5, -1.0, 2.0, 0.25, -0.75, 1.5, -2.0, 3.0])
    p = 0.5
    u = torch.rand(tau.shape, generator=_gen(7))
    expected = torch.where(u >= p, tau / (1 - p), torch.zeros_like(tau))
    assert torch.equal(dare_drop(tau, p, _gen(7)), expected)


@pytest.mark.parametrize(
    ("p", "tau", "expected"),
    [
        (0.0, [1.0, -2.0, 0.5], [1.0, -2.0, 0.5]),  # nothing dropped, no rescale
        (1.0, [1.0, -2.0, 0.5], [0.0, 0.0, 0.0]),  # everything dropped
    ],
)
def test_dare_drop_edges(p, tau, expected):
    assert torch.equal(dare_drop(T(tau), p, _gen(0)), T(expected))


def test_dare_drop_values_and_rate():
    tau = torch.ones(20_000)
    out = dare_drop(tau, 0.9, _gen(1))
    assert out.unique().tolist() == [0.0, 10.0]
    assert 0.08 < (out != 0).float().mean().item() < 0.12  # keeps about 1 - p
    assert out.mean().item() == pytest.approx(1.0, abs=0.1)  # rescale preserves the expectation


BASE = T([1.0, 0.0, -1.0, 2.0, 0.5, 0.0])
MODELS = [BASE + T([0.4, -0.2, 1.0, 0.0, -0.6, 0.8]), BASE + T([-0.4, 0.6, 0.2, 1.0, 0.2, -0.8])]


@pytest.mark.parametrize(
    ("consensus", "p", "scaling", "weights"),
    [("none", 0.5, 0.3, None), ("none", 0.7, 1.0, [1.0, 2.0]), ("ties", 0.5, 1.0, None)],
)
def test_dare_merge_matches_formula(consensus, p, scaling, weights):
    """theta_pre + lambda * combine(m_t * tau_t / (1-p)), masks drawn model by model."""
    g = _gen(11)
    taus = [m - BASE for m in MODELS]
    masks = [torch.rand(BASE.shape, generator=g) >= p for _ in taus]
    w = weights or [1.0, 1.0]
    dropped = [torch.where(mk, tau / (1 - p), 0.0) for mk, tau in zip(masks, taus, strict=True)]
    if consensus == "none":
        merged = sum(wt * d for wt, d in zip(w, dropped, strict=True))
    else:
        sign = torch.where(sum(wt * d for wt, d in zip(w, dropped, strict=True)) >= 0, 1.0, -1.0)
        agree = [(d * sign > 0).float() for d in dropped]
        num = sum(wt * a * d for wt, a, d in zip(w, agree, dropped, strict=True))
        den = sum(wt * a for wt, a in zip(w, agree, strict=True))
        merged = torch.where(den > 0, num / den.clamp_min(1e-30), 0.0)
    expected = BASE + scaling * merged
    out = get_method("dare")(
        BASE, MODELS, drop_rate=p, consensus=consensus, scaling=scaling, weights=weights, generator=_gen(11)
    )
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("scaling", [0.3, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dare_p0_equals_task_arithmetic_exactly(scaling, dtype):
    g = _gen(5)
    base = torch.randn(3, 5, generator=g).to(dtype)
    models = [torch.randn(3, 5, generator=g).to(dtype) for _ in range(3)]
    dare = get_method("dare")(base, models, drop_rate=0.0, scaling=scaling, generator=_gen(0))
    ta = get_method("task_arithmetic")(base, models, scaling=scaling)
    assert torch.equal(dare, ta)


def test_dare_p0_with_ties_consensus_equals_ties_without_trim():
    dare = get_method("dare")(BASE, MODELS, drop_rate=0.0, consensus="ties", scaling=1.0, generator=_gen(0))
    ties = get_method("ties")(BASE, MODELS, density=1.0, scaling=1.0)
    assert torch.equal(dare, ties)


def test_dare_is_reproducible_under_a_seed_and_varies_across_seeds():
    g = _gen(9)
    base = torch.randn(64, generator=g)
    models = [torch.randn(64, generator=g) for _ in range(2)]
    dare = get_method("dare")
    a = dare(base, models, drop_rate=0.5, generator=_gen(123))
    b = dare(base, models, drop_rate=0.5, generator=_gen(123))
    c = dare(base, models, drop_rate=0.5, generator=_gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dare_bf16_gives_fp32_and_is_registered_as_randomized():
    dare = get_method("dare")
    assert dare.randomized and "generator" in dare.accepts
    out = dare(BASE.bfloat16(), [m.bfloat16() for m in MODELS], generator=_gen(0))
    assert out.dtype == torch.float32
