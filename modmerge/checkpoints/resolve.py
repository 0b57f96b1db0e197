"""``open_checkpoint``: turn a user's spec (file, HF directory, PEFT adapter, hub id) into a
lazy :class:`Checkpoint`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from modmerge.checkpoints.peft_adapter import adapter_base_spec, open_adapter
from modmerge.checkpoints.pickle_io import PICKLE_SUFFIXES, PickleSource, refuse_pickle
from modmerge.checkpoints.safetensors_io import SafetensorsFile
from modmerge.checkpoints.source import Checkpoint, TensorInfo, TensorSource, read_json
from modmerge.errors import CheckpointError

logger = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# What a merge needs from a hub repo: weights, configs, tokenizer and processor files.
HUB_PATTERNS = ["*.safetensors", "*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ShardedSource:
    """One :class:`TensorSource` over several shard files, routed by an index's weight map."""

    def __init__(
        self, label: str, shards: Mapping[str, TensorSource], weight_map: Mapping[str, str]
    ):
        self.label = label
        self._shards = dict(shards)
        self._where = {key: self._shards[name] for key, name in weight_map.items()}
        held = {name: set(src.keys()) for name, src in self._shards.items()}
        for key, name in weight_map.items():
            if key not in held[name]:
                raise CheckpointError(
                    f"{self._shards[name].label}: tensor '{key}' listed in the index is missing"
                )

    def keys(self) -> list[str]:
        return list(self._where)

    def info(self, key: str) -> TensorInfo:
        return self._source(key).info(key)

    def get(self, key: str) -> torch.Tensor:
        return self._source(key).get(key)

    def release(self, key: str) -> None:
        release = getattr(self._source(key), "release", None)
        if release is not None:
            release(key)

    def close(self) -> None:
        for src in self._shards.values():
            src.close()

    def _source(self, key: str) -> TensorSource:
        try:
            return self._where[key]
        except KeyError:
            raise CheckpointError(f"{self.label}: no tensor '{key}'") from None


def open_checkpoint(
    spec: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    base: Checkpoint | None = None,
    revision: str | None = None,
) -> Checkpoint:
    """Open a checkpoint lazily: a safetensors/pickle file, an HF model directory (single or
    sharded), a PEFT adapter directory (applied to ``base`` or to the adapter's own base model),
    or a hub id such as ``"org/name"`` resolved through the local Hugging Face cache.

    Pickle files (``.bin``/``.pt``) are refused unless ``allow_pickle=True``. ``revision`` picks a
    hub branch, tag or commit.

    Example::

        >>> ckpt = open_checkpoint("runs/bert-sst2")  # doctest: +SKIP
        >>> ckpt.info("embeddings.word_embeddings.weight").shape  # doctest: +SKIP
        (30522, 768)
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return _open_directory(path, allow_pickle=allow_pickle, base=base)
    if path.is_file():
        source = _open_file(path, allow_pickle=allow_pickle)
        return Checkpoint(source=source, label=str(path), files=[path])
    if not path.is_absolute() and _HUB_ID.match(str(spec)):
        snapshot = _download_snapshot(str(spec), revision)
        return _open_directory(snapshot, allow_pickle=allow_pickle, base=base)
    raise CheckpointError(f"{spec}: no such file or directory (and not a hub id like 'org/name')")


def _open_file(path: Path, *, allow_pickle: bool) -> TensorSource:
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise refuse_pickle(path)
        return PickleSource(path)
    raise CheckpointError(f"{path}: unknown checkpoint format (expected .safetensors, .bin or .pt)")


def _open_directory(path: Path, *, allow_pickle: bool, base: Checkpoint | None) -> Checkpoint:
    if (path / "adapter_config.json").is_file():
        if base is not None:
            return open_adapter(path, base=base, allow_pickle=allow_pickle)
        spec, revision = adapter_base_spec(path)
        try:
            owned = open_checkpoint(spec, allow_pickle=allow_pickle, revision=revision)
        except CheckpointError as err:
            raise CheckpointError(f"{path}: cannot open the adapter's base model: {err}") from err
        return open_adapter(path, base=owned, allow_pickle=allow_pickle, owns_base=True)
    source, files = _directory_weights(path, allow_pickle=allow_pickle)
    config_path = path / "config.json"
    config = read_json(config_path) if config_path.is_file() else None
    return Checkpoint(source=source, label=str(path), config=config, directory=path, files=files)


def _directory_weights(path: Path, *, allow_pickle: bool) -> tuple[TensorSource, list[Path]]:
    if (path / SAFETENSORS_INDEX).is_file():
        return _open_sharded(path, path / SAFETENSORS_INDEX, SafetensorsFile)
    if (path / "model.safetensors").is_file():
        return SafetensorsFile(path / "model.safetensors"), [path / "model.safetensors"]
    singles = sorted(path.glob("*.safetensors"))
    if len(singles) == 1:
        return SafetensorsFile(singles[0]), singles
    if len(singles) > 1:
        raise CheckpointError(
            f"{path}: {len(singles)} .safetensors files but no {SAFETENSORS_INDEX} to say how they fit"
        )
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if not pickles and not (path / PICKLE_INDEX).is_file():
        raise CheckpointError(f"{path}: no model weights found (.safetensors, .bin or .pt)")
    if not allow_pickle:
        raise refuse_pickle(path / PICKLE_INDEX if (path / PICKLE_INDEX).is_file() else pickles[0])
    if (path / PICKLE_INDEX).is_file():
        index = path / PICKLE_INDEX
        weight_map = {key: path / name for key, name in _weight_map(index).items()}
        _require_shards(index, set(weight_map.values()))
        source = PickleSource(path, weight_map)
        return source, source.files
    if (path / "pytorch_model.bin").is_file():
        pickles = [path / "pytorch_model.bin"]
    if len(pickles) > 1:
        names = ", ".join(p.name for p in pickles[:3])
        raise CheckpointError(f"{path}: several pickle files ({names}) and no index; pass one file")
    return PickleSource(pickles[0]), pickles


def _open_sharded(
    path: Path, index: Path, reader: type[SafetensorsFile]
) -> tuple[TensorSource, list[Path]]:
    weight_map = _weight_map(index)
    names = sorted(set(weight_map.values()))
    _require_shards(index, {path / n for n in names})
    shards: dict[str, TensorSource] = {n: reader(path / n) for n in names}
    return ShardedSource(str(path), shards, weight_map), [path / n for n in names]


def _weight_map(index: Path) -> dict[str, str]:
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{index}: missing or malformed 'weight_map'")
    return weight_map


def _require_shards(index: Path, shards: set[Path]) -> None:
    missing = sorted(p.name for p in shards if not p.is_file())
    if missing:
        raise CheckpointError(
            f"{index}: shard file '{missing[0]}' is missing ({len(missing)} missing)"
        )


def _download_snapshot(repo_id: str, revision: str | None) -> Path:
    # Imported lazily: resolving a hub id is the only thing that needs huggingface_hub.
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS)
    # Every hub failure (not found, offline and not cached, HTTP) is an OSError subclass.
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        at = f"@{revision}" if revision else ""
        raise CheckpointError(
            f"{repo_id}{at}: not a local path and cannot be resolved from the Hugging Face Hub "
            f"or its cache ({reason})"
        ) from err
    return Path(folder)
