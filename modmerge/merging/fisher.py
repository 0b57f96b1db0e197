"""Fisher merging: an elementwise average weighted by each model's diagonal Fisher information.

Matena & Raffel (2022), "Merging Models with Fisher-Weighted Averaging", eq. (3) with a diagonal
Fisher: for every element ``j``::

    merged_j = sum_t w_t F_tj theta_tj / sum_t w_t F_tj

``F_t`` is model ``t``'s diagonal Fisher for this tensor (computed by
:func:`modmerge.merging.statistics.compute_fisher`), ``w_t`` the per-model weight (the paper's
lambda_t; uniform by default). Fisher values are floored at ``epsilon`` (the reference code's
"fisher floor") so elements no model cares about fall back to the plain weighted average instead
of 0/0.

This module also holds the two small helpers both data-dependent methods use for their
no-statistics fallback: :func:`normalized_weights` and :func:`weighted_mean`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.registry import Param, merge_method


def normalized_weights(weights: Sequence[float] | None, n: int, method: str) -> list[float]:
    """Per-model weights summing to 1 (uniform when ``weights`` is None).

    Data-dependent methods need non-negative weights with a positive sum: a negative weight
    would make a Fisher or Gram matrix indefinite.

    >>> normalized_weights([3.0, 1.0], 2, "fisher")
    [0.75, 0.25]
    """
    if n < 1:
        raise MergeMethodError(f"method '{method}' needs at least one model tensor")
    if weights is None:
        return [1.0 / n] * n
    values = [float(w) for w in weights]
    if len(values) != n:
        raise MergeMethodError(f"method '{method}' got {len(values)} weights for {n} models")
    if any(w < 0 for w in values) or sum(values) <= 0:
        raise MergeMethodError(
            f"method '{method}' needs non-negative weights with a positive sum, got {values}"
        )
    total = sum(values)
    return [w / total for w in values]


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_t w_t * tensors[t]`` in float32 (``weights`` already normalised).

    >>> weighted_mean([torch.zeros(2), torch.ones(2)], [0.25, 0.75])
    tensor([0.7500, 0.7500])
    """
    out = torch.zeros(tensors[0].shape, dtype=torch.float64, device=tensors[0].device)
    for w, t in zip(weights, tensors, strict=True):
        out += w * t.to(out.device, torch.float64)
    return out.to(torch.float32)


def check_same_shape(tensors: Sequence[torch.Tensor], method: str) -> None:
    """Raise naming the model index whose tensor shape differs from model 0's."""
    if not tensors:
        raise MergeMethodError(f"method '{method}' needs at least one model tensor")
    for i, t in enumerate(tensors[1:], start=1):
        if t.shape != tensors[0].shape:
            raise MergeMethodError(
                f"method '{method}': model {i} tensor has shape {tuple(t.shape)}, model 0 has {tuple(tensors[0].shape)}"
            )


@merge_method(
    "fisher",
    summary="Fisher-weighted average: each element weighted by each model's diagonal Fisher information",
    citation="Matena & Raffel 2022, Merging Models with Fisher-Weighted Averaging (NeurIPS)",
    needs=("fisher",),
    limitations=(
        "diagonal Fisher only; normalize=True divides by this tensor's Fisher sum, not the "
        "whole-model norm; tensors without Fisher statistics are plainly (weighted) averaged"
    ),
)
def fisher_merge(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    epsilon: Annotated[
        float,
        Param(low=1e-12, high=1.0, search=(1e-8, 1e-4), help="Fisher floor: values below it are raised to it"),
    ] = 1e-6,
    normalize: Annotated[
        bool, Param(help="divide each model's Fisher for this tensor by its sum before weighting")
    ] = False,
    stats: Sequence[torch.Tensor] | None = None,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Merge ``tensors`` elementwise, weighting model ``t`` by ``weights[t] * max(F_t, epsilon)``.

    ``stats`` holds one diagonal Fisher per model, shaped like the tensor. When it is None (no
    Fisher was collected for this parameter) the result is the plain weighted average.
    ``epsilon`` defaults to 1e-6, the floor of Matena & Raffel's reference code. ``normalize``
    (default False, as in the paper) rescales each model's Fisher to sum to 1 over this tensor,
    so a model with a larger overall Fisher scale does not dominate; implementations that
    normalise (e.g. MergeLM) use the whole-model norm instead, which a per-tensor method cannot see.

    >>> fisher_merge(torch.zeros(2), [torch.zeros(2), torch.ones(2)],
    ...              stats=[torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])])
    tensor([0.7500, 0.2500])
    """
    check_same_shape(tensors, "fisher")
    w = normalized_weights(weights, len(tensors), "fisher")
    if stats is None:
        return weighted_mean(tensors, w)
    if len(stats) != len(tensors):
        raise MergeMethodError(f"method 'fisher' got {len(stats)} Fisher tensors for {len(tensors)} models")
    device = tensors[0].device
    numerator = torch.zeros(tensors[0].shape, dtype=torch.float64, device=device)
    denominator = torch.zeros_like(numerator)
    for i, (w_t, theta, fisher) in enumerate(zip(w, tensors, stats, strict=True)):
        if fisher.shape != theta.shape:
            raise MergeMethodError(
                f"method 'fisher': model {i} Fisher has shape {tuple(fisher.shape)}, its tensor {tuple(theta.shape)}"
            )
        # float64: Fisher values span many orders of magnitude and their products underflow in fp32.
        f = fisher.to(device, torch.float64)
        if normalize:
            f = f / f.sum().clamp_min(torch.finfo(torch.float64).tiny)
        f = f.clamp_min(epsilon)
        numerator += w_t * f * theta.to(device, torch.float64)
        denominator += w_t * f
    return (numerator / denominator).to(torch.float32)
