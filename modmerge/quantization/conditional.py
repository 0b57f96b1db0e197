"""Conditional compression Q of MERGE (section III-B): quantise a unit only where merging shrank it.

Merging tends to contract a unit's dynamic range (max - min), and a smaller range means a smaller
quantisation step. The paper's criterion, applied per unit (per tensor or per output channel)::

    quantise unit u  iff  range(merged u) <= mean over the group's sources of range(source u)

A singleton group (the module is its one task's own component, ``merged == sources[0]``)
satisfies the criterion with equality, so in ``"conditional"`` mode it IS quantised, as the
criterion reads. Equal-weight averaging always satisfies it too (the max of an average is at most
the average of the maxima, the min at least the average of the minima). ``"always"`` quantises
every unit and ``"never"`` none, whatever the values.

"Less than or equal" is tested up to rounding: the merged range may exceed the sources' mean range
by at most 16 epsilons of ``merged``'s dtype times the unit's magnitude ``max(|min|, |max|)``.
Without that slack, a unit whose range merging leaves unchanged in exact arithmetic (common: the
same entry of a row is the largest in every fine-tuned model) would be decided by the float32
rounding of the merge, i.e. by how a method happens to order its additions. A real widening is
many orders of magnitude larger than this slack.

A :class:`CompressedTensor` may mix quantised and full-precision units (channel granularity):
the quantised rows are stored as one :class:`~modmerge.quantization.asymmetric.QuantizedTensor`
(codes, scale, zero point) and the other rows as full-precision values in the merged tensor's
dtype. Cast ``merged`` to the pretrained model's dtype first if that one is narrower, since
eq. (8) counts full-precision units at the bits they are stored in.

Example::

    >>> import torch
    >>> sources = [torch.tensor([-2.0, 2.0]), torch.tensor([-1.0, 3.0])]
    >>> c = compress(torch.tensor([-1.5, 2.5]), sources, config=QuantConfig(bits=8))
    >>> c.quantised, c.unit_bits()
    (tensor([True]), (UnitBits(numel=2, bits=8, quantised=True),))
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch

from modmerge.errors import CheckpointError, CompatibilityError, RecipeError
from modmerge.quantization.accounting import UnitBits, dtype_bits, module_storage_bits
from modmerge.quantization.asymmetric import (
    Granularity,
    QuantizedTensor,
    check_quantisable,
    decode_qmeta,
    encode_qmeta,
    num_units,
    quantize,
    splits_rows,
    unit_rows,
    validate_bits,
    validate_granularity,
)

__all__ = ["CompressedTensor", "QuantConfig", "QuantMode", "compress", "dynamic_ranges", "units_to_quantise"]

QuantMode = Literal["conditional", "always", "never"]
MODES: tuple[str, ...] = get_args(QuantMode)
# Rounding slack of the range comparison, in ulps (eps of merged's dtype) of the unit's magnitude.
_RANGE_SLACK = 16


@dataclass(frozen=True)
class QuantConfig:
    """How modules are compressed: bit-width, unit granularity and when to quantise.

    Frozen and hashable, so it can be part of a cache key; :class:`RecipeError` names a bad field.

    >>> QuantConfig.from_json(QuantConfig(bits=4, granularity="channel").to_json())
    QuantConfig(bits=4, granularity='channel', mode='conditional')
    """

    bits: int = 8
    granularity: Granularity = "tensor"
    mode: QuantMode = "conditional"

    def __post_init__(self) -> None:
        validate_bits(self.bits)
        validate_granularity(self.granularity)
        if self.mode not in MODES:
            raise RecipeError(f"quantization field 'mode' must be one of {list(MODES)}, got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantConfig:
        unknown = sorted(set(data) - {"bits", "granularity", "mode"})
        if unknown:
            raise RecipeError(
                f"quantization has unknown field '{unknown[0]}' (known: bits, granularity, mode)"
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecipeError(f"quantization config is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise RecipeError(f"quantization config must be a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)


def dynamic_ranges(w: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """``max - min`` of each unit of ``w``, as float64 of shape ``(num_units,)``.

    Float64 keeps the comparison of the criterion free of rounding for float32 and bfloat16 inputs.

    >>> dynamic_ranges(torch.tensor([[0.0, 2.0], [1.0, 1.5]]), "channel")
    tensor([2.0000, 0.5000], dtype=torch.float64)
    """
    validate_granularity(granularity)
    rows = unit_rows(w.detach(), granularity)
    return rows.amax(dim=1).to(torch.float64) - rows.amin(dim=1).to(torch.float64)


def units_to_quantise(
    merged: torch.Tensor,
    sources: Sequence[torch.Tensor],
    *,
    granularity: Granularity = "tensor",
    mode: QuantMode = "conditional",
    name: str = "tensor",
) -> torch.Tensor:
    """Bool mask ``(num_units,)``: which units of ``merged`` Q quantises (see module docstring).

    Cheaper than :func:`compress` when only the storage cost is wanted. ``sources`` are the group's
    task-specific tensors (same shape as ``merged``); only ``"conditional"`` mode reads them.

    >>> units_to_quantise(torch.tensor([[0.0, 1.0], [0.0, 9.0]]), [torch.tensor([[0.0, 2.0], [0.0, 4.0]])],
    ...                   granularity="channel")
    tensor([ True, False])
    """
    validate_granularity(granularity)
    n = num_units(merged.shape, granularity)
    if mode == "always":
        return torch.ones(n, dtype=torch.bool, device=merged.device)
    if mode == "never":
        return torch.zeros(n, dtype=torch.bool, device=merged.device)
    if mode != "conditional":
        raise RecipeError(f"quantization field 'mode' must be one of {list(MODES)}, got {mode!r}")
    if len(sources) == 0:
        raise CompatibilityError(
            f"tensor '{name}': conditional quantisation needs the group's source tensors, got none"
        )
    for i, source in enumerate(sources):
        if source.shape != merged.shape:
            raise CompatibilityError(
                f"tensor '{name}': source {i} has shape {tuple(source.shape)}, "
                f"merged has {tuple(merged.shape)}"
            )
    source_mean = torch.stack([dynamic_ranges(s, granularity) for s in sources]).mean(dim=0)
    rows = unit_rows(merged.detach(), granularity)
    low, high = rows.amin(dim=1).to(torch.float64), rows.amax(dim=1).to(torch.float64)
    slack = _RANGE_SLACK * torch.finfo(merged.dtype).eps * torch.maximum(low.abs(), high.abs())
    return high - low <= source_mean + slack


@dataclass(frozen=True, eq=False)
class CompressedTensor:
    """A merged tensor after Q: quantised units as codes, the others at full precision.

    ``quantised`` is the bool mask over units. With row units (channel granularity, >= 2-D),
    ``quantized_part`` holds the quantised rows stacked in order and ``full_part`` the other rows;
    with a single unit exactly one of them is set and has the tensor's shape.
    """

    shape: tuple[int, ...]
    bits: int
    granularity: Granularity
    quantised: torch.Tensor
    quantized_part: QuantizedTensor | None
    full_part: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        """Bytes held (codes, scales, zero points, full-precision values; the mask excluded)."""
        held = 0 if self.quantized_part is None else self.quantized_part.nbytes
        return held + (0 if self.full_part is None else self.full_part.nbytes)

    def dequantize(self) -> torch.Tensor:
        """The tensor as float32: dequantised units and full-precision units in place. A tensor
        with no quantised unit, kept at float32, comes back as a view of its full part (no copy:
        do not modify it in place).

        >>> c = compress(torch.tensor([[0.0, 1.0], [0.0, 9.0]]), [torch.tensor([[0.0, 2.0], [0.0, 4.0]])],
        ...              granularity="channel")
        >>> c.dequantize()
        tensor([[0., 1.],
                [0., 9.]])
        """
        if self.quantized_part is None and self.full_part is not None and self.full_part.dtype == torch.float32:
            return self.full_part.reshape(self.shape)
        n = self.quantised.numel()
        rows = torch.empty(n, math.prod(self.shape) // n, dtype=torch.float32, device=self.quantised.device)
        if self.quantized_part is not None:
            rows[self.quantised] = unit_rows(self.quantized_part.dequantize(), self.granularity)
        if self.full_part is not None:
            rows[~self.quantised] = unit_rows(self.full_part.to(torch.float32), self.granularity)
        return rows.reshape(self.shape)

    def unit_bits(self) -> tuple[UnitBits, ...]:
        """Per unit, in order: values, bits per value and whether quantised (for eq. 8).

        >>> compress(torch.ones(2, 3), [], granularity="channel", mode="never").unit_bits()
        (UnitBits(numel=3, bits=32, quantised=False), UnitBits(numel=3, bits=32, quantised=False))
        """
        full_bits = 32 if self.full_part is None else dtype_bits(self.full_part.dtype)
        return module_storage_bits(
            self.shape, self.bits, self.granularity, self.quantised, full_bits=full_bits
        )

    def to_state(self, prefix: str) -> dict[str, torch.Tensor]:
        """Plain tensors for a safetensors file, all named ``{prefix}.*``.

        ``qmeta`` (int32 [bits, granularity index]) and ``mask`` always; ``codes``, ``scale`` and
        ``zero_point`` if any unit is quantised; ``full`` if any unit is not.

        >>> sorted(compress(torch.ones(2, 2), [], mode="never").to_state("w"))
        ['w.full', 'w.mask', 'w.qmeta']
        """
        state = {
            f"{prefix}.qmeta": encode_qmeta(self.bits, self.granularity),
            f"{prefix}.mask": self.quantised,
        }
        if self.quantized_part is not None:
            state.update(self.quantized_part.to_state(prefix))
        if self.full_part is not None:
            state[f"{prefix}.full"] = self.full_part
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], prefix: str) -> CompressedTensor:
        """Rebuild from :meth:`to_state`'s tensors; CheckpointError names a missing or bad entry.

        >>> c = compress(torch.arange(4.0).reshape(2, 2), [], granularity="channel", mode="always")
        >>> torch.equal(CompressedTensor.from_state(c.to_state("w"), "w").dequantize(), c.dequantize())
        True
        """
        for suffix in ("qmeta", "mask"):
            if f"{prefix}.{suffix}" not in state:
                raise CheckpointError(f"compressed state lacks tensor '{prefix}.{suffix}'")
        bits, granularity = decode_qmeta(state[f"{prefix}.qmeta"], f"{prefix}.qmeta")
        mask = state[f"{prefix}.mask"]
        if mask.dtype != torch.bool or mask.dim() != 1:
            raise CheckpointError(
                f"tensor '{prefix}.mask' must be a 1-D bool tensor, got {mask.dtype} {tuple(mask.shape)}"
            )
        part = QuantizedTensor.from_state(state, prefix) if f"{prefix}.codes" in state else None
        full = state.get(f"{prefix}.full")
        if full is not None and not full.is_floating_point():
            raise CheckpointError(f"tensor '{prefix}.full' must be floating point, got {full.dtype}")
        present = [t for t in (None if part is None else part.codes, full) if t is not None]
        if not present:
            raise CheckpointError(f"compressed state lacks both '{prefix}.codes' and '{prefix}.full'")
        if part is not None and part.granularity != granularity:
            raise CheckpointError(
                f"tensor '{prefix}.qmeta' disagrees with the granularity of '{prefix}.codes'"
            )
        held = tuple(present[0].shape)
        shape = (mask.numel(), *held[1:]) if splits_rows(held, granularity) else held
        n_quantised = int(mask.sum())
        for key, tensor, n_rows in (
            ("codes", None if part is None else part.codes, n_quantised),
            ("full", full, mask.numel() - n_quantised),
        ):
            want = _part_shape(shape, granularity, n_rows)
            got = None if tensor is None else tuple(tensor.shape)
            if got != want:
                raise CheckpointError(
                    f"tensor '{prefix}.{key}' has shape {got}, '{prefix}.mask' implies {want}"
                )
        return cls(shape=shape, bits=bits, granularity=granularity, quantised=mask,
                   quantized_part=part, full_part=full)


def _part_shape(shape: tuple[int, ...], granularity: Granularity, rows: int) -> tuple[int, ...] | None:
    """Shape of the part holding ``rows`` units, or None when no unit goes there."""
    if rows == 0:
        return None
    return (rows, *shape[1:]) if splits_rows(shape, granularity) else shape


def compress(
    merged: torch.Tensor,
    sources: Sequence[torch.Tensor],
    *,
    bits: int | None = None,
    granularity: Granularity | None = None,
    mode: QuantMode | None = None,
    config: QuantConfig | None = None,
    name: str = "tensor",
) -> CompressedTensor:
    """Apply Q to one merged tensor: quantise the units that pass the criterion, keep the rest.

    Give either ``config`` or any of ``bits``/``granularity``/``mode`` (defaults: 8, "tensor",
    "conditional", as in :class:`QuantConfig`). ``sources`` are the group's task-specific tensors;
    for a singleton group pass ``[merged]`` (it is then quantised in conditional mode, see the
    module docstring). ``name`` only labels error messages.

    >>> c = compress(torch.tensor([[0.0, 1.0], [0.0, 9.0]]), [torch.tensor([[0.0, 2.0], [0.0, 4.0]])],
    ...              bits=8, granularity="channel")
    >>> c.quantised, c.full_part
    (tensor([ True, False]), tensor([[0., 9.]]))
    """
    if config is None:
        config = QuantConfig(
            bits=8 if bits is None else bits,
            granularity="tensor" if granularity is None else granularity,
            mode="conditional" if mode is None else mode,
        )
    elif bits is not None or granularity is not None or mode is not None:
        raise RecipeError("compress: pass either config or bits/granularity/mode, not both")
    check_quantisable(merged, name)
    merged = merged.detach()
    mask = units_to_quantise(merged, sources, granularity=config.granularity, mode=config.mode, name=name)
    part: QuantizedTensor | None = None
    full: torch.Tensor | None = None
    if splits_rows(merged.shape, config.granularity):
        # Boolean indexing copies the selected rows, so the parts own their memory.
        if bool(mask.any()):
            part = quantize(merged[mask], config.bits, config.granularity, name=name)
        if not bool(mask.all()):
            full = merged[~mask]
    elif bool(mask[0]):
        part = quantize(merged, config.bits, config.granularity, name=name)
    else:
        full = merged.clone()
    return CompressedTensor(
        shape=tuple(merged.shape),
        bits=config.bits,
        granularity=config.granularity,
        quantised=mask,
        quantized_part=part,
        full_part=full,
    )
