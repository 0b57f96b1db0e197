"""TIES-Merging and its steps (trim, elect sign, disjoint mean): hand-computed tables + properties."""

from __future__ import annotations

import math

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging import get_method
from modmerge.merging.sparsify import (
    disjoint_mean,
    elect_sign,
    kept_count,
    magnitude_threshold,
    magnitude_trim,
)

T = torch.tensor


@pytest.mark.parametrize(
    ("fraction", "n", "expected"),
    [(0.2, 5, 1), (0.4, 5, 2), (0.5, 5, 3), (0.3, 10, 3), (0.01, 8, 1), (0.0, 8, 0), (1.0, 8, 8), (0.9, 0, 0)],
)
def test_kept_count(fraction, n, expected):
    assert kept_count(fraction, n) == expected


@pytest.mark.parametrize(
    ("values", "density", "expected"),
    [
        ([3.0, 1.0, 2.0, 5.0], 0.5, 3.0),  # k = 2: second largest
        ([3.0, 1.0, 2.0, 5.0], 0.25, 5.0),  # k = 1
        ([3.0, 1.0, 2.0, 5.0], 1.0, 0.0),  # keep all
        ([3.0, 1.0, 2.0, 5.0], 0.0, math.inf),  # keep none
        ([2.0, 2.0, 1.0], 0.34, 2.0),  # k = 1, tied values
    ],
)
def test_magnitude_threshold(values, density, expected):
    assert magnitude_threshold(T(values), density) == expected


@pytest.mark.parametrize(
    ("tau", "density", "threshold", "expected"),
    [
        # k = round(0.4 * 5) = 2: keep -0.5 and 0.4
        ([0.1, -0.5, 0.3, -0.2, 0.4], 0.4, None, [0.0, -0.5, 0.0, 0.0, 0.4]),
        # k = 1 but |-2| == |2|: both tied entries are kept (deterministic)
        ([1.0, -2.0, 2.0, 0.5], 0.25, None, [0.0, -2.0, 2.0, 0.0]),
        # explicit (model-scope) threshold replaces the per-tensor top-k
        ([0.1, -0.5, 0.3], 0.99, 0.3, [0.0, -0.5, 0.3]),
        ([0.1, -0.5, 0.3], 1.0, None, [0.1, -0.5, 0.3]),
    ],
)
def test_magnitude_trim(tau, density, threshold, expected):
    assert torch.equal(magnitude_trim(T(tau), density, threshold), T(expected))


def test_elect_sign_is_sign_of_sum_with_zero_as_plus():
    # sums: [1-3, -2+1, 0] = [-2, -1, 0]
    assert torch.equal(elect_sign([T([1.0, -2.0, 0.0]), T([-3.0, 1.0, 0.0])]), T([-1.0, -1.0, 1.0]))


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        # entry 0: models agreeing with + are 1 and 2 -> (1 + 2) / 2; entry 1: (-2 - 4) / 2; entry 2: 5
        (None, [1.5, -3.0, 5.0]),
        # weighted: entry 0 (1*1 + 3*2) / (1 + 3) = 1.75; entry 1 (-2*1 - 4*3) / 4 = -3.5; entry 2: 5
        ([1.0, 1.0, 3.0], [1.75, -3.5, 5.0]),
    ],
)
def test_disjoint_mean(weights, expected):
    taus = [T([1.0, -2.0, 0.0]), T([-3.0, 1.0, 0.0]), T([2.0, -4.0, 5.0])]
    out = disjoint_mean(taus, T([1.0, -1.0, 1.0]), weights)
    torch.testing.assert_close(out, T(expected))


# Two models over base 1: tau_1 = [0.5, -1, 0.2, 0, 3], tau_2 = [-2, 0.1, 0.3, 1, -1].
BASE = torch.ones(5)
MODELS = [BASE + T([0.5, -1.0, 0.2, 0.0, 3.0]), BASE + T([-2.0, 0.1, 0.3, 1.0, -1.0])]

TIES_CASES = [
    # density 0.4 (k = 2): trimmed tau_1 = [0,-1,0,0,3]; tau_2 has |.| threshold 1 (tie at 1 kept)
    # -> [-2,0,0,1,-1]. Sum [-2,-1,0,1,2] -> sign [-,-,+,+,+]. Disjoint mean [-2,-1,0,1,3].
    ({"density": 0.4}, None, None, [-1.0, 0.0, 1.0, 2.0, 4.0]),
    # same with lambda = 0.5: 1 + 0.5 * [-2,-1,0,1,3]
    ({"density": 0.4, "scaling": 0.5}, None, None, [0.0, 0.5, 1.0, 1.5, 2.5]),
    # weights [1, 4]: entry 4 weighted sum 3 - 4 = -1 elects '-', so only tau_2 (-1) survives there
    ({"density": 0.4}, [1.0, 4.0], None, [-1.0, 0.0, 1.0, 2.0, 0.0]),
    # model-scope thresholds [2.5, 0.5]: tau_1 -> [0,0,0,0,3], tau_2 -> [-2,0,0,1,-1];
    # sum [-2,0,0,1,2] -> mean [-2,0,0,1,3]
    ({"density": 0.4}, None, [2.5, 0.5], [-1.0, 1.0, 1.0, 2.0, 4.0]),
    # density 1: no trim; sum [-1.5,-0.9,0.5,1,2] -> signs [-,-,+,+,+];
    # entry 2: (0.2 + 0.3) / 2 = 0.25
    ({"density": 1.0}, None, None, [-1.0, 0.0, 1.25, 2.0, 4.0]),
]


@pytest.mark.parametrize(("params", "weights", "thresholds", "expected"), TIES_CASES)
def test_ties_hand_computed(params, weights, thresholds, expected):
    method = get_method("ties")
    out = method(BASE, MODELS, **method.validate_params(params), weights=weights, thresholds=thresholds)
    torch.testing.assert_close(out, T(expected))


def test_ties_density_one_single_model_returns_it():
    g = torch.Generator().manual_seed(3)
    base, model = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    out = get_method("ties")(base, [model], density=1.0, scaling=1.0)
    torch.testing.assert_close(out, model)


def test_ties_bf16_gives_fp32_and_leaves_inputs_alone():
    base = BASE.to(torch.bfloat16)
    models = [m.to(torch.bfloat16) for m in MODELS]
    before = [m.clone() for m in models]
    out = get_method("ties")(base, models, density=0.4)
    assert out.dtype == torch.float32
    assert all(torch.equal(m, b) for m, b in zip(models, before, strict=True))


def test_ties_thresholds_length_is_checked():
    with pytest.raises(MergeMethodError, match="thresholds"):
        get_method("ties")(BASE, MODELS, thresholds=[0.1])
