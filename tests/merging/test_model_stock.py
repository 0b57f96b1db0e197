"""Model Stock: the angle-based ratio and the merge, hand-computed (mergekit's semantics)."""

from __future__ import annotations

import math

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging import get_method

T = torch.tensor


def _t(cos: float, n: int) -> float:
    """Model Stock's ratio written out: N cos / (1 + (N - 1) cos)."""
    return n * cos / (1 + (n - 1) * cos)


T45 = _t(math.sqrt(0.5), 2)  # task vectors 45 degrees apart: 0.8284
C3 = (0 + math.sqrt(0.5) + math.sqrt(0.5)) / 3  # mean pairwise cosine of [1,0], [0,1], [1,1]
CFLAT = 1 / (math.sqrt(2) * math.sqrt(3))  # [1, 0, 1, 0] . [1, 1, 0, 1] / (sqrt 2 sqrt 3)

CASES = [
    # 45 degrees: t = 0.8284, average [1, 0.5]
    ([0.0, 0.0], [[1.0, 0.0], [1.0, 1.0]], {}, [T45, T45 * 0.5]),
    # orthogonal task vectors: t = 0, the base
    ([1.0, 1.0], [[2.0, 1.0], [1.0, 2.0]], {}, [1.0, 1.0]),
    # equal task vectors: t = 1, their average (= each model)
    ([1.0, -1.0], [[2.0, 0.0], [2.0, 0.0]], {}, [2.0, 0.0]),
    # opposite-ish (cos = -0.6): t = 2 (-0.6) / 0.4 = -3, extrapolates away from the average
    ([0.0, 0.0], [[1.0, 0.0], [-0.6, 0.8]], {}, [-3 * 0.2, -3 * 0.4]),
    # three models: mean of the three pairwise cosines, N = 3; average [2/3, 2/3]
    ([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], {}, [_t(C3, 3) * 2 / 3] * 2),
    # a zero task vector counts as orthogonal (norm product clamped): cos 0, t 0
    ([0.5, 0.5], [[0.5, 0.5], [1.5, 0.5]], {}, [0.5, 0.5]),
]


@pytest.mark.parametrize(("base", "models", "params", "expected"), CASES)
def test_model_stock_hand_computed(base, models, params, expected):
    out = get_method("model_stock")(T(base), [T(m) for m in models], **params)
    torch.testing.assert_close(out, T(expected))


# Rows [1,0] & [1,1] (45 degrees) and [1,0] & [0,1] (90 degrees).
MATRIX_MODELS = [T([[1.0, 0.0], [1.0, 0.0]]), T([[1.0, 1.0], [0.0, 1.0]])]


@pytest.mark.parametrize(
    ("filter_wise", "expected"),
    [
        # per row: row 0 as the first case above, row 1 orthogonal -> the base
        (True, [[T45, T45 * 0.5], [0.0, 0.0]]),
        # one vector: cos 1/sqrt(6), average [1, 0.5, 0.5, 0.5]
        (False, [[_t(CFLAT, 2), _t(CFLAT, 2) * 0.5], [_t(CFLAT, 2) * 0.5, _t(CFLAT, 2) * 0.5]]),
    ],
)
def test_model_stock_filter_wise(filter_wise, expected):
    out = get_method("model_stock")(torch.zeros(2, 2), MATRIX_MODELS, filter_wise=filter_wise)
    torch.testing.assert_close(out, T(expected))


def test_model_stock_filter_wise_treats_a_vector_as_one_row():
    models = [T([1.0, 0.0]), T([1.0, 1.0])]
    a = get_method("model_stock")(torch.zeros(2), models, filter_wise=True)
    torch.testing.assert_close(a, T([T45, T45 * 0.5]))


def test_model_stock_needs_two_models_besides_the_base():
    with pytest.raises(MergeMethodError, match="at least two"):
        get_method("model_stock")(torch.zeros(2), [torch.ones(2)])
