"""SCE (select, calculate, erase): each step and the merge, hand-computed (mergekit's semantics)."""

from __future__ import annotations

import pytest
import torch

from modmerge.merging import get_method
from modmerge.merging.sce import sce_select_mask, sce_weights

T = torch.tensor


@pytest.mark.parametrize(
    ("taus", "topk", "expected"),
    [
        # variances [0, 1, 4]: 2 non-zero, int(2 * 0.5) = 1 kept -> the largest
        ([[0.0, 1.0, 4.0], [0.0, -1.0, 0.0]], 0.5, [False, False, True]),
        # int(2 * 0.4) = 0: nothing kept
        ([[0.0, 1.0, 4.0], [0.0, -1.0, 0.0]], 0.4, [False, False, False]),
        # 1 keeps every position, zero variance included
        ([[0.0, 1.0, 4.0], [0.0, -1.0, 0.0]], 1.0, [True, True, True]),
        # equal variances: the earlier position first
        ([[1.0, 1.0, 0.0, 3.0], [-1.0, -1.0, 0.0, 3.0]], 0.5, [True, False, False, False]),
    ],
)
def test_select_mask(taus, topk, expected):
    assert sce_select_mask(T(taus), topk).tolist() == expected


@pytest.mark.parametrize(
    ("taus", "expected"),
    [
        ([[1.0, 1.0], [2.0, 0.0]], [1 / 3, 2 / 3]),  # mean squares 1 and 2
        ([[3.0], [1.0], [0.0]], [0.9, 0.1, 0.0]),  # 9, 1, 0
        ([[1e-4, 0.0], [3e-4, 0.0]], [0.5, 0.5]),  # mean squares sum < 1e-6: uniform (mergekit)
    ],
)
def test_calculate_weights(taus, expected):
    torch.testing.assert_close(sce_weights(T(taus)), T(expected))


CASES = [
    # mean squares 2.5, 1 -> w = [5/7, 2/7]; signs of [3, 0] are [+, +] (0 elects +)
    # entry 0: (5/7 * 2 + 2/7 * 1) / 1; entry 1: only model 0 agrees -> 1
    ([0.0, 0.0], [[2.0, 1.0], [1.0, -1.0]], 1.0, [12 / 7, 1.0]),
    # conflicts: w = [2/3, 1/3], signs [+, -]: entry 0 only model 0 (3), entry 1 only model 1 (-2)
    ([0.0, 0.0], [[3.0, 1.0], [-1.0, -2.0]], 1.0, [3.0, -2.0]),
    # w = [0.2, 0.8]: (0.2 * 2 + 0.8 * 4) / 1; entry 1 nobody agrees -> 0
    ([1.0, 1.0], [[3.0, 1.0], [5.0, 1.0]], 1.0, [1 + 3.6, 1.0]),
    # an exactly cancelling entry elects +: model 0 alone
    ([0.0], [[1.0], [-1.0]], 1.0, [1.0]),
    # select keeps entry 2 only: w = [1, 0], result [0, 0, 4]
    ([0.0, 0.0, 0.0], [[0.0, 1.0, 4.0], [0.0, -1.0, 0.0]], 0.5, [0.0, 0.0, 4.0]),
    # tiny deltas: uniform weights -> plain mean 2e-4 (mean-square weights would give 2.8e-4)
    ([0.0, 0.0], [[1e-4, 0.0], [3e-4, 0.0]], 1.0, [2e-4, 0.0]),
]


@pytest.mark.parametrize(("base", "models", "topk", "expected"), CASES)
def test_sce_hand_computed(base, models, topk, expected):
    out = get_method("sce")(T(base), [T(m) for m in models], select_topk=topk)
    torch.testing.assert_close(out, T(expected))


def test_sce_takes_no_weights_and_keeps_shape():
    method = get_method("sce")
    assert "weights" not in method.accepts
    out = method(torch.zeros(2, 3), [torch.ones(2, 3), torch.full((2, 3), 3.0)])
    torch.testing.assert_close(out, torch.full((2, 3), 0.1 * 1 + 0.9 * 3))
