"""Small pure steps that sparsify task vectors and resolve their conflicts.

Each step takes task vectors (``tau = theta_t - theta_pre``, float32) and returns new tensors; none
modifies its input. They are the building blocks of
:func:`modmerge.merging.generalized.generalized_task_arithmetic` (TIES, DARE, Breadcrumbs) and of
PCB's drop step, and each is tested on its own.

Counting convention: keeping a fraction ``f`` of ``n`` entries keeps ``round(f * n)`` entries
(halves round up), at least one when ``f > 0``.

Example::

    >>> import torch
    >>> tau = torch.tensor([0.1, -0.5, 0.3, -0.2])
    >>> magnitude_trim(tau, density=0.5)
    tensor([ 0.0000, -0.5000,  0.3000,  0.0000])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "breadcrumbs_mask",
    "dare_drop",
    "disjoint_mean",
    "elect_sign",
    "kept_count",
    "magnitude_threshold",
    "magnitude_trim",
]


def kept_count(fraction: float, n: int) -> int:
    """How many of ``n`` entries a fraction keeps: ``round(fraction * n)``, halves up, >= 1 if > 0.

    A tiny tolerance absorbs binary rounding (``0.3 * 10`` is ``3.0000000000000004``).

    >>> kept_count(0.2, 5), kept_count(0.5, 5), kept_count(0.01, 8), kept_count(0.0, 8)
    (1, 3, 1, 0)
    """
    if fraction <= 0.0 or n == 0:
        return 0
    if fraction >= 1.0:
        return n
    return max(1, min(n, math.floor(fraction * n + 0.5 + 1e-9)))


def magnitude_threshold(values_abs: torch.Tensor, density: float) -> float:
    """The k-th largest value of ``values_abs``, with ``k = kept_count(density, numel)``.

    Keeping the entries whose magnitude is ``>=`` this threshold keeps the top ``density``
    fraction (plus any entries tied with the k-th). ``density >= 1`` gives ``0.0`` (keep all);
    ``density <= 0`` gives ``inf`` (keep none). The executor uses this over a whole model's
    concatenated magnitudes for TIES' model-scope trimming (the ``thresholds`` input).

    >>> magnitude_threshold(torch.tensor([3.0, 1.0, 2.0, 5.0]), 0.5)
    3.0
    """
    n = values_abs.numel()
    k = kept_count(density, n)
    if k == 0:
        return math.inf
    if k == n:
        return 0.0
    flat = values_abs.detach().reshape(-1).float()
    # kthvalue counts from the smallest: the k-th largest is the (n - k + 1)-th smallest.
    return float(torch.kthvalue(flat, n - k + 1).values)


def magnitude_trim(tau: torch.Tensor, density: float, threshold: float | None = None) -> torch.Tensor:
    """Keep the top-``density`` fraction of ``tau`` by magnitude, zero the rest (TIES "trim").

    Ties are handled deterministically: every entry whose magnitude equals the k-th largest is
    kept, so a few more than ``k`` entries may survive. When ``threshold`` is given (a
    model-scope threshold from :func:`magnitude_threshold`), it is used instead and ``density``
    is ignored.

    >>> magnitude_trim(torch.tensor([1.0, -2.0, 2.0, 0.5]), density=0.25)
    tensor([ 0., -2.,  2.,  0.])
    """
    if threshold is None:
        if density >= 1.0:
            return tau.clone()
        threshold = magnitude_threshold(tau.abs(), density)
    return torch.where(tau.abs() >= threshold, tau, torch.zeros_like(tau))


def dare_drop(tau: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """DARE drop-and-rescale: zero each entry with probability ``p``, scale survivors by 1/(1-p).

    The keep mask is ``u >= p`` for ``u ~ Uniform[0, 1)`` drawn with ``generator`` (torch's
    global generator when ``None``), so the same generator state gives the same result.
    ``p = 0`` returns an exact copy; ``p >= 1`` drops everything.

    >>> g = torch.Generator().manual_seed(0)
    >>> out = dare_drop(torch.ones(1000), 0.9, g)
    >>> sorted(set(out.tolist()))
    [0.0, 10.0]
    """
    if p <= 0.0:
        return tau.clone()
    if p >= 1.0:
        return torch.zeros_like(tau)
    device = generator.device if generator is not None else tau.device
    uniform = torch.rand(tau.shape, generator=generator, device=device).to(tau.device)
    kept = torch.where(uniform >= p, tau, torch.zeros_like(tau))
    return kept.mul_(1.0 / (1.0 - p))


def breadcrumbs_mask(tau: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs: drop the largest-``gamma`` fraction and the smallest entries of ``tau``.

    Of ``n`` entries, ``kept_count(gamma, n)`` largest-magnitude outliers and then the smallest
    ones are zeroed so that ``kept_count(density, n)`` remain. When the two cannot both hold,
    fewer outliers are removed (the density wins). Ranking uses a stable sort, so ties are
    broken by position. Returns the masked task vector.

    >>> tau = torch.tensor([0.1, -0.9, 0.5, -0.3, 0.7, 0.2, -0.05, 0.6, 0.4, -0.8])
    >>> breadcrumbs_mask(tau, density=0.5, gamma=0.1)
    tensor([ 0.0000,  0.0000,  0.5000,  0.0000,  0.7000,  0.0000,  0.0000,  0.6000,
             0.4000, -0.8000])
    """
    n = tau.numel()
    n_keep = kept_count(density, n)
    if n_keep == n:
        return tau.clone()
    n_top = min(math.floor(gamma * n + 0.5 + 1e-9) if gamma > 0 else 0, n - n_keep)
    order = torch.sort(tau.abs().reshape(-1), stable=True).indices
    keep = torch.zeros(n, dtype=torch.bool, device=tau.device)
    keep[order[n - n_top - n_keep : n - n_top]] = True
    return torch.where(keep.view(tau.shape), tau, torch.zeros_like(tau))


def elect_sign(taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """TIES sign election: the sign of the sum of the (trimmed) task vectors, as +1.0 / -1.0.

    The sign of the sum is the sign whose entries carry the larger total magnitude. Where the
    sum is exactly zero, +1 is elected (only matters when the values cancel exactly).

    >>> elect_sign([torch.tensor([1.0, -2.0, 0.0]), torch.tensor([-3.0, 1.0, 0.0])])
    tensor([-1., -1.,  1.])
    """
    total = taus[0].float().clone()
    for tau in taus[1:]:
        total.add_(tau)
    return torch.where(total >= 0, 1.0, -1.0).to(total.dtype)


def disjoint_mean(
    taus: Sequence[torch.Tensor], sign: torch.Tensor, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """TIES disjoint merge: per entry, the (weighted) mean over models that agree with ``sign``.

    A model takes part in an entry when its value there is non-zero and has the elected sign:
    ``sum_t w_t tau_t [agree] / sum_t w_t [agree]``; entries where no model agrees are 0.

    >>> taus = [torch.tensor([1.0, -2.0, 0.0]), torch.tensor([-3.0, 1.0, 0.0]),
    ...         torch.tensor([2.0, -4.0, 5.0])]
    >>> disjoint_mean(taus, torch.tensor([1.0, -1.0, 1.0]))
    tensor([ 1.5000, -3.0000,  5.0000])
    """
    total = torch.zeros_like(sign, dtype=torch.float32)
    count = torch.zeros_like(total)
    for i, tau in enumerate(taus):
        w = 1.0 if weights is None else float(weights[i])
        agree = ((tau * sign) > 0).to(total.dtype)
        total.add_(tau * agree, alpha=w)
        count.add_(agree, alpha=w)
    return torch.where(count != 0, total / torch.where(count != 0, count, 1.0), 0.0)
