"""NearSwap: take a second model's values where they are already near the first model's.

From mergekit's ``merge_methods/nearswap.py`` (the method behind alchemonaut's
QuartetAnemoi-70B-t0.0001 on the Hugging Face hub), entry by entry::

    w = clamp(t / max(|a - b|, 1e-6), 0, 1),      theta = w * b + (1 - w) * a

so entries that differ by at most ``t`` are swapped for ``b``'s, and larger differences pull
toward ``b`` less and less. ``a`` is mergekit's ``base_model``; see
:mod:`modmerge.merging.pairs` for which two tensors ``a`` and ``b`` are.

Example::

    >>> import torch
    >>> nearswap(torch.tensor([0.0, 0.0]), [torch.tensor([0.5, 4.0])], t=1.0)
    tensor([0.5000, 1.0000])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch

from modmerge.merging.pairs import endpoints
from modmerge.merging.registry import Param, merge_method

__all__ = ["nearswap"]


@merge_method(
    "nearswap",
    summary="NearSwap: swap in a second model's entries where they lie within t of the first's.",
    citation=(
        "alchemonaut, QuartetAnemoi-70B-t0.0001 (huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001); "
        "mergekit merge_methods/nearswap.py"
    ),
    max_models=2,
)
def nearswap(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    t: Annotated[
        float,
        Param(low=0.0, high=1.0, help="distance below which the second model's value is taken whole", search=(1e-4, 1e-2)),
    ] = 1e-4,
) -> torch.Tensor:
    """NearSwap of the pair ``(a, b)`` (formula in the module docstring).

    mergekit requires ``t``; the default 1e-4 is the value the method's namesake model was
    merged with. ``t = 0`` returns ``a``.

    >>> nearswap(torch.zeros(3), [torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 1.5, 3.0])], t=1.0)
    tensor([1.0000, 1.5000, 2.0000])
    """
    a, b = endpoints("nearswap", base, tensors)
    weight = (t / (a - b).abs().clamp(min=1e-6)).clamp(0.0, 1.0)
    return weight * b + (1 - weight) * a
