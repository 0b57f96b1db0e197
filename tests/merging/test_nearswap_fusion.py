"""NearSwap and Arcee Fusion, mergekit's two-model methods: hand-computed tables."""

from __future__ import annotations

import math

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging import get_method
from modmerge.merging.arcee_fusion import fusion_scores, order_statistic

T = torch.tensor

# NearSwap: w = clamp(t / max(|a - b|, 1e-6), 0, 1); theta = w b + (1 - w) a.
NEARSWAP_CASES = [
    # one model: a = base. |a - b| = [0.5, 4]: w = [1 (2 clipped), 0.25]
    ([0.0, 0.0], [[0.5, 4.0]], 1.0, [0.5, 1.0]),
    # |a - b| = [0, 0.5, 2] with t = 1: w = [1, 1, 0.5] -> [1, 1.5, 0.5 * 3 + 0.5 * 1]
    ([9.0, 9.0, 9.0], [[1.0, 1.0, 1.0], [1.0, 1.5, 3.0]], 1.0, [1.0, 1.5, 2.0]),
    # t = 0.1, |a - b| = [0.05, 0.2, 1]: w = [1, 0.5, 0.1]
    ([0.0, 0.0, 0.0], [[0.05, -0.2, 1.0]], 0.1, [0.05, -0.1, 0.1]),
    # t = 0: a unchanged
    ([1.0, 2.0], [[3.0, -4.0]], 0.0, [1.0, 2.0]),
]


@pytest.mark.parametrize(("base", "models", "t", "expected"), NEARSWAP_CASES)
def test_nearswap_hand_computed(base, models, t, expected):
    out = get_method("nearswap")(T(base), [T(m) for m in models], t=t)
    torch.testing.assert_close(out, T(expected))


@pytest.mark.parametrize("name", ["nearswap", "arcee_fusion"])
def test_two_model_methods_refuse_three(name):
    assert get_method(name).max_models == 2
    with pytest.raises(MergeMethodError, match="merges two models") as info:
        get_method(name)(torch.zeros(2), [torch.ones(2)] * 3)
    assert "\n" not in str(info.value)


def _kl(p_logits, q_logits):
    """KL(softmax(p) + 1e-8 || softmax(q) + 1e-8), written out."""
    zp = sum(math.exp(x) for x in p_logits)
    zq = sum(math.exp(x) for x in q_logits)
    p = [math.exp(x) / zp + 1e-8 for x in p_logits]
    q = [math.exp(x) / zq + 1e-8 for x in q_logits]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_fusion_scores_are_the_difference_times_the_rows_kl():
    a, b = T([[0.0, 1.0], [2.0, 0.0]]), T([[1.0, 1.0], [0.0, 0.0]])
    kl0, kl1 = _kl([1.0, 1.0], [0.0, 1.0]), _kl([0.0, 0.0], [2.0, 0.0])
    torch.testing.assert_close(fusion_scores(a, b), T([[1.0 * kl0, 0.0], [2.0 * kl1, 0.0]]))


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([4.0, 1.0, 3.0, 2.0], 0.5, 2.0),  # position floor(0.5 * 3) = 1 of [1, 2, 3, 4]
        ([4.0, 1.0, 3.0, 2.0], 0.75, 3.0),  # floor(2.25) = 2
        ([4.0, 1.0, 3.0, 2.0], 0.25, 1.0),  # floor(0.75) = 0
        ([5.0], 0.75, 5.0),
    ],
)
def test_order_statistic(values, q, expected):
    assert order_statistic(T(values), q) == expected


def test_order_statistic_is_exact_on_large_tensors():
    values = torch.randperm(300_000, generator=torch.Generator().manual_seed(0)).float()
    assert order_statistic(values, 0.75) == float(int(0.75 * 299_999))


# Arcee Fusion keeps b - a where the score reaches median + 1.5 IQR of the tensor's scores.
FUSION_CASES = [
    # one row (one KL): scores ~ |b - a| = 1..7, 30; median 4, q1 2, q3 6 -> fence 10: keep 30
    ([0.0] * 8, [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 30.0]], [0.0] * 7 + [30.0]),
    # scores ~ [1, 1.5, 2, 10]: median 1.5, q1 1, q3 2 -> fence 3: keep 10
    ([0.0] * 4, [[1.0, 1.5, 2.0, 10.0]], [0.0, 0.0, 0.0, 10.0]),
    # most scores 0: the fence is 0 and every entry is kept (>=): b
    ([0.0] * 4, [[0.0, 0.0, 0.0, 3.0]], [0.0, 0.0, 0.0, 3.0]),
    # two models: a = model 0, b = model 1, base unused (same scores as the second case)
    ([7.0] * 4, [[1.0] * 4, [2.0, 2.5, 3.0, 11.0]], [1.0, 1.0, 1.0, 11.0]),
]


@pytest.mark.parametrize(("base", "models", "expected"), FUSION_CASES)
def test_arcee_fusion_hand_computed(base, models, expected):
    out = get_method("arcee_fusion")(T(base), [T(m) for m in models])
    torch.testing.assert_close(out, T(expected))


def test_arcee_fusion_scores_each_row_by_its_own_kl():
    # row 0 moves uniformly (softmax unchanged, KL 0): scores 0 although |b - a| = 1.
    # Row 1: scores k * [1, 2, 3, 10]. All 8 sorted: 0, 0, 0, 0, k, 2k, 3k, 10k -> median
    # (position 3) 0, q1 0, q3 (position 5) 2k: fence 3k keeps 3 and 10, and row 0 stays a.
    a = torch.zeros(2, 4)
    b = T([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 10.0]])
    out = get_method("arcee_fusion")(a, [b])
    torch.testing.assert_close(out, T([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 10.0]]))
