"""An in-memory :class:`TensorSource`: lets merges, baselines and the search reuse the
checkpoint-based executor on state dicts already loaded.

>>> ckpt = in_memory({"w": torch.ones(2)}, label="tuned")
>>> ckpt.get("w")
tensor([1., 1.])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from modmerge.checkpoints.source import Checkpoint, TensorInfo
from modmerge.errors import CheckpointError


class MemorySource:
    """Named tensors held in memory (never copied by ``get``)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], label: str = "memory") -> None:
        self.label = label
        self._tensors = dict(tensors)

    def keys(self) -> list[str]:
        return list(self._tensors)

    def info(self, key: str) -> TensorInfo:
        t = self._get(key)
        return TensorInfo(tuple(t.shape), t.dtype)

    def get(self, key: str) -> torch.Tensor:
        return self._get(key)

    def close(self) -> None:
        """Nothing to release: the caller owns the tensors."""

    def _get(self, key: str) -> torch.Tensor:
        try:
            return self._tensors[key]
        except KeyError:
            raise CheckpointError(f"{self.label}: no tensor '{key}'") from None


def in_memory(
    tensors: Mapping[str, torch.Tensor], *, label: str = "memory", config: dict[str, Any] | None = None
) -> Checkpoint:
    """Wrap a state dict as a :class:`Checkpoint`."""
    return Checkpoint(source=MemorySource(tensors, label), label=label, config=config)
