"""Checkpoint readers, validation and the model-directory writer.

Everything here is lazy and per tensor: ``open_checkpoint`` reads headers only, ``get`` returns
zero-copy views where the format allows, and ``write_model_directory`` streams tensors to disk.

Example::

    >>> from modmerge.checkpoints import open_checkpoint, validate_checkpoints
    >>> base = open_checkpoint("runs/base")  # doctest: +SKIP
    >>> tuned = [open_checkpoint(p) for p in ("runs/a", "runs/b")]  # doctest: +SKIP
    >>> validate_checkpoints(base, tuned)  # doctest: +SKIP
"""

from modmerge.checkpoints.memory import MemorySource, in_memory
from modmerge.checkpoints.peft_adapter import AdapterSource, open_adapter
from modmerge.checkpoints.pickle_io import PickleSource
from modmerge.checkpoints.resolve import ShardedSource, open_checkpoint
from modmerge.checkpoints.safetensors_io import (
    SafetensorsFile,
    SafetensorsHeader,
    StreamingSafetensorsWriter,
    read_safetensors_header,
)
from modmerge.checkpoints.source import Checkpoint, TensorInfo, TensorSource
from modmerge.checkpoints.validate import check_finite, validate_checkpoints
from modmerge.checkpoints.writer import plan_shards, write_model_directory

__all__ = [
    "AdapterSource",
    "Checkpoint",
    "MemorySource",
    "PickleSource",
    "SafetensorsFile",
    "SafetensorsHeader",
    "ShardedSource",
    "StreamingSafetensorsWriter",
    "TensorInfo",
    "TensorSource",
    "check_finite",
    "in_memory",
    "open_adapter",
    "open_checkpoint",
    "plan_shards",
    "read_safetensors_header",
    "validate_checkpoints",
    "write_model_directory",
]
