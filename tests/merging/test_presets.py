"""dare_linear, dare_ties, breadcrumbs_ties: mergekit's names and defaults for generalized settings."""

from __future__ import annotations

import pytest
import torch

from modmerge.merging import get_method

T = torch.tensor

BASE = T([1.0, 0.0, -1.0, 2.0, 0.5, 0.0])
TAUS = [T([0.4, -0.2, 1.0, 0.0, -0.6, 0.8]), T([-0.4, 0.6, 0.2, 1.0, 0.3, -0.8])]
MODELS = [BASE + tau for tau in TAUS]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _call(name, params, weights=None, seed=None):
    method = get_method(name)
    extra = {"generator": _gen(seed)} if seed is not None else {}
    return method(BASE, MODELS, **method.validate_params(params), weights=weights, **extra)


@pytest.mark.parametrize(
    ("name", "defaults"),
    [
        ("dare_linear", {"density": 1.0, "lambda": 1.0, "rescale": True, "rescale_by": "l1"}),
        ("dare_ties", {"density": 1.0, "lambda": 1.0, "rescale": True, "rescale_by": "l1", "normalize": True}),
        ("breadcrumbs_ties", {"density": 1.0, "gamma": 0.01, "lambda": 1.0, "rescale": False, "normalize": True}),
    ],
)
def test_mergekit_defaults(name, defaults):
    assert get_method(name).defaults() == defaults


@pytest.mark.parametrize(("name", "consensus"), [("dare_linear", "none"), ("dare_ties", "ties")])
@pytest.mark.parametrize("weights", [None, [1.0, 2.0]])
def test_dare_presets_with_probability_rescale_are_dare(name, consensus, weights):
    params = {"density": 0.3, "lambda": 0.7, "rescale_by": "probability"}
    dare = get_method("dare")(
        BASE, MODELS, drop_rate=0.7, consensus=consensus, scaling=0.7, weights=weights, generator=_gen(2)
    )
    assert torch.equal(_call(name, params, weights, seed=2), dare)


def _dare_masks(seed: int, density: float) -> list[torch.Tensor]:
    """dare_drop's masks written out: keep where u >= 1 - density, one draw per model."""
    g = _gen(seed)
    return [torch.rand(BASE.shape, generator=g) >= 1.0 - density for _ in TAUS]


@pytest.mark.parametrize("rescale", [True, False])
def test_dare_linear_l1_rescale_or_none(rescale):
    kept = [torch.where(m, tau, 0.0) for m, tau in zip(_dare_masks(6, 0.5), TAUS, strict=True)]
    if rescale:
        kept = [k * (tau.abs().sum() / k.abs().sum()) for k, tau in zip(kept, TAUS, strict=True)]
    expected = BASE + 0.5 * (kept[0] + 3.0 * kept[1])
    out = _call("dare_linear", {"density": 0.5, "lambda": 0.5, "rescale": rescale}, [1.0, 3.0], seed=6)
    torch.testing.assert_close(out, expected)


def test_dare_ties_l1_rescale_then_disjoint_mean():
    kept = [torch.where(m, tau, 0.0) for m, tau in zip(_dare_masks(8, 0.5), TAUS, strict=True)]
    kept = [k * (tau.abs().sum() / k.abs().sum()) for k, tau in zip(kept, TAUS, strict=True)]
    sign = torch.where(kept[0] + kept[1] >= 0, 1.0, -1.0)
    agree = [(k * sign > 0).float() for k in kept]
    den = agree[0] + agree[1]
    merged = torch.where(den > 0, (agree[0] * kept[0] + agree[1] * kept[1]) / den.clamp_min(1e-30), 0.0)
    torch.testing.assert_close(_call("dare_ties", {"density": 0.5}, seed=8), BASE + merged)


def test_density_one_drops_nothing():
    # mergekit's default: task arithmetic with lambda 1, and TIES without trimming
    torch.testing.assert_close(_call("dare_linear", {}, seed=0), BASE + TAUS[0] + TAUS[1])
    ties = get_method("ties")(BASE, MODELS, density=1.0, scaling=1.0)
    torch.testing.assert_close(_call("dare_ties", {}, seed=0), ties)


# breadcrumbs_ties, density 0.5 and gamma 0.25 over 4 entries: drop the largest |tau|, keep the next 2
BC_BASE = torch.zeros(4)
BC_MODELS = [T([4.0, 1.0, 2.0, 0.5]), T([-1.0, -3.0, -0.2, 2.0])]
# masked: [0, 1, 2, 0] and [-1, 0, 0, 2]; signs of the sum [-1, 1, 2, 2]: [-, +, +, +]
BC_CASES = [
    ({"density": 0.5, "gamma": 0.25}, None, [-1.0, 1.0, 2.0, 2.0]),
    # lambda 0.5
    ({"density": 0.5, "gamma": 0.25, "lambda": 0.5}, None, [-0.5, 0.5, 1.0, 1.0]),
    # density 1 keeps all: tau sums [3, -2, 1.8, 2.5] -> [+, -, +, +]; means over agreeing entries
    ({"density": 1.0}, None, [4.0, -3.0, 2.0, (0.5 + 2.0) / 2]),
    # weights 1, 3 with density 1: entry 0 sum 4 - 3 = 1 > 0 -> model 0 alone
    ({"density": 1.0}, [1.0, 3.0], [4.0, -3.0, 2.0, (0.5 + 3 * 2.0) / 4]),
    # L1 rescale: model 0 kept |.| 3 of 7.5 (x 2.5), model 1 kept 3 of 6.2 (x 6.2 / 3)
    ({"density": 0.5, "gamma": 0.25, "rescale": True}, None, [-6.2 / 3, 2.5, 5.0, 2 * 6.2 / 3]),
]


@pytest.mark.parametrize(("params", "weights", "expected"), BC_CASES)
def test_breadcrumbs_ties_hand_computed(params, weights, expected):
    method = get_method("breadcrumbs_ties")
    out = method(BC_BASE, BC_MODELS, **method.validate_params(params), weights=weights)
    torch.testing.assert_close(out, T(expected))


def test_breadcrumbs_ties_is_breadcrumbs_with_ties_consensus():
    ours = get_method("breadcrumbs_ties")(BASE, MODELS, density=0.5, gamma=0.2, **{"lambda": 0.9})
    theirs = get_method("breadcrumbs")(BASE, MODELS, density=0.5, gamma=0.2, consensus="ties", scaling=0.9)
    assert torch.equal(ours, theirs)
