"""The streaming TIES consensus equals the step-by-step reference (elect_sign + disjoint_mean)."""

from __future__ import annotations

import pytest
import torch

from modmerge.merging.sparsify import SignConsensus, disjoint_mean, elect_sign, magnitude_trim


@pytest.mark.parametrize(("n_models", "weights"), [(1, None), (3, None), (4, [0.5, 1.0, 2.0, 0.25])])
def test_streaming_consensus_matches_reference(n_models, weights):
    gen = torch.Generator().manual_seed(n_models)
    taus = [magnitude_trim(torch.randn(2000, generator=gen), 0.3) for _ in range(n_models)]
    w = weights or [1.0] * n_models
    reference = disjoint_mean(taus, elect_sign([t * wt for t, wt in zip(taus, w, strict=True)]), w)
    acc = SignConsensus(taus[0].shape)
    for tau, wt in zip(taus, w, strict=True):
        acc.add(tau, wt)
    torch.testing.assert_close(acc.result(), reference, rtol=1e-6, atol=1e-6)


def test_all_zero_entries_stay_zero():
    acc = SignConsensus(torch.Size([2]))
    acc.add(torch.tensor([0.0, 1.0]))
    acc.add(torch.tensor([0.0, -3.0]))
    assert torch.equal(acc.result(), torch.tensor([0.0, -3.0]))


@pytest.mark.parametrize("weights", [None, [1.0, 0.5, 2.0]])
def test_blocked_ties_matches_step_by_step_reference_across_blocks(weights):
    """TIES on a tensor spanning several blocks equals trim -> elect -> disjoint mean done whole."""
    from modmerge.merging import get_method
    from modmerge.merging.generalized import _BLOCK

    gen = torch.Generator().manual_seed(7)
    base = torch.randn(3, _BLOCK, generator=gen)  # three blocks
    models = [base + 0.1 * torch.randn(base.shape, generator=gen) for _ in range(3)]
    w = weights or [1.0, 1.0, 1.0]
    taus = [magnitude_trim(m - base, 0.2) for m in models]
    expected = base + 1.5 * disjoint_mean(taus, elect_sign([t * wt for t, wt in zip(taus, w, strict=True)]), w)
    merged = get_method("ties")(base, models, density=0.2, scaling=1.5, weights=weights)
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-6)
