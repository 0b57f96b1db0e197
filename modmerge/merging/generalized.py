"""Generalized task arithmetic: TIES, DARE and Breadcrumbs as settings of one routine.

:func:`generalized_task_arithmetic` computes task vectors ``tau_t = theta_t - theta_pre``,
sparsifies each (``"magnitude"`` top-k, ``"dare"`` random drop, ``"breadcrumbs"`` outlier+small
mask, ``"none"``, or a step given as a function, like DELLA's in :mod:`modmerge.merging.della`),
combines them (``consensus="none"``: weighted sum; ``"sign"``: TIES sign election + disjoint
mean, or disjoint sum with ``disjoint="sum"``) and returns ``theta_pre + lambda * tau_m``. The
reference codes' variants are settings: how many entries a fraction keeps (``count``), which sign
a zero sum elects (``zero_sign``), Breadcrumbs ranked per tensor or per row (``rank``). The registered methods
``ties``, ``dare`` and ``breadcrumbs`` only choose its settings. The steps live in
:mod:`modmerge.merging.sparsify`.

Example::

    >>> import torch
    >>> base = torch.zeros(4)
    >>> models = [torch.tensor([3.0, -0.1, 0.2, 0.0]), torch.tensor([-1.0, 0.1, 0.0, 2.0])]
    >>> ties(base, models, density=0.5)
    tensor([3.0000, 0.0000, 0.2000, 2.0000])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Literal

import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.linear import check_inputs, task_arithmetic
from modmerge.merging.registry import Param, merge_method
from modmerge.merging.sparsify import (
    COUNT_RULES,
    ZERO_SIGNS,
    SignConsensus,
    breadcrumbs_mask,
    dare_drop,
    magnitude_threshold,
    magnitude_trim,
)

__all__ = ["breadcrumbs", "dare", "generalized_task_arithmetic", "ties"]

Sparsify = Literal["none", "magnitude", "dare", "breadcrumbs"]
SparsifyStep = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]  # (tau, generator) -> tau
Consensus = Literal["none", "sign"]

_CONSENSUS_CHOICES = ("none", "ties", "ties_sum")
_CONSENSUS_HELP = (
    "'none': weighted sum of task vectors; 'ties': TIES sign election + disjoint mean; 'ties_sum': "
    "sign election + disjoint sum (mergekit's dare_ties / breadcrumbs_ties with normalize: false)"
)
_CONSENSUS = {"none": ("none", "mean"), "ties": ("sign", "mean"), "ties_sum": ("sign", "sum")}
_ZERO_SIGN = Param(
    choices=ZERO_SIGNS,
    help="sign elected where the task vectors sum to exactly 0: 'plus' +1 (mergekit), 'majority' the "
    "sign most entries of the tensor elect (the TIES authors' resolve_zero_signs, over their whole model)",
)
_BC_COUNTS = ("round", "int")


def _is_identity(
    sparsify: Sparsify | SparsifyStep, density: float, drop_rate: float, has_thresholds: bool, outliers_first: bool
) -> bool:
    """True when the sparsification cannot change any entry."""
    if callable(sparsify):
        return False
    if sparsify == "none":
        return True
    if sparsify == "magnitude":
        return density >= 1.0 and not has_thresholds
    if sparsify == "dare":
        return drop_rate <= 0.0
    # breadcrumbs keeping every entry drops no outlier either, unless outliers go first (per row)
    return density >= 1.0 and not outliers_first


def generalized_task_arithmetic(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    sparsify: Sparsify | SparsifyStep,
    consensus: Consensus,
    scaling: float,
    density: float = 1.0,
    drop_rate: float = 0.0,
    gamma: float = 0.0,
    weights: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    thresholds: Sequence[float] | None = None,
    method: str = "generalized_task_arithmetic",
    disjoint: Literal["mean", "sum"] = "mean",
    zero_sign: str = "plus",
    count: str = "round",
    rank: str = "tensor",
) -> torch.Tensor:
    """``theta_pre + scaling * combine_t(w_t * sparsify(theta_t - theta_pre))`` in float32.

    - ``sparsify``: ``"magnitude"`` keeps the top ``density`` per tensor, or uses the per-model
      ``thresholds`` when given (model-scope trimming); ``"dare"`` drops with rate
      ``drop_rate`` and rescales, drawing from ``generator`` model by model; ``"breadcrumbs"``
      removes the top ``gamma`` and the smallest entries so ``density`` remain; ``"none"``;
      a function ``step(tau, generator)`` applies that step to each task vector in turn.
    - ``consensus``: ``"none"`` sums ``w_t * tau_t``; ``"sign"`` elects the sign of
      ``sum_t w_t tau_t`` (``zero_sign`` where it is exactly 0) and takes the ``w``-weighted mean
      over agreeing, non-zero entries, or their sum with ``disjoint="sum"``.
    - ``count``: how many entries a fraction keeps (:func:`~modmerge.merging.sparsify.kept_count`);
      ``rank``: Breadcrumbs ranks per ``"tensor"`` or per ``"row"`` (last dimension).

    When the sparsification cannot drop anything and ``consensus="none"``, this is exactly
    :func:`~modmerge.merging.linear.task_arithmetic` (same code path, bit-identical).

    >>> base = torch.tensor([1.0, 1.0])
    >>> generalized_task_arithmetic(base, [torch.tensor([2.0, 0.0])], sparsify="none",
    ...                             consensus="none", scaling=0.5)
    tensor([1.5000, 0.5000])
    """
    w = check_inputs(method, base, tensors, weights)
    if thresholds is not None and len(thresholds) != len(tensors):
        raise MergeMethodError(
            f"method '{method}' input 'thresholds' has {len(thresholds)} values for {len(tensors)} models"
        )
    outliers_first = rank == "row" and gamma > 0.0
    if consensus == "none" and _is_identity(sparsify, density, drop_rate, thresholds is not None, outliers_first):
        return task_arithmetic(base, tensors, scaling=scaling, weights=weights)

    mean = disjoint == "mean"
    if sparsify == "magnitude" and consensus == "sign":
        return _blocked_ties(base, tensors, w, density, thresholds, scaling, count=count, zero_sign=zero_sign,
                             mean=mean)
    base32 = base.to(torch.float32)
    consensus_sum = SignConsensus(base.shape, base.device) if consensus == "sign" else None
    acc = torch.zeros(base.shape, dtype=torch.float32, device=base.device)
    for i, tensor in enumerate(tensors):
        # torch.sub allocates a new tensor, so inputs (possibly read-only mmap views) stay intact.
        tau = torch.sub(tensor.to(torch.float32), base32)
        if callable(sparsify):
            tau = sparsify(tau, generator)
        elif sparsify == "magnitude":
            tau = magnitude_trim(tau, density, None if thresholds is None else float(thresholds[i]), count)
        elif sparsify == "dare":
            tau = dare_drop(tau, drop_rate, generator)
        elif sparsify == "breadcrumbs":
            tau = breadcrumbs_mask(tau, density, gamma, scope=rank, count=count)
        if consensus_sum is None:
            acc.add_(tau, alpha=w[i])
        else:
            consensus_sum.add(tau, w[i])
    if consensus_sum is not None:
        acc = consensus_sum.result(_zero_sign(zero_sign, consensus_sum.sign_balance()), mean=mean)
    return acc.mul_(scaling).add_(base32)


def _zero_sign(rule: str, balance: float) -> float:
    """+1 for "plus"; for "majority" the sign of the balance of elected signs (0 on a tie)."""
    if rule not in ZERO_SIGNS:
        raise MergeMethodError(f"zero_sign must be one of {list(ZERO_SIGNS)}, got {rule!r}")
    return 1.0 if rule == "plus" else float((balance > 0) - (balance < 0))


_BLOCK = 1 << 17


def _blocked_ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float,
    thresholds: Sequence[float] | None,
    scaling: float,
    *,
    count: str = "round",
    zero_sign: str = "plus",
    mean: bool = True,
) -> torch.Tensor:
    """TIES in two passes: per-model trim thresholds, then trim + consensus block by block.

    Same result as trimming whole task vectors and calling :class:`SignConsensus` on them, but
    the temporaries are one block long: peak memory is the output plus O(block), and the
    elementwise work runs in cache. A "majority" zero sign needs the whole tensor's balance of
    elected signs first: one more pass.
    """
    flat_base = base.reshape(-1).to(torch.float32)
    flats = [t.reshape(-1) for t in tensors]
    if thresholds is None:
        if density >= 1.0:
            thresholds = [0.0] * len(flats)
        else:
            thresholds = [magnitude_threshold(torch.sub(f, flat_base).abs_(), density, count) for f in flats]

    def consensus_of(block: slice) -> SignConsensus:
        consensus = SignConsensus(flat_base[block].shape, base.device)
        for flat, weight, threshold in zip(flats, weights, thresholds, strict=True):
            tau = torch.sub(flat[block], flat_base[block])
            if threshold > 0.0:
                tau.masked_fill_(tau.abs() < threshold, 0.0)
            consensus.add(tau, weight)
        return consensus

    blocks = [slice(start, start + _BLOCK) for start in range(0, flat_base.numel(), _BLOCK)]
    balance = sum(consensus_of(b).sign_balance() for b in blocks) if zero_sign == "majority" else 0.0
    sign = _zero_sign(zero_sign, balance)
    out = torch.empty_like(flat_base)
    for block in blocks:
        torch.add(flat_base[block], consensus_of(block).result(sign, mean=mean), alpha=scaling, out=out[block])
    return out.view(base.shape)


@merge_method(
    "ties",
    summary="TIES-Merging: trim small task-vector entries, elect signs, average agreeing entries.",
    citation=(
        "Yadav, Tam, Choshen, Raffel, Bansal, 'TIES-Merging: Resolving Interference When Merging "
        "Models', NeurIPS 2023, arXiv:2306.01708"
    ),
    limitations=(
        "trims per tensor by default (mergekit's convention); the paper trims the top-k over the "
        "whole model, which the executor reproduces by passing per-model 'thresholds' (scope 'model'); "
        "defaults count round(density * n) and elect +1 where the sum is 0, the TIES authors' code "
        "keeps int(density * n) + 1 (count 'int+1') and elects the majority sign (zero_sign 'majority')"
    ),
)
def ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    density: Annotated[
        float,
        Param(low=0.0, high=1.0, help="fraction of task-vector entries kept (top-k by magnitude)", search=(0.05, 0.5)),
    ] = 0.2,
    scaling: Annotated[
        float,
        Param(low=0.0, high=4.0, help="lambda applied to the merged task vector", search=(0.8, 1.8)),
    ] = 1.0,
    scope: Annotated[
        str,
        Param(
            choices=("tensor", "model"),
            help="trim the top-k per tensor (mergekit's way), or over every tensor merged together "
            "(the paper's whole-model trim; a recipe's executor computes the thresholds)",
        ),
    ] = "tensor",
    count: Annotated[
        str,
        Param(choices=COUNT_RULES, help="entries kept of n: 'round' round(density n) (default), 'int' "
              "int(density n) (mergekit), 'int+1' int(density n) + 1 (the TIES authors' kthvalue cut)"),
    ] = "round",
    zero_sign: Annotated[str, _ZERO_SIGN] = "plus",
    weights: Sequence[float] | None = None,
    thresholds: Sequence[float] | None = None,
) -> torch.Tensor:
    """TIES-Merging (Yadav et al. 2023, arXiv:2306.01708).

    1. trim: ``tau_hat_t = tau_t * [|tau_t| >= k-th largest |tau_t|]``, keeping ``density``
       (k = 20% by default, as in the paper);
    2. elect: ``gamma = sign(sum_t w_t tau_hat_t)``; where the sum is exactly 0, +1
       (``zero_sign="plus"``, mergekit) or the sign most entries of the tensor elect
       (``"majority"``, the authors' ``resolve_zero_signs``; 0 if that ties too);
    3. disjoint mean: ``tau_m = sum_{t in A} w_t tau_hat_t / sum_{t in A} w_t`` with
       ``A = {t : tau_hat_t != 0, sign(tau_hat_t) = gamma}``;
    4. ``theta = theta_pre + lambda * tau_m`` (lambda = 1 by default, the paper's default).

    Trimming is per tensor unless ``thresholds`` (one magnitude per model, e.g. from
    :func:`~modmerge.merging.sparsify.magnitude_threshold` over the whole model) are given.
    ``count`` decides k: ``round(density n)`` by default, ``int(density n)`` as mergekit, or
    ``int(density n) + 1`` as the authors' code (which keeps every entry at or above the
    ``(n - int(density n))``-th smallest magnitude).

    >>> ties(torch.zeros(3), [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 1.0, 0.1])],
    ...      density=1.0)
    tensor([ 2.0000, -2.0000,  0.3000])
    """
    if scope == "model" and thresholds is None:
        raise MergeMethodError(
            "method 'ties' with scope 'model' needs per-model 'thresholds' over the whole model: "
            "merge through a recipe (the executor computes them) or pass thresholds="
        )
    return generalized_task_arithmetic(
        base, tensors, sparsify="magnitude", consensus="sign", scaling=scaling, density=density,
        weights=weights, thresholds=thresholds, method="ties", count=count, zero_sign=zero_sign,
    )


@merge_method(
    "dare",
    summary="DARE: randomly drop task-vector entries and rescale, then sum (or TIES-merge).",
    citation=(
        "Yu, Yu, Yu, Huang, Li, 'Language Models are Super Mario: Absorbing Abilities from "
        "Homologous Models as a Free Lunch', ICML 2024, arXiv:2311.03099"
    ),
    randomized=True,
)
def dare(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    drop_rate: Annotated[
        float,
        Param(low=0.0, high=0.99, help="p, probability of dropping each task-vector entry", search=(0.1, 0.9)),
    ] = 0.9,
    consensus: Annotated[str, Param(choices=_CONSENSUS_CHOICES, help=_CONSENSUS_HELP)] = "none",
    scaling: Annotated[
        float,
        Param(low=0.0, high=4.0, help="lambda; about 0.3 for a sum, about 1 for 'ties'", search=(0.1, 1.5)),
    ] = 0.3,
    weights: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE (Yu et al. 2024, arXiv:2311.03099): drop and rescale, then merge.

    ``tau_hat_t = m_t * tau_t / (1 - p)`` with ``m_t ~ Bernoulli(1 - p)`` per entry (drawn from
    ``generator``, model by model: the same generator state gives the same merge). Then
    ``consensus="none"``: ``theta = theta_pre + lambda * sum_t w_t tau_hat_t`` (DARE + task
    arithmetic); ``"ties"``: TIES sign election and disjoint mean of the ``tau_hat_t`` (default
    among the sign consensuses); ``"ties_sum"``: their disjoint sum, what mergekit's ``dare_ties``
    computes by default (``normalize: false``).
    p = 0.9 is the rate the paper shows to be harmless for most SFT deltas (it goes up to 0.99
    for large models); lambda defaults to task arithmetic's 0.3 (use about 1.0 with ``"ties"``).
    With p = 0 and ``"none"`` this equals ``task_arithmetic`` exactly.

    >>> g = torch.Generator().manual_seed(0)
    >>> dare(torch.zeros(2), [torch.ones(2)], drop_rate=0.0, scaling=1.0, generator=g)
    tensor([1., 1.])
    """
    kind, disjoint = _CONSENSUS[consensus]
    return generalized_task_arithmetic(
        base, tensors, sparsify="dare", consensus=kind, disjoint=disjoint,  # type: ignore[arg-type]
        scaling=scaling, drop_rate=drop_rate, weights=weights, generator=generator, method="dare",
    )


@merge_method(
    "breadcrumbs",
    summary="Model Breadcrumbs: mask task-vector outliers and small entries per tensor, then sum.",
    citation=(
        "Davari, Belilovsky, 'Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse "
        "Masks', ECCV 2024, arXiv:2312.06795; authors' code rezazzr/breadcrumbs (TaskVectorMiddleKeep)"
    ),
    limitations=(
        "ranks each tensor whole and rounds counts by default; the authors' code ranks each row "
        "(last dimension) and truncates counts: rank 'row' with count 'int'"
    ),
)
def breadcrumbs(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    density: Annotated[
        float,
        Param(low=0.0, high=1.0, help="fraction of task-vector entries kept per tensor", search=(0.05, 0.3)),
    ] = 0.1,
    gamma: Annotated[
        float,
        Param(low=0.0, high=0.5, help="fraction of largest-magnitude entries (outliers) removed", search=(0.0, 0.05)),
    ] = 0.01,
    consensus: Annotated[str, Param(choices=_CONSENSUS_CHOICES, help=_CONSENSUS_HELP)] = "none",
    scaling: Annotated[
        float,
        Param(low=0.0, high=4.0, help="lambda; about 0.3 for a sum, about 1 for 'ties'", search=(0.1, 1.5)),
    ] = 0.3,
    rank: Annotated[
        str,
        Param(choices=("tensor", "row"), help="rank magnitudes over the whole tensor (default) or per row "
              "of each matrix, along the last dimension (the authors' code)"),
    ] = "tensor",
    count: Annotated[
        str, Param(choices=_BC_COUNTS, help="entries of n: 'round' round(f n) (default), 'int' int(f n) (authors' code)")
    ] = "round",
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2024, arXiv:2312.06795).

    Per tensor by default (the paper masks per layer), the top ``gamma`` fraction of ``|tau_t|``
    (outliers) and the smallest entries are masked so that ``density`` remain:
    ``tau_hat_t = m_t * tau_t``; ``rank="row"`` ranks each row along the last dimension instead,
    removing its outliers first, as the authors' code does (with ``count="int"``, their
    truncating ``int(f n)``). Then ``theta = theta_pre + lambda * sum_t w_t tau_hat_t``
    (``consensus="none"``) or the TIES sign election + disjoint mean (``"ties"``) or disjoint sum
    (``"ties_sum"``, mergekit's ``breadcrumbs_ties`` default). The paper tunes both fractions on
    validation data; the defaults (keep 10%, drop the top 1% as outliers) are a starting point,
    not the paper's numbers. lambda defaults as in task arithmetic.

    >>> base = torch.zeros(4)
    >>> breadcrumbs(base, [torch.tensor([4.0, 1.0, 2.0, 0.5])], density=0.5, gamma=0.25, scaling=1.0)
    tensor([0., 1., 2., 0.])
    """
    kind, disjoint = _CONSENSUS[consensus]
    return generalized_task_arithmetic(
        base, tensors, sparsify="breadcrumbs", consensus=kind, disjoint=disjoint,  # type: ignore[arg-type]
        scaling=scaling, density=density, gamma=gamma, weights=weights, method="breadcrumbs", rank=rank,
        count=count,
    )
