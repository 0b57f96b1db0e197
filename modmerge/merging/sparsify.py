"""Small pure steps that sparsify task vectors and resolve their conflicts.

Each step takes task vectors (``tau = theta_t - theta_pre``, float32) and returns new tensors; none
modifies its input. They are the building blocks of
:func:`modmerge.merging.generalized.generalized_task_arithmetic` (TIES, DARE, Breadcrumbs) and of
PCB's drop step, and each is tested on its own.

Counting convention (:func:`kept_count`): keeping a fraction ``f`` of ``n`` entries keeps
``round(f * n)`` entries (halves round up), at least one when ``f > 0``; the reference codes'
rules are offered too: ``"int"`` keeps ``int(f * n)`` (mergekit, the Breadcrumbs authors'
``topk``), ``"int+1"`` keeps ``int(f * n) + 1`` (the TIES authors' ``kthvalue`` threshold).

Example::

    >>> import torch
    >>> tau = torch.tensor([0.1, -0.5, 0.3, -0.2])
    >>> magnitude_trim(tau, density=0.5)
    tensor([ 0.0000, -0.5000,  0.3000,  0.0000])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

COUNT_RULES = ("round", "int", "int+1")

__all__ = [
    "COUNT_RULES",
    "breadcrumbs_mask",
    "dare_drop",
    "disjoint_mean",
    "elect_sign",
    "kept_count",
    "magnitude_threshold",
    "magnitude_trim",
]


def kept_count(fraction: float, n: int, rule: str = "round") -> int:
    """How many of ``n`` entries a fraction keeps under a counting ``rule``.

    ``"round"`` (default): ``round(fraction * n)``, halves up, >= 1 if > 0 (a tiny tolerance
    absorbs binary rounding: ``0.3 * 10`` is ``3.0000000000000004``); ``"int"``: Python's
    ``int(fraction * n)``, as mergekit and the Breadcrumbs authors count (may be 0); ``"int+1"``:
    ``int(fraction * n) + 1``, what the TIES authors' code keeps (every entry at or above the
    ``(n - int(fraction * n))``-th smallest). Fractions <= 0 keep nothing and >= 1 everything.

    >>> kept_count(0.2, 5), kept_count(0.5, 5), kept_count(0.01, 8), kept_count(0.0, 8)
    (1, 3, 1, 0)
    >>> kept_count(0.5, 5, "int"), kept_count(0.01, 8, "int"), kept_count(0.2, 10, "int+1")
    (2, 0, 3)
    """
    if rule not in COUNT_RULES:
        raise ValueError(f"counting rule must be one of {list(COUNT_RULES)}, got {rule!r}")
    if fraction <= 0.0 or n == 0:
        return 0
    if fraction >= 1.0:
        return n
    if rule == "int":
        return int(fraction * n)
    if rule == "int+1":
        return min(n, int(fraction * n) + 1)
    return max(1, min(n, math.floor(fraction * n + 0.5 + 1e-9)))


def magnitude_threshold(values_abs: torch.Tensor, density: float, count: str = "round") -> float:
    """The k-th largest value of ``values_abs``, with ``k = kept_count(density, numel, count)``.

    Keeping the entries whose magnitude is ``>=`` this threshold keeps the top ``density``
    fraction (plus any entries tied with the k-th). ``density >= 1`` gives ``0.0`` (keep all);
    ``density <= 0`` gives ``inf`` (keep none). The executor uses this over a whole model's
    concatenated magnitudes for TIES' model-scope trimming (the ``thresholds`` input).

    >>> magnitude_threshold(torch.tensor([3.0, 1.0, 2.0, 5.0]), 0.5)
    3.0
    """
    n = values_abs.numel()
    k = kept_count(density, n, count)
    if k == 0:
        return math.inf
    if k == n:
        return 0.0
    flat = values_abs.detach().reshape(-1).float()
    if n <= _EXACT_SELECT_BELOW:
        # kthvalue counts from the smallest: the k-th largest is the (n - k + 1)-th smallest.
        return float(torch.kthvalue(flat, n - k + 1).values)
    return kth_largest(lambda: (flat,), k, n)


_EXACT_SELECT_BELOW = 1 << 18
_SAMPLE_SIZE = 1 << 14


def kth_largest(chunks: Callable[[], Iterable[torch.Tensor]], k: int, n: int) -> float:
    """The exact k-th largest of ``n`` values that ``chunks()`` yields as 1-D float tensors.

    ``chunks`` is called twice (or three times in the rare fallback), so the values never need
    to sit in memory together: this is how TIES' whole-model trim runs over a model tensor by
    tensor. A strided sample brackets the answer between two sample quantiles; a second pass
    counts the values above the bracket and keeps the few inside it, where an exact
    ``kthvalue`` finds the answer. The sample decides only speed, never the result: when the
    bracket misses, everything is concatenated and sorted. On one large tensor this is several
    times faster than ``torch.kthvalue``.

    >>> kth_largest(lambda: (torch.tensor([3.0, 1.0]), torch.tensor([2.0, 5.0])), k=2, n=4)
    3.0
    """
    stride = max(1, n // _SAMPLE_SIZE)
    sample = torch.cat([c[::stride] for c in chunks()]).sort().values
    s = sample.numel()
    q = k / n
    margin = 4.0 * math.sqrt(q * (1.0 - q) / s) + 2.0 / s
    lo_pos = math.floor((1.0 - q - margin) * (s - 1))
    hi_pos = math.ceil((1.0 - q + margin) * (s - 1))
    lo = float(sample[lo_pos]) if lo_pos > 0 else -math.inf
    hi = float(sample[hi_pos]) if hi_pos < s - 1 else math.inf
    above, inside = 0, []
    for c in chunks():
        if hi < math.inf:
            above += int(torch.count_nonzero(c > hi))
        inside.append(c[(c >= lo) & (c <= hi)])
    candidates = torch.cat(inside)
    rank = k - above  # the answer is the rank-th largest value inside the bracket
    if above >= k or rank > candidates.numel():
        candidates, rank = torch.cat(list(chunks())), k
    return float(torch.kthvalue(candidates, candidates.numel() - rank + 1).values)


def magnitude_trim(
    tau: torch.Tensor, density: float, threshold: float | None = None, count: str = "round"
) -> torch.Tensor:
    """Keep the top-``density`` fraction of ``tau`` by magnitude, zero the rest (TIES "trim").

    Ties are handled deterministically: every entry whose magnitude equals the k-th largest is
    kept, so a few more than ``k`` entries may survive. When ``threshold`` is given (a
    model-scope threshold from :func:`magnitude_threshold`), it is used instead and ``density``
    is ignored. ``count`` is the counting rule of :func:`kept_count`.

    >>> magnitude_trim(torch.tensor([1.0, -2.0, 2.0, 0.5]), density=0.25)
    tensor([ 0., -2.,  2.,  0.])
    """
    if threshold is None and density >= 1.0:
        return tau.clone()
    magnitudes = tau.abs()
    if threshold is None:
        threshold = magnitude_threshold(magnitudes, density, count)
    return tau.masked_fill(magnitudes < threshold, 0.0)


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


def breadcrumbs_mask(
    tau: torch.Tensor, density: float, gamma: float, *, scope: str = "tensor", count: str = "round"
) -> torch.Tensor:
    """Model Breadcrumbs: drop the largest-``gamma`` fraction and the smallest entries of ``tau``.

    ``scope="tensor"`` ranks the whole tensor: of ``n`` entries, ``kept_count(gamma, n)``
    largest-magnitude outliers and then the smallest ones are zeroed so that
    ``kept_count(density, n)`` remain; when the two cannot both hold, fewer outliers are removed
    (the density wins). ``scope="row"`` is the authors' code (``TaskVectorMiddleKeep``): each row
    along the last dimension (a 1-D tensor is one row) is ranked on its own, its top
    ``gamma`` fraction removed first and the top ``density`` fraction of the row kept among the
    rest. ``count`` is the counting rule (:func:`kept_count`; the authors' code uses ``"int"``).
    Ranking uses a stable sort, so ties are broken by position. Returns the masked task vector.

    >>> tau = torch.tensor([0.1, -0.9, 0.5, -0.3, 0.7, 0.2, -0.05, 0.6, 0.4, -0.8])
    >>> breadcrumbs_mask(tau, density=0.5, gamma=0.1)
    tensor([ 0.0000,  0.0000,  0.5000,  0.0000,  0.7000,  0.0000,  0.0000,  0.6000,
             0.4000, -0.8000])
    >>> breadcrumbs_mask(torch.tensor([[4.0, 1.0, 2.0, 3.0], [1.0, 8.0, 5.0, 2.0]]), 0.5, 0.25, scope="row")
    tensor([[0., 0., 2., 3.],
            [0., 0., 5., 2.]])
    """
    if scope == "row":
        return _row_breadcrumbs(tau, density, gamma, count)
    n = tau.numel()
    n_keep = kept_count(density, n, count)
    if n_keep == n:
        return tau.clone()
    n_top = min(kept_count(gamma, n, count) if count != "round" else _outliers(gamma, n), n - n_keep)
    order = torch.sort(tau.abs().reshape(-1), stable=True).indices
    keep = torch.zeros(n, dtype=torch.bool, device=tau.device)
    keep[order[n - n_top - n_keep : n - n_top]] = True
    return torch.where(keep.view(tau.shape), tau, torch.zeros_like(tau))


def _outliers(gamma: float, n: int) -> int:
    """Outliers removed under the "round" rule: round(gamma * n), halves up (0 allowed)."""
    return math.floor(gamma * n + 0.5 + 1e-9) if gamma > 0 else 0


def _row_breadcrumbs(tau: torch.Tensor, density: float, gamma: float, count: str) -> torch.Tensor:
    if tau.dim() == 0:
        return tau.clone()
    width = tau.shape[-1]
    rows = tau.reshape(-1, width)
    n_top = kept_count(gamma, width, count) if count != "round" else _outliers(gamma, width)
    n_keep = min(kept_count(density, width, count), width - n_top)
    # rank 0 is the largest magnitude of its row (stable: ties go to the earlier position)
    order = torch.sort(rows.abs(), dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(width, device=tau.device).expand_as(order).contiguous())
    keep = (ranks >= n_top) & (ranks < n_top + n_keep)
    return torch.where(keep, rows, torch.zeros_like(rows)).view(tau.shape)


ZERO_SIGNS = ("plus", "majority")


def zero_sum_sign(total: torch.Tensor, zero_sign: str) -> float:
    """The sign elected where the sum of task vectors is exactly 0.

    ``"plus"``: +1 (mergekit's ``sign_weight >= 0``). ``"majority"``: the sign elected for most
    entries, ``sign(sum_j sign(total_j))`` (the TIES authors' ``resolve_zero_signs``, over their
    flattened model; over the tensor here), 0 when that is a tie too, so the entry stays 0.

    >>> zero_sum_sign(torch.tensor([-1.0, -2.0, 0.0, 3.0]), "majority")
    -1.0
    """
    if zero_sign == "plus":
        return 1.0
    if zero_sign != "majority":
        raise ValueError(f"zero_sign must be one of {list(ZERO_SIGNS)}, got {zero_sign!r}")
    return float(torch.sign(torch.sign(total).sum()))


def elect_sign(taus: Sequence[torch.Tensor], zero_sign: str = "plus") -> torch.Tensor:
    """TIES sign election: the sign of the sum of the (trimmed) task vectors, as +1.0 / -1.0.

    The sign of the sum is the sign whose entries carry the larger total magnitude. Where the
    sum is exactly zero, :func:`zero_sum_sign` decides (+1 by default; only matters when the
    values cancel exactly or every model's entry was trimmed).

    >>> elect_sign([torch.tensor([1.0, -2.0, 0.0]), torch.tensor([-3.0, 1.0, 0.0])])
    tensor([-1., -1.,  1.])
    >>> elect_sign([torch.tensor([1.0, -2.0, 0.0]), torch.tensor([-3.0, 1.0, 0.0])], "majority")
    tensor([-1., -1., -1.])
    """
    total = taus[0].float().clone()
    for tau in taus[1:]:
        total.add_(tau)
    return torch.where(total == 0, zero_sum_sign(total, zero_sign), torch.sign(total)).to(total.dtype)


def disjoint_mean(
    taus: Sequence[torch.Tensor], sign: torch.Tensor, weights: Sequence[float] | None = None, *, mean: bool = True
) -> torch.Tensor:
    """TIES disjoint merge: per entry, the (weighted) mean over models that agree with ``sign``.

    A model takes part in an entry when its value there is non-zero and has the elected sign:
    ``sum_t w_t tau_t [agree] / sum_t w_t [agree]``; entries where no model agrees are 0. With
    ``mean=False`` the disjoint sum ``sum_t w_t tau_t [agree]`` (mergekit's ``normalize: false``).

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
    if not mean:
        return total
    return torch.where(count != 0, total / torch.where(count != 0, count, 1.0), 0.0)


class SignConsensus:
    """TIES sign election and disjoint mean, accumulated one task vector at a time.

    Equal to ``disjoint_mean(taus, elect_sign([w_t * tau_t]), w)`` (up to float rounding) but
    keeps four running sums instead of all T task vectors: ``S = sum w tau``, ``A = sum w |tau|``
    and their sign counterparts, from which the positive and negative parts follow
    (``pos = (A + S) / 2``, ``neg = (S - A) / 2``). Memory is O(1) in T and each task vector is
    read a fixed number of times, which is what makes large TIES merges fast.

    >>> acc = SignConsensus(torch.Size([3]))
    >>> for tau in (torch.tensor([1.0, -2.0, 0.0]), torch.tensor([-3.0, 1.0, 0.0]),
    ...             torch.tensor([2.0, -4.0, 5.0])):
    ...     acc.add(tau)
    >>> acc.result()
    tensor([ 1.5000, -3.0000,  5.0000])
    """

    def __init__(self, shape: torch.Size, device: torch.device | str = "cpu") -> None:
        def zeros() -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float32, device=device)

        self._sum, self._abs_sum, self._sign_sum, self._abs_sign_sum = zeros(), zeros(), zeros(), zeros()

    def add(self, tau: torch.Tensor, weight: float = 1.0) -> None:
        """Add one (sparsified) task vector; ``tau`` is only read."""
        scratch = torch.abs(tau)
        self._sum.add_(tau, alpha=weight)
        self._abs_sum.add_(scratch, alpha=weight)
        torch.sign(tau, out=scratch)
        self._sign_sum.add_(scratch, alpha=weight)
        self._abs_sign_sum.add_(scratch.abs_(), alpha=weight)

    def sign_balance(self) -> float:
        """``sum_j sign(S_j)``: how many more entries elect + than - (for a zero-sum majority
        over several blocks)."""
        return float(torch.sign(self._sum).sum())

    def result(self, zero_sign: float = 1.0, *, mean: bool = True) -> torch.Tensor:
        """The disjoint mean (``mean=False``: sum) under the elected signs; where the sum is
        exactly 0, ``zero_sign`` is elected (+1, -1, or 0 to leave the entry at 0)."""
        zero = self._sum == 0
        positive = (self._sum > 0) | (zero & (zero_sign > 0))
        # pos = (A + S) / 2 and neg = (S - A) / 2; likewise for the agreeing weight totals.
        numerator = torch.where(positive, self._abs_sum + self._sum, self._sum - self._abs_sum)
        if zero_sign == 0:
            numerator = numerator.masked_fill_(zero, 0.0)
        if not mean:
            return numerator.mul_(0.5)
        denominator = torch.where(
            positive, self._abs_sign_sum + self._sign_sum, self._abs_sign_sum - self._sign_sum
        )
        return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-30), 0.0)
