"""Per-unit bit accounting from shapes and masks (what eq. 8 sums)."""

from __future__ import annotations

import pytest
import torch

from modmerge.quantization import UnitBits, dtype_bits, module_storage_bits


def test_units_from_shape_and_mask():
    assert module_storage_bits((2, 3, 4), 4, "channel", [False, True]) == (
        UnitBits(12, 32, False),
        UnitBits(12, 4, True),
    )
    assert module_storage_bits((2, 3), 8, "tensor", torch.tensor([True])) == (UnitBits(6, 8, True),)
    # A 1-D tensor is one unit at channel granularity too.
    assert module_storage_bits((7,), 8, "channel", True) == (UnitBits(7, 8, True),)
    assert module_storage_bits((3, 2), 8, "channel", False, full_bits=16) == (UnitBits(2, 16, False),) * 3


def test_mask_length_must_match_units():
    with pytest.raises(ValueError, match="2 flags for 3 units"):
        module_storage_bits((3, 2), 8, "channel", [True, False])


def test_dtype_bits():
    assert [dtype_bits(t) for t in (torch.float32, torch.float16, torch.bfloat16, torch.float64)] == [32, 16, 16, 64]
