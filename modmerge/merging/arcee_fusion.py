"""Arcee Fusion: keep the second model's changes where they matter most, by a KL-weighted score.

From mergekit's ``merge_methods/arcee_fusion.py`` (introduced with mergekit v0.1). For the pair
``(a, b)`` (``a`` is mergekit's ``base_model``; see :mod:`modmerge.merging.pairs`)::

    KL_r  = sum_j p_rj log(p_rj / q_rj),   p_r = softmax(b_r) + 1e-8,  q_r = softmax(a_r) + 1e-8
    s     = |b - a| * KL_r                  (per entry, KL of the entry's row r: the last dimension)
    m     = [s >= median(s) + 1.5 IQR(s)]   (Tukey's upper fence over the tensor's scores)
    theta = a + m * (b - a)

Quantiles are order statistics: the entry at position ``floor(q (n - 1))`` of the sorted scores.

Example::

    >>> import torch
    >>> arcee_fusion(torch.zeros(8), [torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 30.0])])
    tensor([ 0.,  0.,  0.,  0.,  0.,  0.,  0., 30.])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from modmerge.merging.pairs import endpoints
from modmerge.merging.registry import merge_method
from modmerge.merging.sparsify import kth_largest

__all__ = ["arcee_fusion", "fusion_scores", "order_statistic"]

_EXACT_BELOW = 1 << 18


def order_statistic(values: torch.Tensor, q: float) -> float:
    """The entry at position ``floor(q * (n - 1))`` of ``values`` sorted ascending (exact).

    >>> order_statistic(torch.tensor([4.0, 1.0, 3.0, 2.0]), 0.5)
    2.0
    """
    flat = values.reshape(-1)
    n = flat.numel()
    index = int(q * (n - 1))
    if n <= _EXACT_BELOW:
        return float(torch.kthvalue(flat, index + 1).values)
    return kth_largest(lambda: (flat,), n - index, n)


def fusion_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Arcee Fusion's importance ``|b - a| * KL(softmax(b_r) || softmax(a_r))`` per entry.

    >>> fusion_scores(torch.zeros(2), torch.zeros(2))
    tensor([0., 0.])
    """
    p = torch.softmax(b, dim=-1) + 1e-8
    q = torch.softmax(a, dim=-1) + 1e-8
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    return (b - a).abs() * kl


@merge_method(
    "arcee_fusion",
    summary="Arcee Fusion: keep a second model's changes whose KL-weighted score is an upper outlier.",
    citation=(
        "Arcee AI, 'Meet MergeKit v0.1: Arcee Fusion' (arcee.ai blog, 2025); mergekit "
        "merge_methods/arcee_fusion.py"
    ),
    max_models=2,
    limitations="quantiles are exact where mergekit samples 1e6 random scores of larger tensors",
)
def arcee_fusion(base: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Arcee Fusion of the pair ``(a, b)`` (formulas in the module docstring); no parameters.

    A 0-d tensor is one row of one entry. The quantiles are exact, so the result is
    deterministic; mergekit computes them on a random sample of 1e6 scores when a tensor has
    more (an approximation, and the only place the two differ).

    >>> arcee_fusion(torch.zeros(4), [torch.tensor([1.0, 1.5, 2.0, 10.0])])
    tensor([ 0.,  0.,  0., 10.])
    """
    a, b = endpoints("arcee_fusion", base, tensors)
    rows_a, rows_b = (a.reshape(1), b.reshape(1)) if a.dim() == 0 else (a, b)
    scores = fusion_scores(rows_a, rows_b)
    fence = order_statistic(scores, 0.5) + 1.5 * (order_statistic(scores, 0.75) - order_statistic(scores, 0.25))
    keep = (scores >= fence).to(torch.float32)
    return (rows_a + (rows_b - rows_a) * keep).reshape(base.shape)
