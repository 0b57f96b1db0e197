"""SCE: select high-variance entries, calculate per-model weights, erase sign conflicts.

Wan et al., 'FuseChat: Knowledge Fusion of Chat Models' (arXiv:2408.07990), section 3.3, as
mergekit's ``merge_methods/sce.py`` implements it per tensor, with ``tau_t = theta_t - theta_0``:

1. select: keep the positions whose variance over the models ``Var_t(tau_t)`` is among the top
   ``select_topk`` fraction of the positions with non-zero variance (``int(k * nonzero)`` of
   them); zero the others in every task vector (``select_topk = 1`` keeps all);
2. calculate: ``w_t = mean(tau_t**2) / sum_s mean(tau_s**2)`` over the selected task vectors
   (uniform when that sum is below 1e-6, as in mergekit);
3. erase: elect ``sign(sum_t tau_t)`` (+1 where it is 0) and drop entries of the other sign;
4. ``theta = theta_0 + sum_t w_t tau_t [kept] / max(sum_t w_t [kept], 1e-6)``.

Example::

    >>> import torch
    >>> sce(torch.zeros(2), [torch.tensor([2.0, 1.0]), torch.tensor([1.0, -1.0])])
    tensor([1.7143, 1.0000])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch

from modmerge.merging.linear import check_inputs
from modmerge.merging.registry import Param, merge_method
from modmerge.merging.sparsify import elect_sign

__all__ = ["sce", "sce_select_mask", "sce_weights"]


def sce_select_mask(taus: torch.Tensor, select_topk: float) -> torch.Tensor:
    """SCE's select step: which positions of the stacked task vectors ``taus`` (T x ...) to keep.

    Ties in variance are broken by position (earlier first).

    >>> sce_select_mask(torch.tensor([[0.0, 1.0, 4.0], [0.0, -1.0, 0.0]]), 0.5)
    tensor([False, False,  True])
    """
    variance = taus.var(dim=0, unbiased=False)
    if select_topk >= 1.0:
        return torch.ones_like(variance, dtype=torch.bool)
    k = int(int(torch.count_nonzero(variance)) * select_topk)
    keep = torch.zeros(variance.numel(), dtype=torch.bool, device=variance.device)
    if k > 0:
        order = torch.sort(variance.reshape(-1), descending=True, stable=True).indices
        keep[order[:k]] = True
    return keep.view(variance.shape)


def sce_weights(taus: torch.Tensor) -> torch.Tensor:
    """SCE's calculate step: ``mean(tau_t**2)`` per model, normalised (uniform if the sum < 1e-6).

    >>> sce_weights(torch.tensor([[1.0, 1.0], [2.0, 0.0]]))
    tensor([0.3333, 0.6667])
    """
    energy = taus.pow(2).reshape(taus.shape[0], -1).mean(dim=1)
    total = float(energy.sum())
    if abs(total) < 1e-6:
        return torch.full_like(energy, 1.0 / taus.shape[0])
    return energy / total


@merge_method(
    "sce",
    summary="SCE (FuseChat): variance-based select, mean-square weights, TIES-style sign erase.",
    citation=(
        "Wan, Zhong, Huang, Quan, Bi, Shi, 'FuseChat: Knowledge Fusion of Chat Models', "
        "arXiv:2408.07990; as in mergekit merge_methods/sce.py"
    ),
    limitations=(
        "the weights fall back to uniform when the mean squares sum below 1e-6 (mergekit's "
        "absolute threshold, reached by small deltas)"
    ),
)
def sce(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    select_topk: Annotated[
        float,
        Param(low=0.0, high=1.0, help="fraction of positions kept by variance across the models (tau in the paper)", search=(0.1, 1.0)),
    ] = 1.0,
) -> torch.Tensor:
    """SCE merge of task vectors (steps in the module docstring); mergekit's default keeps all.

    >>> sce(torch.zeros(3), [torch.tensor([1.0, 0.0, 2.0]), torch.tensor([1.0, 0.0, -2.0])])
    tensor([1., 0., 2.])
    """
    check_inputs("sce", base, tensors)
    base32 = base.to(torch.float32)
    taus = torch.stack([t.to(torch.float32) - base32 for t in tensors])
    if select_topk < 1.0:
        taus *= sce_select_mask(taus, select_topk)
    sign = elect_sign(list(taus))
    kept = (taus * sign > 0).to(torch.float32)
    weights = sce_weights(taus).reshape(-1, *([1] * base.dim())) * kept
    merged = (taus * weights).sum(0) / weights.sum(0).clamp(min=1e-6)
    return merged.add_(base32)
