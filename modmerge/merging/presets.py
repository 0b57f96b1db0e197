"""mergekit's names for settings of generalized task arithmetic: dare_linear, dare_ties, breadcrumbs_ties.

Each is :func:`~modmerge.merging.generalized.generalized_task_arithmetic` with one sparsification
and one consensus, under mergekit's parameter names and defaults (``density``, ``gamma``,
``lambda``, ``rescale``; mergekit's ``merge_methods/registry.py``). ``density`` is the fraction
kept (DARE's ``1 - p``). mergekit's ``rescale`` matches the L1 norm of each task vector after
dropping; ``rescale_by: probability`` divides by the keep probability instead (the DARE paper's
rule, and what ``dare`` does), which reproduces ``dare`` exactly.

Example::

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> dare_linear(torch.zeros(2), [torch.ones(2), torch.ones(2)], lambda_=0.5, generator=g)
    tensor([1., 1.])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch

from modmerge.merging.della import RESCALE_BY_HELP, RESCALE_CHOICES, match_l1
from modmerge.merging.generalized import Consensus, generalized_task_arithmetic
from modmerge.merging.registry import Param, merge_method
from modmerge.merging.sparsify import breadcrumbs_mask, dare_drop

__all__ = ["breadcrumbs_ties", "dare_linear", "dare_ties"]

_DARE_CITATION = (
    "Yu, Yu, Yu, Huang, Li, 'Language Models are Super Mario: Absorbing Abilities from Homologous "
    "Models as a Free Lunch', ICML 2024, arXiv:2311.03099; mergekit merge_methods/registry.py"
)
_DISJOINT_MEAN = (
    "normalize defaults to true, the disjoint mean, while mergekit's default for this method "
    "is normalize: false, the disjoint sum"
)
_NORMALIZE = Param(
    help="divide the agreeing task vectors' sum by their weights (disjoint mean, the default here); "
    "false: the disjoint sum, mergekit's default for this method"
)
_DENSITY = Param(low=0.0, high=1.0, help="fraction of task-vector entries kept (1 - drop rate)", search=(0.1, 0.9))
_LAMBDA = Param(low=0.0, high=4.0, help="scale of the merged task vector", search=(0.1, 1.5))


def _dare(
    base: torch.Tensor, tensors: Sequence[torch.Tensor], consensus: Consensus, density: float,
    scaling: float, rescale: bool, rescale_by: str, weights: Sequence[float] | None,
    generator: torch.Generator | None, method: str, normalize: bool = True,
) -> torch.Tensor:
    p = 1.0 - density
    disjoint = "mean" if normalize else "sum"
    if rescale and rescale_by == "probability":
        return generalized_task_arithmetic(
            base, tensors, sparsify="dare", consensus=consensus, scaling=scaling, drop_rate=p,
            weights=weights, generator=generator, method=method, disjoint=disjoint,
        )

    def step(tau: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        dropped = dare_drop(tau, p, g)  # survivors already divided by 1 - p
        if rescale:
            return match_l1(tau, dropped)
        return dropped if p <= 0.0 else dropped.mul_(1.0 - p)

    return generalized_task_arithmetic(
        base, tensors, sparsify=step, consensus=consensus, scaling=scaling,
        weights=weights, generator=generator, method=method, disjoint=disjoint,
    )


@merge_method(
    "dare_linear",
    summary="DARE (mergekit's dare_linear): random drop, rescale, weighted sum of task vectors.",
    citation=_DARE_CITATION,
    randomized=True,
    limitations="one density for all models (mergekit allows one per model)",
)
def dare_linear(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    density: Annotated[float, _DENSITY] = 1.0,
    lambda_: Annotated[float, _LAMBDA] = 1.0,
    rescale: Annotated[bool, Param(help="rescale the kept entries (see rescale_by)")] = True,
    rescale_by: Annotated[str, Param(choices=RESCALE_CHOICES, help=RESCALE_BY_HELP)] = "l1",
    weights: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``theta_0 + lambda * sum_t w_t rescale(m_t * tau_t)``, ``m_t ~ Bernoulli(density)``.

    The masks are :func:`~modmerge.merging.sparsify.dare_drop`'s (same generator, same masks as
    ``dare``). mergekit's defaults: ``density = 1`` drops nothing, so set it.

    >>> g = torch.Generator().manual_seed(0)
    >>> dare_linear(torch.zeros(2), [torch.tensor([1.0, 2.0])], density=1.0, generator=g)
    tensor([1., 2.])
    """
    return _dare(base, tensors, "none", density, lambda_, rescale, rescale_by, weights, generator, "dare_linear")


@merge_method(
    "dare_ties",
    summary="DARE (mergekit's dare_ties): random drop, rescale, TIES sign election + disjoint mean.",
    citation=_DARE_CITATION,
    randomized=True,
    limitations=f"{_DISJOINT_MEAN}; one density for all models (mergekit allows one per model)",
)
def dare_ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    density: Annotated[float, _DENSITY] = 1.0,
    lambda_: Annotated[float, _LAMBDA] = 1.0,
    rescale: Annotated[bool, Param(help="rescale the kept entries (see rescale_by)")] = True,
    rescale_by: Annotated[str, Param(choices=RESCALE_CHOICES, help=RESCALE_BY_HELP)] = "l1",
    normalize: Annotated[bool, _NORMALIZE] = True,
    weights: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE's drop and rescale, then the TIES sign election and disjoint mean (``normalize``,
    default) or disjoint sum (``normalize=False``, mergekit's default), times ``lambda``.

    >>> g = torch.Generator().manual_seed(0)
    >>> dare_ties(torch.zeros(2), [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])], generator=g)
    tensor([ 2., -2.])
    """
    return _dare(base, tensors, "sign", density, lambda_, rescale, rescale_by, weights, generator, "dare_ties",
                 normalize)


@merge_method(
    "breadcrumbs_ties",
    summary="Model Breadcrumbs (mergekit's breadcrumbs_ties): outlier + small-entry mask, TIES consensus.",
    citation=(
        "Davari, Belilovsky, 'Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse "
        "Masks', ECCV 2024, arXiv:2312.06795; mergekit merge_methods/registry.py"
    ),
    limitations=(
        f"{_DISJOINT_MEAN}; counts round to the nearest entry where mergekit truncates; one "
        "density and gamma for all models"
    ),
)
def breadcrumbs_ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    density: Annotated[float, Param(low=0.0, high=1.0, help="fraction of task-vector entries kept", search=(0.05, 0.9))] = 1.0,
    gamma: Annotated[
        float, Param(low=0.0, high=0.5, help="fraction of largest-magnitude entries (outliers) removed", search=(0.0, 0.05))
    ] = 0.01,
    lambda_: Annotated[float, _LAMBDA] = 1.0,
    rescale: Annotated[bool, Param(help="scale the kept entries so each task vector keeps its L1 norm")] = False,
    normalize: Annotated[bool, _NORMALIZE] = True,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Breadcrumbs masks (:func:`~modmerge.merging.sparsify.breadcrumbs_mask`), then TIES consensus:
    the disjoint mean (``normalize``, default) or sum (``normalize=False``, mergekit's default).

    mergekit's ``density = 1`` keeps every entry, outliers included.

    >>> breadcrumbs_ties(torch.zeros(4), [torch.tensor([4.0, 1.0, 2.0, 0.5])], density=0.5, gamma=0.25)
    tensor([0., 1., 2., 0.])
    """
    disjoint = "mean" if normalize else "sum"
    if not rescale:
        return generalized_task_arithmetic(
            base, tensors, sparsify="breadcrumbs", consensus="sign", scaling=lambda_, density=density,
            gamma=gamma, weights=weights, method="breadcrumbs_ties", disjoint=disjoint,
        )

    def step(tau: torch.Tensor, _: torch.Generator | None) -> torch.Tensor:
        return match_l1(tau, breadcrumbs_mask(tau, density, gamma))

    return generalized_task_arithmetic(
        base, tensors, sparsify=step, consensus="sign", scaling=lambda_, weights=weights, method="breadcrumbs_ties",
        disjoint=disjoint,
    )
