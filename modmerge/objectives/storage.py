"""Storage cost C, eq. (8) of the MERGE paper, exactly as written.

    C = sum over modules l, groups n, units u of
            b_u * d_u / (b_plus * d)  +  2 * I(b_u < b_plus) / d

``d`` is the parameter count of the full-precision pretrained model and ``b_plus`` its bit-width:
the bits of its checkpoint's dtype (32 for float32, 16 for bfloat16;
:func:`modmerge.quantization.storage_dtype`), and unquantised units are stored in that dtype. The
first term is the stored parameter bits over the pretrained model's bits; the second charges each
unit stored narrower than ``b_plus`` two values (scale and zero point) of metadata, counted as
parameters. So one merged model of the whole body at 8 bits costs ``8 / 32 = 0.25`` of a float32
checkpoint and ``8 / 16 = 0.5`` of a bfloat16 one, plus ``2 / d`` per quantised unit, and T
task-specific models cost ``T``.

What ``d`` counts is the caller's choice and must match the units summed: in modmerge it is the
mergeable body; classification heads are task-specific, never merged, and are reported apart by
the caller rather than added here.

C is a sum over units, so it is additive over modules: a search can cache each module's share
(:func:`module_storage_cost`) once the module is built and sum shares for any grouping matrix.
For ``mode="always"``/``"never"`` the units follow from shapes alone
(:func:`modmerge.quantization.module_storage_bits`); in ``"conditional"`` mode which units are
quantised depends on the merged values, so a module must be built (or its mask computed with
:func:`modmerge.quantization.units_to_quantise`) before its share is exact.

Example (d = 100: 60 values at 8 bits, quantised, plus 40 values at 32 bits)::

    >>> from modmerge.quantization import UnitBits
    >>> storage_cost([UnitBits(60, 8, True), UnitBits(40, 32, False)], d=100)
    0.57
"""

from __future__ import annotations

from collections.abc import Iterable

from modmerge.quantization import CompressedTensor, UnitBits

__all__ = ["emr_storage_cost", "module_storage_cost", "storage_cost"]


def storage_cost(units: Iterable[UnitBits], *, d: int, full_bits: int = 32) -> float:
    """Eq. (8) over ``units``: parameter bits over ``full_bits * d`` plus ``2 / d`` per narrow unit.

    ``full_bits`` is ``b_plus``, the pretrained checkpoint's bits per value (the default 32 is a
    float32 checkpoint's; pass 16 for bfloat16 or float16).

    The metadata indicator is ``b_u < full_bits`` as the paper writes it (not the ``quantised``
    flag): a unit quantised to ``full_bits`` bits or more pays no metadata. Both terms are summed
    as integers over a common denominator and divided once, so the result is the correctly
    rounded value of the exact rational and does not depend on the order of the units.

    >>> storage_cost([UnitBits(100, 32, False)] * 3, d=100)
    3.0
    >>> storage_cost([UnitBits(100, 8, True)], d=100, full_bits=16)  # bfloat16: half, plus 2/d
    0.52
    """
    if d <= 0:
        raise ValueError(f"d (parameters of the pretrained model) must be positive, got {d}")
    if full_bits <= 0:
        raise ValueError(f"full_bits must be positive, got {full_bits}")
    parameter_bits = 0
    narrow_units = 0
    for unit in units:
        parameter_bits += unit.bits * unit.numel
        narrow_units += unit.bits < full_bits
    # One division of exact integers: 2/d == 2 * full_bits / (full_bits * d).
    return (parameter_bits + 2 * full_bits * narrow_units) / (full_bits * d)


def module_storage_cost(tensors: Iterable[CompressedTensor], *, d: int, full_bits: int = 32) -> float:
    """Eq. (8) share of compressed tensors (one module, or any set): shares add up over modules.

    >>> import torch
    >>> from modmerge.quantization import compress
    >>> module = [compress(torch.randn(4, 5), [], mode="always"), compress(torch.randn(5), [], mode="never")]
    >>> module_storage_cost(module, d=25)  # 8*20/(32*25) + 2/25 + 32*5/(32*25)
    0.48
    """
    return storage_cost((u for t in tensors for u in t.unit_bits()), d=d, full_bits=full_bits)


def emr_storage_cost(d: int, *, tasks: int, rescalers: int, full_bits: int = 32, mask_bits: int = 1) -> float:
    """C of EMR-Merging (:mod:`modmerge.merging.emr`), normalised like eq. (8): the unified task
    vector at ``full_bits`` once (``d`` values), one mask of ``d`` entries at ``mask_bits`` per
    task, and ``rescalers`` scalars at ``full_bits``, over ``full_bits * d``.

    The pretrained body the task vectors are added back to is not counted, as the MERGE paper's
    Table I does not count it (1.25 for 8 tasks: ``1 + 8 / 32``); counting it adds 1.

    >>> emr_storage_cost(1000, tasks=8, rescalers=8)  # (32*1000 + 8*1000 + 8*32) / (32*1000)
    1.258
    """
    if d <= 0:
        raise ValueError(f"d (parameters of the pretrained model) must be positive, got {d}")
    bits = full_bits * d + tasks * mask_bits * d + rescalers * full_bits
    return bits / (full_bits * d)
