"""The contract every checkpoint reader meets: lazy, per-tensor access.

Merging T+1 checkpoints must never hold T+1 whole models in memory, so readers hand out one
tensor at a time (zero-copy where the file format allows it) and describe tensors without
reading them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from modmerge.errors import CheckpointError


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one stored tensor, known without reading its data."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@runtime_checkable
class TensorSource(Protocol):
    """Lazy access to named tensors. ``label`` names the file or directory in errors."""

    label: str

    def keys(self) -> list[str]: ...

    def info(self, key: str) -> TensorInfo: ...

    def get(self, key: str) -> torch.Tensor: ...

    def close(self) -> None: ...


@dataclass
class Checkpoint:
    """A model's tensors plus what is needed to write a loadable model directory.

    ``config`` is the parsed ``config.json`` (None for a bare safetensors file); ``directory`` is
    where config, tokenizer and processor files live, if any.
    """

    source: TensorSource
    label: str
    config: dict[str, Any] | None = None
    directory: Path | None = None
    files: list[Path] = field(default_factory=list)

    def keys(self) -> list[str]:
        return self.source.keys()

    def info(self, key: str) -> TensorInfo:
        return self.source.info(key)

    def get(self, key: str) -> torch.Tensor:
        return self.source.get(key)

    def release(self, key: str) -> None:
        """Let the reader drop ``key``'s resident pages, if it can (a no-op otherwise)."""
        release = getattr(self.source, "release", None)
        if release is not None:
            release(key)

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, turning any failure into a CheckpointError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read JSON ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data
