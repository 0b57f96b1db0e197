"""Linear merges: weight averaging (model soups) and task arithmetic.

Weight averaging is a linear combination of full weights, computed by :func:`linear_combination`:
one float32 buffer, filled from the first term and accumulated in place (``acc.add_(t, alpha=c)``),
with no per-model temporaries for float32 inputs. Terms whose coefficient is exactly 0 are skipped
and coefficients of exactly 1 are not multiplied, so a single model with coefficient 1 is copied
bit for bit (``-0.0`` included). Task arithmetic sums task vectors (:func:`delta_sum`), which keeps
its precision as the number of models grows.

This module also holds the input checks shared by every method family (:func:`check_inputs`).

Example::

    >>> import torch
    >>> from modmerge.merging import get_method
    >>> get_method("weight_averaging")(torch.zeros(2), [torch.ones(2), torch.full((2,), 3.0)])
    tensor([2., 2.])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.registry import Param, merge_method

__all__ = ["check_inputs", "delta_sum", "linear_combination", "task_arithmetic", "weight_averaging"]


def check_inputs(
    method: str,
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
) -> list[float]:
    """Check shapes and weights for ``method``; return the per-model weights (default all 1.0).

    >>> check_inputs("task_arithmetic", torch.zeros(2), [torch.ones(2)] * 2)
    [1.0, 1.0]
    """
    if len(tensors) == 0:
        raise MergeMethodError(f"method '{method}' needs at least one task-specific tensor, got none")
    for i, tensor in enumerate(tensors):
        if tensor.shape != base.shape:
            raise MergeMethodError(
                f"method '{method}': tensor of model {i} has shape {tuple(tensor.shape)}, "
                f"base has {tuple(base.shape)}"
            )
    if weights is None:
        return [1.0] * len(tensors)
    if len(weights) != len(tensors):
        raise MergeMethodError(
            f"method '{method}' input 'weights' has {len(weights)} values for {len(tensors)} models"
        )
    return [float(w) for w in weights]


def _scaled_copy(tensor: torch.Tensor, coefficient: float) -> torch.Tensor:
    """A new float32 tensor holding ``coefficient * tensor``, with no multiply when it is 1."""
    if tensor.dtype == torch.float32:
        return tensor.clone() if coefficient == 1.0 else torch.mul(tensor, coefficient)
    # Upcast first: multiplying in bf16/fp16 would round before the float32 accumulation.
    out = tensor.to(torch.float32)
    return out if coefficient == 1.0 else out.mul_(coefficient)


def linear_combination(tensors: Sequence[torch.Tensor], coefficients: Sequence[float]) -> torch.Tensor:
    """``sum_i c_i * tensors[i]`` in a fresh float32 buffer, skipping terms with ``c_i == 0``.

    If every coefficient is 0 the result is zeros.

    >>> linear_combination([torch.tensor([1.0, 2.0]), torch.tensor([4.0, 4.0])], [0.5, 0.25])
    tensor([1.5000, 2.0000])
    """
    terms = [(t, float(c)) for t, c in zip(tensors, coefficients, strict=True) if float(c) != 0.0]
    if not terms:
        return torch.zeros(tensors[0].shape, dtype=torch.float32, device=tensors[0].device)
    first, c0 = terms[0]
    if first.device.type == "cpu" and first.numel() > _CHUNK and any(t.dtype != torch.float32 for t, _ in terms):
        return _chunked_combination(terms)
    acc = _scaled_copy(first, c0)
    for tensor, c in terms[1:]:
        acc.add_(tensor, alpha=c)
    return acc


# Elements per chunk of a chunked sum: the float32 accumulator chunk (256 KiB) stays in cache.
_CHUNK = 1 << 16


def _chunked_combination(terms: Sequence[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """:func:`linear_combination` chunk by chunk, with the same operations in the same order per
    element (so bit-identical). For half-precision inputs on CPU a full-size float32 accumulator
    makes every term a trip to memory; a cache-sized one is ~2.5x faster."""
    first = terms[0][0]
    out = torch.empty(first.shape, dtype=torch.float32)
    flat_out = out.view(-1)
    flats = [(t.reshape(-1), c) for t, c in terms]
    (head, c0), rest = flats[0], flats[1:]
    for start in range(0, flat_out.numel(), _CHUNK):
        end = min(start + _CHUNK, flat_out.numel())
        acc = flat_out[start:end]
        acc.copy_(head[start:end])
        if c0 != 1.0:
            acc.mul_(c0)
        for tensor, c in rest:
            acc.add_(tensor[start:end], alpha=c)
    return out


def delta_sum(base: torch.Tensor, tensors: Sequence[torch.Tensor], coefficients: Sequence[float]) -> torch.Tensor:
    """``base + sum_i c_i * (tensors[i] - base)`` in a fresh float32 buffer (task vectors summed).

    Each difference ``tensors[i] - base`` is formed in float32 before it is scaled, so the sum
    carries the rounding of small task vectors, not of full weights: with T models the full-weight
    form ``sum_i c_i tensors[i] + (1 - sum_i c_i) base`` rounds terms T times the weights' size. On
    CPU the work runs chunk by chunk so the scratch buffers stay in cache. Terms with ``c_i == 0``
    are skipped.

    >>> delta_sum(torch.tensor([1.0, 1.0]), [torch.tensor([3.0, 1.0]), torch.tensor([1.0, 5.0])], [0.5, 0.25])
    tensor([2., 2.])
    """
    terms = [(t, float(c)) for t, c in zip(tensors, coefficients, strict=True) if float(c) != 0.0]
    if base.device.type != "cpu":
        base32 = base.to(torch.float32)
        acc = torch.zeros_like(base32)
        for tensor, c in terms:
            acc.add_(torch.sub(tensor.to(torch.float32), base32), alpha=c)
        return acc.add_(base32)
    out = torch.empty(base.shape, dtype=torch.float32)
    flat_out, flat_base = out.view(-1), base.reshape(-1)
    flats = [(t.reshape(-1), c) for t, c in terms]
    scratch = torch.empty(min(_CHUNK, flat_out.numel()), dtype=torch.float32)
    base_chunk = torch.empty_like(scratch)
    for start in range(0, flat_out.numel(), _CHUNK):
        end = min(start + _CHUNK, flat_out.numel())
        acc, b, tmp = flat_out[start:end], base_chunk[: end - start], scratch[: end - start]
        b.copy_(flat_base[start:end])
        acc.zero_()
        for tensor, c in flats:
            torch.sub(tensor[start:end], b, out=tmp)
            acc.add_(tmp, alpha=c)
        acc.add_(b)
    return out


def linear_coefficients(
    method: str, n_models: int, kwargs: Mapping[str, Any]
) -> tuple[float, list[float]] | None:
    """``(base coefficient, model coefficients)`` when ``method`` is a fixed linear combination
    of its inputs (weight averaging, task arithmetic), else None.

    A caller can then skip the per-input NaN/Inf scan: with every coefficient nonzero, a NaN or
    Inf in any input reaches the merged value at the same position (finite + c * Inf = Inf,
    anything + NaN = NaN), so checking the output finds it.

    >>> linear_coefficients("task_arithmetic", 2, {"scaling": 0.5})
    (0.0, [0.5, 0.5])
    >>> linear_coefficients("ties", 2, {}) is None
    True
    """
    weights = kwargs.get("weights")
    w = [1.0] * n_models if weights is None else [float(x) for x in weights]
    if len(w) != n_models:
        return None
    if method == "weight_averaging":
        total = sum(w)
        return None if total == 0.0 else (0.0, [x / total for x in w])
    if method == "task_arithmetic" and "scaling" in kwargs:
        coefficients = [float(kwargs["scaling"]) * x for x in w]
        return 1.0 - sum(coefficients), coefficients
    return None


@merge_method(
    "weight_averaging",
    aliases=("linear",),
    summary="Weighted average of the fine-tuned weights (model soup).",
    citation=(
        "Wortsman et al., 'Model soups: averaging weights of multiple fine-tuned models improves "
        "accuracy without increasing inference time', ICML 2022, arXiv:2203.05482"
    ),
)
def weight_averaging(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Model soup (Wortsman et al. 2022, arXiv:2203.05482): ``sum_t w_t theta_t / sum_t w_t``.

    ``weights`` default to uniform (the paper's uniform soup). ``base`` is not used. The weighted
    sum is accumulated first and divided once, so averaging two identical models is exact.

    >>> weight_averaging(torch.zeros(3), [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 4.0, 5.0])],
    ...                  weights=[1.0, 3.0])
    tensor([2.5000, 3.5000, 4.5000])
    """
    w = check_inputs("weight_averaging", base, tensors, weights)
    total = sum(w)
    if total == 0.0:
        raise MergeMethodError("method 'weight_averaging' input 'weights' sums to 0; cannot average")
    acc = linear_combination(tensors, w)
    return acc if total == 1.0 else acc.div_(total)


@merge_method(
    "task_arithmetic",
    summary="Pretrained weights plus the scaled sum of task vectors.",
    citation=(
        "Ilharco et al., 'Editing models with task arithmetic', ICLR 2023, arXiv:2212.04089"
    ),
)
def task_arithmetic(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    scaling: Annotated[
        float,
        Param(
            low=-2.0,
            high=4.0,
            help="lambda, the scale of the summed task vectors (paper picks it on validation data)",
            search=(0.1, 1.0),
        ),
    ] = 0.3,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Task arithmetic (Ilharco et al. 2023, arXiv:2212.04089).

    ``theta = theta_pre + lambda * sum_t w_t (theta_t - theta_pre)``, computed in that delta form in
    float32 (see :func:`delta_sum`): summing task vectors rather than full weights keeps the error
    near one rounding of the result however many models are merged (16 models: 6e-8 against
    float64, where the full-weight combination gave 5e-6). ``lambda = 0`` returns the base and one
    model with ``lambda * w = 1`` that model, bit for bit. ``w_t`` default to 1.

    The paper has no fixed default: it selects lambda in [0, 1] on held-out validation data.
    The default 0.3 sits in the 0.3-0.5 range later merging papers and toolkits use when
    merging several tasks without validation data; the search samples [0.1, 1.0].
    Negative lambda subtracts a task ("forgetting via negation" in the paper).

    >>> base = torch.tensor([0.0, 1.0, 2.0])
    >>> task_arithmetic(base, [torch.tensor([1.0, 1.0, 4.0]), torch.tensor([0.0, 3.0, 2.0])], scaling=0.5)
    tensor([0.5000, 2.0000, 3.0000])
    """
    w = check_inputs("task_arithmetic", base, tensors, weights)
    coefficients = [scaling * wt for wt in w]
    if all(c == 0.0 for c in coefficients):
        return base.to(torch.float32, copy=True)
    if coefficients == [1.0]:
        return tensors[0].to(torch.float32, copy=True)
    return delta_sum(base, tensors, coefficients)
