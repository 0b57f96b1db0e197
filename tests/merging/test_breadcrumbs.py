"""Model Breadcrumbs: the outlier + small-value mask and the merge, hand-computed."""

from __future__ import annotations

import pytest
import torch

from modmerge.merging import get_method
from modmerge.merging.sparsify import breadcrumbs_mask

T = torch.tensor

TAU = [0.1, -0.9, 0.5, -0.3, 0.7, 0.2, -0.05, 0.6, 0.4, -0.8]  # |.| ranks: 0.9 > 0.8 > 0.7 > 0.6 > ...


@pytest.mark.parametrize(
    ("density", "gamma", "expected"),
    [
        # keep 5, drop the top 1 (-0.9): keep -0.8, 0.7, 0.6, 0.5, 0.4
        (0.5, 0.1, [0.0, 0.0, 0.5, 0.0, 0.7, 0.0, 0.0, 0.6, 0.4, -0.8]),
        # keep 3, drop the top 2 (-0.9, -0.8): keep 0.7, 0.6, 0.5
        (0.3, 0.2, [0.0, 0.0, 0.5, 0.0, 0.7, 0.0, 0.0, 0.6, 0.0, 0.0]),
        # gamma 0 is a plain top-k: keep -0.9, -0.8
        (0.2, 0.0, [0.0, -0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.8]),
        # density 0.9 + gamma 0.2 cannot both hold: only 1 outlier removed, 9 kept
        (0.9, 0.2, [0.1, 0.0, 0.5, -0.3, 0.7, 0.2, -0.05, 0.6, 0.4, -0.8]),
        # density 1 keeps everything, outliers included
        (1.0, 0.1, TAU),
    ],
)
def test_breadcrumbs_mask(density, gamma, expected):
    assert torch.equal(breadcrumbs_mask(T(TAU), density, gamma), T(expected))


def test_breadcrumbs_mask_ties_break_by_position_and_keep_exact_density():
    # |.| all equal: stable ranking keeps the last positions; exactly 2 of 4 survive.
    out = breadcrumbs_mask(T([1.0, -1.0, 1.0, -1.0]), 0.5, 0.0)
    assert torch.equal(out, T([0.0, 0.0, 1.0, -1.0]))


def test_breadcrumbs_mask_keeps_shape():
    tau = torch.arange(12, dtype=torch.float32).view(3, 4)
    out = breadcrumbs_mask(tau, 0.25, 1 / 12)  # drop 11, keep 10, 9, 8
    assert out.shape == (3, 4)
    assert torch.equal(out.flatten().nonzero().flatten(), T([8, 9, 10]))


# base 0, D = 4, density 0.5 (keep 2), gamma 0.25 (drop top 1)
BASE = torch.zeros(4)
MODELS = [T([4.0, 1.0, 2.0, 0.5]), T([-1.0, -3.0, 0.2, 2.0])]
# masked: tau_1 |.| = [4, 1, 2, 0.5]: drop 4 (outlier), keep 2 and 1 -> [0, 1, 2, 0]
#         tau_2 |.| = [1, 3, 0.2, 2]: drop 3 (outlier), keep 2 and 1 -> [-1, 0, 0, 2]

CASES = [
    # sum, lambda 1: [0,1,2,0] + [-1,0,0,2]
    ({"density": 0.5, "gamma": 0.25, "scaling": 1.0}, None, [-1.0, 1.0, 2.0, 2.0]),
    # lambda 0.3, weights [2, 1]: 0.3 * ([0,2,4,0] + [-1,0,0,2])
    ({"density": 0.5, "gamma": 0.25, "scaling": 0.3}, [2.0, 1.0], [-0.3, 0.6, 1.2, 0.6]),
    # ties consensus: no conflicts on overlapping entries -> disjoint mean is just the union
    ({"density": 0.5, "gamma": 0.25, "scaling": 1.0, "consensus": "ties"}, None, [-1.0, 1.0, 2.0, 2.0]),
    # density 1: plain task arithmetic, lambda 0.5: 0.5 * [3, -2, 2.2, 2.5]
    ({"density": 1.0, "scaling": 0.5}, None, [1.5, -1.0, 1.1, 1.25]),
]


@pytest.mark.parametrize(("params", "weights", "expected"), CASES)
def test_breadcrumbs_hand_computed(params, weights, expected):
    method = get_method("breadcrumbs")
    out = method(BASE, MODELS, **method.validate_params(params), weights=weights)
    torch.testing.assert_close(out, T(expected))


def test_breadcrumbs_ties_consensus_resolves_sign_conflicts():
    # density 1, gamma 0: tau_1 = [2, -1], tau_2 = [-1, -3]; sums [1, -4] -> signs [+, -]
    # entry 0: only 2 agrees; entry 1: mean(-1, -3) = -2
    models = [T([2.0, -1.0]), T([-1.0, -3.0])]
    out = get_method("breadcrumbs")(torch.zeros(2), models, density=1.0, gamma=0.0, consensus="ties", scaling=1.0)
    torch.testing.assert_close(out, T([2.0, -2.0]))


def test_breadcrumbs_bf16_gives_fp32():
    out = get_method("breadcrumbs")(BASE.bfloat16(), [m.bfloat16() for m in MODELS])
    assert out.dtype == torch.float32
