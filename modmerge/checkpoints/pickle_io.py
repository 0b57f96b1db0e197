"""PyTorch pickle checkpoints (``pytorch_model.bin``, ``*.pt``), read only on explicit opt-in.

Unpickling can run arbitrary code, so callers must pass ``allow_pickle=True`` (CLI
``--allow-pickle``); even then we load with ``weights_only=True`` and memory-map the zip
archive so tensor storage is paged in lazily rather than copied.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from modmerge.checkpoints.source import TensorInfo
from modmerge.errors import CheckpointError

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def refuse_pickle(path: Path) -> CheckpointError:
    """The error for a pickle checkpoint opened without ``allow_pickle``."""
    return CheckpointError(
        f"{path}: pickle checkpoints can run arbitrary code when loaded; pass allow_pickle=True "
        "(CLI: --allow-pickle) if you trust this file, or convert it to safetensors"
    )


def load_pickle_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True`` (memory-mapped when the file is a zip archive).

    A top-level ``{"state_dict": {...}}`` wrapper (Lightning-style checkpoints) is unwrapped;
    non-tensor entries are dropped.
    """
    # The legacy (pre-1.6) format cannot be memory-mapped; it is loaded into memory instead.
    use_mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, weights_only=True, mmap=use_mmap, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot load pickle checkpoint ({first_line})") from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: pickle checkpoint holds a {type(obj).__name__}, not a state dict"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: pickle checkpoint holds no tensors")
    return tensors


class PickleSource:
    """A :class:`TensorSource` over one or more pickle files (shards), loaded on first use.

    Example::

        >>> src = PickleSource(Path("pytorch_model.bin"))  # doctest: +SKIP
        >>> src.get("classifier.weight").shape  # doctest: +SKIP
    """

    def __init__(self, path: Path, weight_map: Mapping[str, Path] | None = None) -> None:
        self.label = str(path)
        self._files: list[Path] = sorted(set(weight_map.values())) if weight_map else [path]
        self._loaded: dict[Path, dict[str, torch.Tensor]] = {}
        self._where: dict[str, Path] = {}
        if weight_map is None:
            self._where = dict.fromkeys(self._load(path), path)
        else:
            for key, shard in weight_map.items():
                self._where[key] = shard

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def keys(self) -> list[str]:
        return list(self._where)

    def info(self, key: str) -> TensorInfo:
        t = self.get(key)
        return TensorInfo(tuple(t.shape), t.dtype)

    def get(self, key: str) -> torch.Tensor:
        if key not in self._where:
            raise CheckpointError(f"{self.label}: no tensor '{key}'")
        shard = self._where[key]
        tensors = self._load(shard)
        if key not in tensors:
            raise CheckpointError(f"{shard}: tensor '{key}' listed in the index is missing")
        return tensors[key]

    def close(self) -> None:
        self._loaded.clear()

    def _load(self, path: Path) -> dict[str, torch.Tensor]:
        if path not in self._loaded:
            self._loaded[path] = load_pickle_state_dict(path)
        return self._loaded[path]
