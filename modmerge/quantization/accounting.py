"""Per-unit bit accounting: what eq. (8)'s storage cost is summed over.

Every stored tensor is a list of units, each described by a :class:`UnitBits`: how many values it
holds (``d_u``), at how many bits (``b_u``), and whether it was quantised. The storage cost itself
(normalising by the pretrained model) lives in :mod:`modmerge.objectives.storage`.

Why shapes are enough once the quantised units are known: a unit's bits depend only on whether it
was quantised. For ``mode="always"`` or ``"never"`` that is known from the configuration alone; for
``mode="conditional"`` it depends on the merged values (the range criterion), so a caller learns the
mask once, when it builds the module, and can then cache the module's units or its cost share
(:func:`module_storage_bits` rebuilds the units from the shape and that mask, with no tensor).

Example::

    >>> [u.bits for u in module_storage_bits((3, 4), 8, "channel", [True, False, True])]
    [8, 32, 8]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch

from modmerge.quantization.asymmetric import (
    Granularity,
    num_units,
    validate_bits,
    validate_granularity,
)

__all__ = ["UnitBits", "dtype_bits", "module_storage_bits", "storage_dtype"]


class UnitBits(NamedTuple):
    """One storage unit: ``numel`` values (``d_u``) at ``bits`` bits each (``b_u``).

    ``quantised`` says whether the unit carries a scale and a zero point; eq. (8) charges that
    metadata through its own test ``b_u < b_plus``, which agrees whenever quantisation narrows.
    """

    numel: int
    bits: int
    quantised: bool


def dtype_bits(dtype: torch.dtype) -> int:
    """Bits per value of a floating dtype (32 for float32, 16 for bfloat16).

    >>> dtype_bits(torch.float32), dtype_bits(torch.bfloat16)
    (32, 16)
    """
    return torch.finfo(dtype).bits


def storage_dtype(tensors: Iterable[torch.Tensor]) -> torch.dtype:
    """The dtype full-precision units are stored in: the pretrained checkpoint's floating dtype.

    Eq. (8)'s ``b_plus`` is its bit-width (16 for a bfloat16 checkpoint), and a module keeps its
    unquantised units in it, so a unit stored at full precision costs exactly what the checkpoint
    does. A checkpoint mixing floating dtypes gets the widest one (nothing is rounded down).

    >>> storage_dtype([torch.zeros(2, dtype=torch.bfloat16), torch.zeros(1, dtype=torch.int64)])
    torch.bfloat16
    """
    floating = [t.dtype for t in tensors if t.is_floating_point()]
    if not floating:
        raise ValueError("storage_dtype: no floating tensor to take the dtype of")
    return max(floating, key=dtype_bits)


def module_storage_bits(
    shape: Sequence[int] | torch.Size,
    bits: int,
    granularity: Granularity,
    quantised_mask: bool | Sequence[bool] | torch.Tensor,
    *,
    full_bits: int = 32,
) -> tuple[UnitBits, ...]:
    """The units of ONE tensor of a module, from its shape and which of its units were quantised.

    ``quantised_mask`` has one flag per unit (``num_units(shape, granularity)`` of them: the rows
    for channel granularity on a >= 2-D tensor, else one), or a single bool for all units.
    Quantised units hold ``bits`` bits per value; the others ``full_bits`` (the dtype their values
    are stored in). A module's units are the concatenation over its tensors; since eq. (8) is a sum
    over units, a module's cost share can be computed once and cached by the caller.

    >>> module_storage_bits((5,), 8, "channel", True)
    (UnitBits(numel=5, bits=8, quantised=True),)
    >>> module_storage_bits((2, 3), 4, "tensor", False)
    (UnitBits(numel=6, bits=32, quantised=False),)
    """
    validate_bits(bits)
    validate_granularity(granularity)
    if full_bits <= 0:
        raise ValueError(f"full_bits must be positive, got {full_bits}")
    shape = tuple(int(n) for n in shape)
    n = num_units(shape, granularity)
    if isinstance(quantised_mask, bool):
        flags = [quantised_mask] * n
    elif isinstance(quantised_mask, torch.Tensor):
        flags = [bool(f) for f in quantised_mask.reshape(-1).tolist()]
    else:
        flags = [bool(f) for f in quantised_mask]
    if len(flags) != n:
        raise ValueError(f"quantised_mask has {len(flags)} flags for {n} units of a tensor of shape {shape}")
    per_unit = math.prod(shape) // n if n else 0
    return tuple(UnitBits(per_unit, bits if f else full_bits, f) for f in flags)
