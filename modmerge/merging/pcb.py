"""PCB-Merging: parameter competition balancing (Du et al., NeurIPS 2024, arXiv:2410.02396).

Every task-vector entry gets a score from two balances, low-scoring entries are dropped, and
the survivors are averaged with their scores as weights:

- intra-balancing (self-awareness):  ``b_intra_i = Softmax(N * Norm(tau_i * tau_i))``
- inter-balancing (cross-awareness): ``b_inter_i = sum_j Softmax(Norm(tau_i * tau_j))``
  (``j`` runs over all ``N`` tasks, ``i`` included)
- ``b_i = b_intra_i * b_inter_i``; drop: ``m_i = [b_i >= (1 - r)``-quantile of ``b_i]``, keeping
  the top ``1 - drop_ratio`` fraction of each task; ``b_hat_i = m_i * b_i``
- ``tau_m = sum_i b_hat_i tau_i / sum_i b_hat_i`` (0 where nothing survives);
  ``theta = theta_pre + lambda * tau_m``

``Norm`` is min-max normalisation to [0, 1] and ``Softmax`` runs over the entries, both per
tensor by default; ``scope="model"`` runs them over every tensor a call merges, flattened and
concatenated, as the paper and its code do (one vector per model; the executor concatenates).
Each softmax is multiplied by the entry count ``D``; that constant is common to all tasks and
cancels in ``tau_m``, but keeps the scores near 1 instead of ``1/D``.

``variant="authors"`` is the released code's ``PCB_merge`` instead, which differs from the
paper's equations (per model ``i`` over its ``d`` entries, ``r`` = the kept fraction):

- clip: ``a_i = clamp(|tau_i|, q_lo, q_hi)`` at the ``int(0.0001 d)``-th and
  ``int(0.9999 d - 1)``-th smallest magnitudes (0-based), ``c_i = sign(tau_i) a_i``;
- intra: ``exp(N Norm(a_i)^2)``; inter: ``tanh(tau_i * sum_j tau_j)``; ``s_i`` their product;
- drop and rescale: ``m_i = Norm(max(s_i, q_i))`` with ``q_i`` the ``int((1 - r) d)``-th
  smallest ``s_i`` (so dropped entries and the cut itself weigh 0);
- ``tau_m = sum_i m_i c_i / max(sum_i m_i, 1e-12)``; ``theta = theta_pre + lambda tau_m``.

Example::

    >>> import torch
    >>> base = torch.zeros(4)
    >>> models = [torch.tensor([3.0, 0.1, 0.2, 0.0]), torch.tensor([0.0, 0.1, -0.3, 2.0])]
    >>> pcb(base, models, drop_ratio=0.75, scaling=1.0)
    tensor([3., 0., 0., 2.])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch

from modmerge.merging.linear import check_inputs
from modmerge.merging.registry import Param, merge_method
from modmerge.merging.sparsify import magnitude_threshold

__all__ = ["pcb", "pcb_scores"]


def _min_max(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation to [0, 1]; a constant tensor maps to zeros (no spread to rank)."""
    low, high = x.min(), x.max()
    if high == low:
        return torch.zeros_like(x)
    return (x - low) / (high - low)


def _scaled_softmax(x: torch.Tensor) -> torch.Tensor:
    """``D * Softmax(x)`` over all entries of ``x``."""
    return torch.softmax(x.reshape(-1), dim=0).mul_(x.numel()).view(x.shape)


def pcb_scores(taus: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The PCB balancing scores ``b_i = b_intra_i * b_inter_i`` of each task vector (times ``D**2``).

    >>> scores = pcb_scores([torch.tensor([3.0, 0.1]), torch.tensor([0.0, 2.0])])
    >>> [int(s.argmax()) for s in scores]
    [0, 1]
    """
    n = len(taus)
    scores = []
    for tau_i in taus:
        intra = _scaled_softmax(n * _min_max(tau_i * tau_i))
        inter = torch.zeros_like(tau_i)
        for tau_j in taus:
            inter.add_(_scaled_softmax(_min_max(tau_i * tau_j)))
        scores.append(intra.mul_(inter))
    return scores


@merge_method(
    "pcb",
    summary="PCB-Merging: score entries by intra- and inter-task balancing, drop low scores, rescale.",
    citation=(
        "Du, Lee, Li, Jiang, Guo, Yu, Liu, Goh, Tang, He, Zhang, 'Parameter Competition Balancing "
        "for Model Merging', NeurIPS 2024, arXiv:2410.02396; authors' code duguodong7/pcb-merging"
    ),
    limitations=(
        "defaults: the paper's equations (variant 'paper'), scored per tensor (scope 'tensor'); the "
        "paper and its code score one flattened vector per model (scope 'model', held in memory by "
        "the executor) and the code's PCB_merge differs from the equations (variant 'authors': "
        "quantile clip, exp/tanh balancing, min-max rescale); the per-task lambdas its evolution "
        "strategy searches are not done here"
    ),
    model_scope="concatenate",
)
def pcb(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    drop_ratio: Annotated[
        float,
        Param(low=0.0, high=0.99, help="fraction of each task's lowest-scoring entries dropped", search=(0.8, 0.95)),
    ] = 0.9,
    scaling: Annotated[
        float,
        Param(low=0.0, high=4.0, help="lambda applied to the merged task vector", search=(0.8, 1.3)),
    ] = 1.0,
    scope: Annotated[
        str,
        Param(choices=("tensor", "model"), help="score each tensor apart (default), or every tensor of the "
              "model as one vector (the paper's; a recipe's executor concatenates them)"),
    ] = "tensor",
    variant: Annotated[
        str,
        Param(choices=("paper", "authors"), help="the paper's equations (default), or the authors' released "
              "PCB_merge: quantile clip, tanh inter-balancing, min-max rescaled scores"),
    ] = "paper",
) -> torch.Tensor:
    """PCB-Merging (Du et al. 2024, arXiv:2410.02396); formulas in the module docstring.

    Defaults follow the authors' released code: keep the top 10% of scores per task
    (``drop_ratio=0.9``; its evolution-strategy script keeps 5%) and lambda = 1 (that script
    searches per-task lambdas in [0.8, 1.3], the range used here for the search). Called directly,
    ``scope="model"`` treats the tensors given as the whole model.

    >>> pcb(torch.zeros(2), [torch.tensor([1.0, -1.0])], drop_ratio=0.0)
    tensor([ 1., -1.])
    """
    check_inputs("pcb", base, tensors)
    base32 = base.to(torch.float32)
    taus = [torch.sub(t.to(torch.float32), base32) for t in tensors]
    if variant == "authors":
        return _authors_pcb(taus, 1.0 - drop_ratio).mul_(scaling).add_(base32)
    numerator = torch.zeros_like(base32)
    denominator = torch.zeros_like(base32)
    for tau, score in zip(taus, pcb_scores(taus), strict=True):
        threshold = magnitude_threshold(score, 1.0 - drop_ratio)
        kept = torch.where(score >= threshold, score, torch.zeros_like(score))
        numerator.add_(kept * tau)
        denominator.add_(kept)
    merged = torch.where(denominator > 0, numerator / torch.where(denominator > 0, denominator, 1.0), 0.0)
    return merged.mul_(scaling).add_(base32)


def _nth_smallest(x: torch.Tensor, index: int) -> torch.Tensor:
    """``sorted(x)[index]`` (0-based, Python's negative indices allowed) without a full sort."""
    n = x.numel()
    return torch.kthvalue(x.reshape(-1), index % n + 1).values


def _authors_pcb(taus: Sequence[torch.Tensor], keep: float) -> torch.Tensor:
    """The released code's PCB_merge over ``taus`` (each the whole vector it balances)."""
    n, d = len(taus), taus[0].numel()
    total = torch.stack(taus).sum(0)
    clipped, scales = [], []
    for tau in taus:
        magnitude = tau.abs()
        low, high = _nth_smallest(magnitude, int(d * 0.0001)), _nth_smallest(magnitude, int(d * (1 - 0.0001) - 1))
        magnitude = torch.minimum(torch.maximum(magnitude, low), high)
        clipped.append(torch.sign(tau) * magnitude)
        score = torch.exp(n * _min_max(magnitude) ** 2) * torch.tanh(tau * total)
        scales.append(_min_max(torch.maximum(score, _nth_smallest(score, int(d * (1 - keep))))))
    weight = torch.stack(scales).sum(0)
    merged = sum(s * c for s, c in zip(scales, clipped, strict=True))
    return merged / weight.clamp_min(1e-12)
