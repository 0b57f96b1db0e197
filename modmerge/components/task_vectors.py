"""Task vectors ``tau_t = theta_t - theta_pre`` (paper eq. 2), per tensor and per merge unit.

``unit_task_vectors`` flattens one unit's deltas into a (T, d) matrix: the rows the search
clusters (K-means) to seed grouping matrices. Tensors are read one name at a time from sources
that expose ``.get(key)``, so no whole model is held in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch import Tensor

from modmerge.errors import CompatibilityError


class _Gettable(Protocol):
    def get(self, key: str) -> Tensor: ...


def _read(source: _Gettable, key: str, which: str) -> Tensor:
    # A plain dict's .get returns None for a missing name; checkpoint sources raise themselves.
    tensor = source.get(key)
    if tensor is None:
        raise CompatibilityError(f"tensor {key!r} is missing from {which}")
    return tensor


def _delta(base: Tensor, tuned: Tensor, key: str) -> Tensor:
    if base.shape != tuned.shape:
        raise CompatibilityError(
            f"tensor {key!r}: shape {tuple(tuned.shape)} does not match the base's {tuple(base.shape)}"
        )
    return tuned.to(torch.float32) - base.to(torch.float32)


def task_vector(
    base: Mapping[str, Tensor], model: Mapping[str, Tensor], keys: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Float32 deltas ``model[k] - base[k]`` for ``keys`` (default: every key of ``model``).

    >>> tv = task_vector({"w": torch.zeros(2)}, {"w": torch.tensor([1.0, -2.0])})
    >>> tv["w"]
    tensor([ 1., -2.])
    """
    names = list(model) if keys is None else list(keys)
    out: dict[str, Tensor] = {}
    for key in names:
        if key not in base:
            raise CompatibilityError(f"tensor {key!r} is missing from the base model")
        if key not in model:
            raise CompatibilityError(f"tensor {key!r} is missing from the fine-tuned model")
        out[key] = _delta(base[key], model[key], key)
    return out


def unit_task_vectors(
    base_source: _Gettable, model_sources: Sequence[_Gettable], keys: Sequence[str]
) -> Tensor:
    """The (T, d) float32 matrix whose row t is model t's flattened deltas over ``keys``.

    ``d`` is the total number of elements of ``keys``; columns follow the order of ``keys``.
    Each base tensor is read once.

    >>> base = {"a": torch.zeros(2), "b": torch.zeros(1)}
    >>> tuned = [{"a": torch.ones(2), "b": torch.full((1,), 3.0)}]
    >>> unit_task_vectors(base, tuned, ["a", "b"])
    tensor([[1., 1., 3.]])
    """
    columns: list[Tensor] = []
    for key in keys:
        base = _read(base_source, key, "the base model")
        rows = [
            _delta(base, _read(source, key, f"fine-tuned model {t}"), key).reshape(-1)
            for t, source in enumerate(model_sources)
        ]
        if rows:
            columns.append(torch.stack(rows))
        else:
            columns.append(torch.empty(0, base.numel(), dtype=torch.float32))
    if not columns:
        return torch.empty(len(model_sources), 0, dtype=torch.float32)
    return torch.cat(columns, dim=1)
