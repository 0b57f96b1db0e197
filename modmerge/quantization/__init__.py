"""Quantisation of merged modules: unit-wise asymmetric quantisation and conditional compression.

Data flows ``asymmetric`` (eq. 6: real integer codes, scale and zero point per unit) ->
``conditional`` (the paper's Q: quantise a unit only where merging did not widen its range) ->
``accounting`` (the bits each unit holds, which eq. 8 in :mod:`modmerge.objectives.storage` sums).

Example::

    >>> import torch
    >>> from modmerge.quantization import QuantConfig, compress
    >>> w = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    >>> compress(w, [w], config=QuantConfig(bits=8)).dequantize()
    tensor([[0., 1.],
            [2., 3.]])
"""

from modmerge.quantization.accounting import (
    UnitBits,
    dtype_bits,
    module_storage_bits,
    storage_dtype,
)
from modmerge.quantization.asymmetric import (
    MAX_BITS,
    Granularity,
    QuantizedTensor,
    code_dtype,
    num_units,
    quantize,
    unit_rows,
)
from modmerge.quantization.conditional import (
    CompressedTensor,
    QuantConfig,
    QuantMode,
    compress,
    dynamic_ranges,
    units_to_quantise,
)

__all__ = [
    "MAX_BITS",
    "CompressedTensor",
    "Granularity",
    "QuantConfig",
    "QuantMode",
    "QuantizedTensor",
    "UnitBits",
    "code_dtype",
    "compress",
    "dtype_bits",
    "dynamic_ranges",
    "module_storage_bits",
    "num_units",
    "quantize",
    "storage_dtype",
    "unit_rows",
    "units_to_quantise",
]
