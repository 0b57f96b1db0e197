"""DELLA: drop task-vector entries with probabilities ranked by magnitude, rescale, then merge.

Deep, Bhardwaj, Poria, 'DELLA-Merging: Reducing Interference in Model Merging through
Magnitude-Based Sampling' (arXiv:2406.11617), as mergekit's ``sparsify.della_magprune`` and its
``della`` / ``della_linear`` settings of generalized task arithmetic compute it. In each row of a
task vector (dimension 1; a 1-D tensor is one row), the entry of rank ``r`` (0 = smallest
``|tau|``) of ``n`` is kept with probability

    q_r = (density - epsilon) + 2 epsilon * r / (n - 1)

so probabilities run from ``density - epsilon`` to ``density + epsilon``. The survivors are
rescaled: by default so the tensor's L1 norm is unchanged (mergekit), or each by ``1 / q_r`` (the
paper and the authors' first code). Then :func:`generalized_task_arithmetic` merges: ``della``
with the TIES sign election and disjoint mean, ``della_linear`` with a weighted sum.

Example::

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> della(torch.zeros(3), [torch.tensor([1.0, -2.0, 3.0])], density=1.0, generator=g)
    tensor([ 1., -2.,  3.])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.generalized import Consensus, generalized_task_arithmetic
from modmerge.merging.registry import Param, merge_method

__all__ = ["della", "della_linear", "della_magprune", "keep_probabilities", "match_l1"]

RESCALE_CHOICES = ("l1", "probability")
RESCALE_BY_HELP = (
    "'l1': scale the kept entries so the tensor's L1 norm is unchanged (mergekit); "
    "'probability': divide each kept entry by its keep probability (the paper)"
)


def match_l1(tau: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``kept`` scaled so its L1 norm equals ``tau``'s (unchanged if either is below 1e-7).

    >>> match_l1(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 3.0]))
    tensor([0., 4.])
    """
    before, after = float(tau.abs().sum()), float(kept.abs().sum())
    if before < 1e-7 or after < 1e-7:
        return kept
    return kept * (before / after)


def keep_probabilities(tau: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's keep probability of every entry, from its magnitude rank along dimension 1.

    Ties are ranked by position (stable sort). A row of one entry gets ``density``.

    >>> keep_probabilities(torch.tensor([[0.1, -3.0, 2.0]]), 0.5, 0.2)
    tensor([[0.3000, 0.7000, 0.5000]])
    """
    rows = tau.reshape(1, -1) if tau.dim() < 2 else tau
    n = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    ranks = torch.argsort(order, dim=1, stable=True).to(torch.float32)
    position = ranks / (n - 1) if n > 1 else torch.full_like(ranks, 0.5)
    return ((density - epsilon) + 2 * epsilon * position).reshape(tau.shape)


def della_magprune(
    tau: torch.Tensor,
    density: float,
    epsilon: float,
    generator: torch.Generator | None = None,
    *,
    rescale: bool = True,
    rescale_by: str = "l1",
) -> torch.Tensor:
    """DELLA's MAGPRUNE on one task vector: keep entry ``i`` iff ``u_i < q_i``, then rescale.

    ``u ~ Uniform[0, 1)`` is drawn with ``generator`` (one draw per entry), ``q`` from
    :func:`keep_probabilities`. ``density >= 1`` returns a copy, ``density <= 0`` zeros; otherwise
    ``density -/+ epsilon`` must lie inside (0, 1), as mergekit requires.

    >>> g = torch.Generator().manual_seed(0)
    >>> della_magprune(torch.tensor([1.0, -2.0]), 1.0, 0.1, g)
    tensor([ 1., -2.])
    """
    if density >= 1.0:
        return tau.clone()
    if density <= 0.0:
        return torch.zeros_like(tau)
    if density - epsilon <= 0.0 or density + epsilon >= 1.0:
        raise MergeMethodError(
            f"DELLA needs density - epsilon and density + epsilon inside (0, 1), got density {density}, epsilon {epsilon}"
        )
    probability = keep_probabilities(tau, density, epsilon)
    device = generator.device if generator is not None else tau.device
    uniform = torch.rand(tau.shape, generator=generator, device=device).to(tau.device)
    kept = torch.where(uniform < probability, tau, torch.zeros_like(tau))
    if not rescale:
        return kept
    return kept / probability if rescale_by == "probability" else match_l1(tau, kept)


def _della(
    base: torch.Tensor, tensors: Sequence[torch.Tensor], consensus: Consensus, density: float, epsilon: float,
    scaling: float, rescale: bool, rescale_by: str, weights: Sequence[float] | None,
    generator: torch.Generator | None, method: str,
) -> torch.Tensor:
    def step(tau: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        return della_magprune(tau, density, epsilon, g, rescale=rescale, rescale_by=rescale_by)

    return generalized_task_arithmetic(
        base, tensors, sparsify=step, consensus=consensus, scaling=scaling,
        weights=weights, generator=generator, method=method,
    )


_CITATION = (
    "Deep, Bhardwaj, Poria, 'DELLA-Merging: Reducing Interference in Model Merging through "
    "Magnitude-Based Sampling', arXiv:2406.11617; as in mergekit sparsify.della_magprune"
)
_DENSITY = Param(low=0.0, high=1.0, help="mean keep probability of each task-vector entry", search=(0.2, 0.8))
_EPSILON = Param(low=0.0, high=0.5, help="half-width of the keep probabilities around density, by rank")
_LAMBDA = Param(low=0.0, high=4.0, help="scale of the merged task vector", search=(0.1, 1.5))
_RESCALE = Param(help="rescale the kept entries (see rescale_by)")
_RESCALE_BY = Param(choices=RESCALE_CHOICES, help=RESCALE_BY_HELP)


@merge_method(
    "della",
    summary="DELLA: magnitude-ranked random drop with rescale, then TIES sign election + disjoint mean.",
    citation=_CITATION,
    randomized=True,
)
def della(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    density: Annotated[float, _DENSITY] = 1.0,
    epsilon: Annotated[float, _EPSILON] = 0.15,
    lambda_: Annotated[float, _LAMBDA] = 1.0,
    rescale: Annotated[bool, _RESCALE] = True,
    rescale_by: Annotated[str, _RESCALE_BY] = "l1",
    weights: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DELLA (mergekit's ``della``): MAGPRUNE each task vector, elect signs, disjoint mean.

    ``theta = theta_0 + lambda * sum_{t in A} w_t tau_hat_t / sum_{t in A} w_t`` over the models
    ``A`` whose pruned entry is non-zero with the elected sign of ``sum_t w_t tau_hat_t``.
    Defaults are mergekit's: ``density = 1`` keeps everything, so set it (the paper's best
    settings keep 30-70%).

    >>> g = torch.Generator().manual_seed(0)
    >>> della(torch.zeros(2), [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])], generator=g)
    tensor([ 2., -2.])
    """
    return _della(base, tensors, "sign", density, epsilon, lambda_, rescale, rescale_by, weights, generator, "della")


@merge_method(
    "della_linear",
    summary="DELLA (linear): magnitude-ranked random drop with rescale, then a weighted sum.",
    citation=_CITATION,
    randomized=True,
)
def della_linear(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    density: Annotated[float, _DENSITY] = 1.0,
    epsilon: Annotated[float, _EPSILON] = 0.15,
    lambda_: Annotated[float, _LAMBDA] = 1.0,
    rescale: Annotated[bool, _RESCALE] = True,
    rescale_by: Annotated[str, _RESCALE_BY] = "l1",
    weights: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DELLA without consensus (mergekit's ``della_linear``): ``theta_0 + lambda sum_t w_t tau_hat_t``.

    >>> g = torch.Generator().manual_seed(0)
    >>> della_linear(torch.zeros(2), [torch.tensor([1.0, -1.0]), torch.tensor([3.0, 1.0])],
    ...              lambda_=0.5, generator=g)
    tensor([2., 0.])
    """
    return _della(
        base, tensors, "none", density, epsilon, lambda_, rescale, rescale_by, weights, generator, "della_linear"
    )
