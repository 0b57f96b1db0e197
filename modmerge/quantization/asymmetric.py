"""Asymmetric uniform b-bit quantisation per unit (eq. 6 of the MERGE paper), stored for real.

A *unit* is the set of values that share one scale and one zero point:

- ``granularity="tensor"``: the whole tensor is one unit;
- ``granularity="channel"``: each output row (index along dim 0) of a tensor with two or more
  dimensions is a unit. 1-D tensors (biases, norm weights) and 0-D tensors stay ONE unit even
  here: a per-element unit would carry two metadata values (scale and zero point) for one value,
  so it would cost more than the full-precision value it replaces (eq. 8 charges 2/d per unit).

For a unit with minimum ``m`` and maximum ``M`` at ``b`` bits (``q_max = 2**b - 1``), the range is
first widened to hold 0 (``m0 = min(m, 0)``, ``M0 = max(M, 0)``), then::

    s = (M0 - m0) / q_max,   z = clamp(round(-m0 / s), 0, q_max)
    q = clamp(round(w / s) + z, 0, q_max),   w_hat = s * (q - z)

The zero point is a b-bit code like any other, so 0 lies on the grid (``q = z``): a weight that is
exactly 0 (pruned, masked, never trained) is reconstructed as exactly 0, as in the standard
asymmetric scheme of integer-arithmetic inference (Jacob et al., CVPR 2018, arXiv:1712.05877;
PyTorch's min-max observers widen the range the same way). The price is a coarser step for a
unit whose values all have one sign: ``s`` spans ``[0, M]`` rather than ``[m, M]``.

The grid ``{s (q - z) : 0 <= q <= q_max}`` is evenly spaced, so rounding ``w / s`` to the nearest
integer and clamping the code to ``[0, q_max]`` picks the grid point nearest to ``w``: that is
the argmin of eq. (6). The grid reaches ``m0`` and ``M0`` (within ``s / 2``, ``z`` being rounded),
so every value of the unit is reconstructed within ``s / 2``.

Constant units (``m == M = c``): the scale is ``|c| / 2**(b - 1)``, a power-of-two fraction of
``c``, so ``c`` is exactly ``s * (+-2**(b - 1))`` and reconstructs exactly; an all-zero unit gets
the smallest normal float32 as its scale. The stored float32 scale is rounded up, never down, so
the grid still spans ``[m0, M0]``.

Codes are stored one per element in the narrowest torch integer type that holds them (uint8 up to
8 bits, int16 up to 15, int32 for 16); codes narrower than 8 bits are not bit-packed, so
:attr:`QuantizedTensor.nbytes` reports the bytes actually held, while the storage cost of eq. (8)
counts the nominal ``b`` bits per value.

Example::

    >>> import torch
    >>> q = quantize(torch.tensor([[-1.0, 0.0, 0.6, 2.0]]), bits=2)
    >>> q.codes, q.scale, q.zero_point
    (tensor([[0, 1, 2, 3]], dtype=torch.uint8), tensor([1.]), tensor([1], dtype=torch.int32))
    >>> q.dequantize()
    tensor([[-1.,  0.,  1.,  2.]])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from modmerge.errors import CheckpointError, CompatibilityError, RecipeError

__all__ = [
    "MAX_BITS",
    "Granularity",
    "QuantizedTensor",
    "code_dtype",
    "num_units",
    "quantize",
    "splits_rows",
    "unit_rows",
    "validate_bits",
    "validate_granularity",
]

Granularity = Literal["tensor", "channel"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
MAX_BITS = 16


def validate_bits(bits: object) -> int:
    """Return ``bits`` if it is an integer bit-width in ``[1, MAX_BITS]``, else raise RecipeError.

    Wider codes than 16 bits would save little against float32 and need int32 codes anyway.

    >>> validate_bits(8)
    8
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise RecipeError(f"quantization field 'bits' must be an integer in [1, {MAX_BITS}], got {bits!r}")
    return bits


def validate_granularity(granularity: object) -> Granularity:
    """Return ``granularity`` if it is ``"tensor"`` or ``"channel"``, else raise RecipeError.

    >>> validate_granularity("channel")
    'channel'
    """
    if granularity not in GRANULARITIES:
        raise RecipeError(
            f"quantization field 'granularity' must be one of {list(GRANULARITIES)}, got {granularity!r}"
        )
    return granularity  # type: ignore[return-value]


def splits_rows(shape: tuple[int, ...] | torch.Size, granularity: Granularity) -> bool:
    """Whether units are the rows along dim 0 (channel granularity on a tensor of >= 2 dims).

    >>> splits_rows((4, 3), "channel"), splits_rows((4,), "channel"), splits_rows((4, 3), "tensor")
    (True, False, False)
    """
    return granularity == "channel" and len(shape) >= 2


def num_units(shape: tuple[int, ...] | torch.Size, granularity: Granularity) -> int:
    """Number of quantisation units of a tensor of ``shape``.

    >>> num_units((4, 3), "channel"), num_units((4,), "channel"), num_units((4, 3), "tensor")
    (4, 1, 1)
    """
    return int(shape[0]) if splits_rows(shape, granularity) else 1


def unit_rows(w: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """``w`` viewed (or reshaped) as ``(num_units, values_per_unit)``.

    >>> unit_rows(torch.zeros(4, 3, 2), "channel").shape
    torch.Size([4, 6])
    """
    if splits_rows(w.shape, granularity):
        return w.reshape(w.shape[0], -1)
    return w.reshape(1, -1)


def code_dtype(bits: int) -> torch.dtype:
    """The narrowest torch integer dtype that holds codes in ``[0, 2**bits - 1]``.

    >>> code_dtype(8), code_dtype(12), code_dtype(16)
    (torch.uint8, torch.int16, torch.int32)
    """
    if bits <= 8:
        return torch.uint8
    if bits <= 15:
        return torch.int16
    return torch.int32


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A tensor as integer codes plus a float32 scale and an int32 zero point per unit.

    ``codes`` has the tensor's shape; ``scale`` and ``zero_point`` have shape ``(num_units,)``.
    Build one with :func:`quantize`; ``w_hat = scale * (codes - zero_point)`` per unit.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    granularity: Granularity

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def num_units(self) -> int:
        return num_units(self.shape, self.granularity)

    @property
    def nbytes(self) -> int:
        """Bytes held by codes, scales and zero points (codes are not bit-packed)."""
        return self.codes.nbytes + self.scale.nbytes + self.zero_point.nbytes

    def dequantize(self) -> torch.Tensor:
        """The reconstruction ``s (q - z)`` as float32, in the original shape.

        >>> quantize(torch.full((2, 2), 3.0)).dequantize()
        tensor([[3., 3.],
                [3., 3.]])
        """
        # float64: q - z is an exact integer there, so the only rounding is the final cast.
        values = unit_rows(self.codes, self.granularity).to(torch.float64)
        values.sub_(self.zero_point.to(torch.float64)[:, None]).mul_(self.scale.to(torch.float64)[:, None])
        return values.to(torch.float32).reshape(self.shape)

    def to_state(self, prefix: str) -> dict[str, torch.Tensor]:
        """Plain tensors for a safetensors file: ``{prefix}.codes/.scale/.zero_point/.qmeta``.

        ``qmeta`` is ``int32 [bits, granularity index]``, so the state describes itself.

        >>> sorted(quantize(torch.ones(3)).to_state("w"))
        ['w.codes', 'w.qmeta', 'w.scale', 'w.zero_point']
        """
        return {
            f"{prefix}.codes": self.codes,
            f"{prefix}.scale": self.scale,
            f"{prefix}.zero_point": self.zero_point,
            f"{prefix}.qmeta": encode_qmeta(self.bits, self.granularity),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], prefix: str) -> QuantizedTensor:
        """Rebuild from :meth:`to_state`'s tensors; CheckpointError names a missing or bad entry.

        >>> q = quantize(torch.arange(6.0).reshape(2, 3), granularity="channel")
        >>> torch.equal(QuantizedTensor.from_state(q.to_state("w"), "w").dequantize(), q.dequantize())
        True
        """
        bits, granularity = decode_qmeta(_entry(state, f"{prefix}.qmeta"), f"{prefix}.qmeta")
        codes = _entry(state, f"{prefix}.codes")
        scale = _entry(state, f"{prefix}.scale")
        zero_point = _entry(state, f"{prefix}.zero_point")
        n = num_units(tuple(codes.shape), granularity)
        _expect(codes, f"{prefix}.codes", code_dtype(bits), tuple(codes.shape))
        _expect(scale, f"{prefix}.scale", torch.float32, (n,))
        _expect(zero_point, f"{prefix}.zero_point", torch.int32, (n,))
        return cls(codes=codes, scale=scale, zero_point=zero_point, bits=bits, granularity=granularity)


def encode_qmeta(bits: int, granularity: Granularity) -> torch.Tensor:
    """``int32 [bits, granularity index]``: what a stored quantised tensor needs besides its data."""
    return torch.tensor([bits, GRANULARITIES.index(granularity)], dtype=torch.int32)


def decode_qmeta(meta: torch.Tensor, name: str) -> tuple[int, Granularity]:
    """Inverse of :func:`encode_qmeta`; CheckpointError (naming ``name``) on a bad entry."""
    _expect(meta, name, torch.int32, (2,))
    bits, index = (int(v) for v in meta.tolist())
    if not 1 <= bits <= MAX_BITS or not 0 <= index < len(GRANULARITIES):
        raise CheckpointError(f"tensor '{name}' holds bad quantisation metadata {[bits, index]}")
    return bits, GRANULARITIES[index]  # type: ignore[return-value]


def _expect(tensor: torch.Tensor, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    if tensor.dtype != dtype or tuple(tensor.shape) != shape:
        raise CheckpointError(
            f"tensor '{name}' must be {dtype} of shape {shape}, got {tensor.dtype} {tuple(tensor.shape)}"
        )


def _entry(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"quantised state lacks tensor '{key}'")
    return state[key]


def check_quantisable(w: torch.Tensor, name: str) -> None:
    """Raise a one-line error unless ``w`` is a non-empty floating tensor of finite values."""
    if not w.is_floating_point():
        raise CompatibilityError(f"tensor '{name}' has dtype {w.dtype}; only floating tensors are quantised")
    if w.numel() == 0:
        raise CompatibilityError(f"tensor '{name}' is empty; there is nothing to quantise")
    if not bool(torch.isfinite(w).all()):
        raise CheckpointError(f"tensor '{name}' holds NaN or Inf values; cannot quantise it")


def quantize(
    w: torch.Tensor, bits: int = 8, granularity: Granularity = "tensor", *, name: str = "tensor"
) -> QuantizedTensor:
    """Quantise ``w`` per unit to ``bits``-bit codes (asymmetric, uniform, round to nearest).

    ``name`` only labels error messages. The reconstruction error is at most ``scale / 2`` per
    value (see the module docstring for the formulas and the degenerate-range rule).

    >>> q = quantize(torch.tensor([[0.0, 1.0], [0.0, 3.0]]), bits=2, granularity="channel")
    >>> q.scale
    tensor([0.3333, 1.0000])
    >>> q.dequantize()
    tensor([[0., 1.],
            [0., 3.]])
    """
    validate_bits(bits)
    validate_granularity(granularity)
    check_quantisable(w, name)
    q_max = 2**bits - 1
    rows = unit_rows(w.detach(), granularity)
    # min and max are exact in any dtype; only the per-unit results need float64.
    low, high = rows.amin(dim=1).to(torch.float64), rows.amax(dim=1).to(torch.float64)
    low0, high0 = low.clamp(max=0.0), high.clamp(min=0.0)  # 0 on the grid
    wanted = torch.where(low == high, torch.maximum(low.abs(), high.abs()) / 2.0 ** (bits - 1), (high0 - low0) / q_max)
    wanted = wanted.clamp_min(torch.finfo(torch.float32).tiny)
    scale = wanted.to(torch.float32)
    # Round the stored scale up so that the grid still reaches both ends of the range.
    up = torch.nextafter(scale, torch.full_like(scale, math.inf))
    scale = torch.where(scale.to(torch.float64) < wanted, up, scale)
    s = scale.to(torch.float64)
    zero = torch.round(-low0 / s).clamp_(0, q_max)
    # float64 keeps w / s and + z exact enough for the argmin; in-place steps keep it to one
    # float64 copy of the tensor.
    codes = rows.to(torch.float64, copy=True).div_(s[:, None]).round_().add_(zero[:, None]).clamp_(0, q_max)
    return QuantizedTensor(
        codes=codes.to(code_dtype(bits)).reshape(w.shape).contiguous(),
        scale=scale.contiguous(),
        zero_point=zero.to(torch.int32).contiguous(),
        bits=bits,
        granularity=granularity,
    )
