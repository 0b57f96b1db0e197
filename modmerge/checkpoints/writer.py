"""Write a loadable model directory atomically, streaming tensors into (sharded) safetensors.

Everything goes into a hidden temporary sibling first and is renamed into place only when
complete, so a failed merge never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from modmerge.atomic import atomic_file, output_error, remove_dead_staging, staging_dir, write_text
from modmerge.checkpoints.resolve import SAFETENSORS_INDEX
from modmerge.checkpoints.safetensors_io import StreamingSafetensorsWriter
from modmerge.checkpoints.source import TensorInfo
from modmerge.errors import CheckpointError
from modmerge.regular_files import UnsafeFileError, open_regular

logger = logging.getLogger(__name__)

# Files that make a model directory usable beyond its weights (tokenizer, processor, generation).
COPY_PATTERNS = (
    "tokenizer*.json",
    "tokenizer*.model",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",
    "*.tiktoken",
    "spiece.model",
    "preprocessor_config.json",
    "processor_config.json",
    "image_processor*.json",
    "feature_extractor*.json",
    "video_preprocessor_config.json",
    "generation_config.json",
    "chat_template.json",
    "chat_template.jinja",
)
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".gguf",
    ".onnx",
)


def plan_shards(specs: Mapping[str, TensorInfo], max_shard_bytes: int) -> list[list[str]]:
    """Group tensor names, in order, into shards of at most ``max_shard_bytes`` (a larger tensor
    gets a shard of its own).

    Example::

        >>> s = {n: TensorInfo((4,), torch.float32) for n in "abc"}
        >>> plan_shards(s, 32)
        [['a', 'b'], ['c']]
    """
    shards: list[list[str]] = [[]]
    size = 0
    for name, info in specs.items():
        if shards[-1] and size + info.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += info.nbytes
    return shards


def write_model_directory(
    out_dir: Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    specs: Mapping[str, TensorInfo],
    *,
    config: dict[str, Any] | None = None,
    copy_files_from: Path | None = None,
    metadata: Mapping[str, str] | None = None,
    max_shard_bytes: int = 4 * 2**30,
    overwrite: bool = False,
    progress: Callable[[str, int], None] | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Stream ``tensors`` (matching ``specs``, in any order) into a new HF model directory.

    Writes ``model.safetensors`` (or shards plus ``model.safetensors.index.json``), ``config.json``
    when ``config`` is given, the tokenizer/processor/generation files of ``copy_files_from``, and
    ``extra_files`` (file name -> text, such as a provenance marker), all appearing together.
    An existing non-empty ``out_dir`` is an error unless ``overwrite``; it is then swapped out
    only once the new directory is complete. If consuming ``tensors`` raises, nothing changes on
    disk and the exception propagates; an :class:`OSError` (a full disk, a read-only mount) does
    so as one :class:`~modmerge.errors.OutputError` line naming the file as it would have been
    called (``OUT_DIR/model.safetensors``, not its staging name). ``progress(name, nbytes)`` is
    called per tensor.

    Example::

        >>> sd = {"w": torch.ones(2, 2)}
        >>> specs = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
        >>> write_model_directory(Path("/tmp/merged"), sd.items(), specs, overwrite=True)  # doctest: +SKIP
        PosixPath('/tmp/merged')
    """
    out_dir = Path(out_dir)
    check_output_directory(out_dir, overwrite=overwrite)
    if max_shard_bytes <= 0:
        raise CheckpointError(f"{out_dir}: max_shard_bytes must be positive, got {max_shard_bytes}")
    with staged_directory(out_dir) as tmp:
        _write_weights(out_dir, tmp, tensors, specs, metadata or {}, max_shard_bytes, progress)
        if config is not None:
            write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        if copy_files_from is not None:
            copy_support_files(Path(copy_files_from), tmp)
        for name, text in (extra_files or {}).items():
            write_text(tmp / name, text)
    return out_dir


def check_output_directory(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that is a file, or a non-empty directory unless ``overwrite``.

    >>> check_output_directory(Path("/nonexistent/out"), overwrite=False)
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise CheckpointError(f"{out_dir}: directory exists and is not empty (use overwrite)")


@contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``out_dir``; when the block ends without an error it
    replaces ``out_dir`` (:func:`move_into_place`), when it raises it is removed and ``out_dir``
    is untouched; an :class:`OSError` (a full disk, a read-only mount) becomes one
    :class:`~modmerge.errors.OutputError` line naming the file under ``out_dir``. Callers check
    first whether ``out_dir`` may be replaced (:func:`check_output_directory`).

    >>> with staged_directory(Path(tempfile.mkdtemp()) / "adapter") as tmp:  # doctest: +SKIP
    ...     (tmp / "adapter_config.json").write_text("{}")
    """
    remove_dead_staging(out_dir)
    tmp = staging_dir(out_dir)
    try:
        yield tmp
        move_into_place(tmp, out_dir)
    except OSError as err:  # a full disk, a read-only mount: one line naming the file
        _remove_tree(tmp)
        raise output_error(err, out_dir) from err
    except BaseException:
        _remove_tree(tmp)
        raise


def _write_weights(
    out_dir: Path,
    tmp: Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    specs: Mapping[str, TensorInfo],
    metadata: Mapping[str, str],
    max_shard_bytes: int,
    progress: Callable[[str, int], None] | None,
) -> None:
    shards = plan_shards(specs, max_shard_bytes)
    n = len(shards)
    names = (
        ["model.safetensors"]
        if n == 1
        else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    writers: list[StreamingSafetensorsWriter] = []
    try:
        for file_name, shard in zip(names, shards, strict=True):
            writers.append(
                StreamingSafetensorsWriter(tmp / file_name, {k: specs[k] for k in shard}, metadata)
            )
        route = {key: w for w, shard in zip(writers, shards, strict=True) for key in shard}
        for key, tensor in tensors:
            if key not in route:
                raise CheckpointError(f"{out_dir}: tensor '{key}' is not in the declared specs")
            route[key].write(key, tensor)
            if progress is not None:
                progress(key, specs[key].nbytes)
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    if n > 1:
        index = {
            "metadata": {**metadata, "total_size": sum(info.nbytes for info in specs.values())},
            "weight_map": {key: names[i] for i, shard in enumerate(shards) for key in shard},
        }
        write_text(tmp / SAFETENSORS_INDEX, json.dumps(index, indent=2) + "\n")


def copy_support_files(src: Path, dst: Path, patterns: Sequence[str] = COPY_PATTERNS) -> list[str]:
    """Copy the files of model directory ``src`` whose names match ``patterns`` (no weights) into
    ``dst``, as regular files; return the names copied.

    Only files that really live in ``src`` are copied: a symlink is followed when it resolves to
    a regular file inside ``src`` (the file is the model's own either way), and skipped, with a
    warning, when it resolves anywhere else, so no link can pull an outside file's contents into
    the output. In a Hugging Face cache snapshot (``models--ORG--NAME/snapshots/REV``), whose
    files are links into the repository's ``blobs/``, links into that ``blobs/`` are followed too.
    FIFOs, devices and dangling links are skipped with a warning.

    >>> copy_support_files(Path("models/bert-sst2"), Path("out"))  # doctest: +SKIP
    ['special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json', 'vocab.txt']
    """
    if not src.is_dir():
        raise CheckpointError(f"{src}: copy_files_from is not a directory")
    roots = _roots(src)
    copied = []
    for item in sorted(src.iterdir()):
        if item.suffix in _WEIGHT_SUFFIXES or item.name.endswith(".index.json") or item.is_dir():
            continue
        if not any(fnmatch.fnmatch(item.name, pattern) for pattern in patterns):
            continue
        real = os.path.realpath(item)
        if not any(Path(real).is_relative_to(root) for root in roots):
            logger.warning("%s: not copied: a symlink to %s, outside %s", item, real, src)
            continue
        try:
            with open_regular(real) as fin, atomic_file(dst / item.name) as tmp, tmp.open("wb") as fout:
                shutil.copyfileobj(fin, fout)
        except (UnsafeFileError, FileNotFoundError) as err:
            logger.warning("%s: not copied: %s", item, err.strerror if isinstance(err, FileNotFoundError) else err)
            continue
        copied.append(item.name)
    return copied


def _roots(src: Path) -> list[Path]:
    """Where the files of ``src`` may really live: ``src``, and for a Hugging Face cache snapshot
    its repository's ``blobs/`` (both with symlinks resolved)."""
    real = Path(os.path.realpath(src))
    roots = [real]
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        roots.append(Path(os.path.realpath(real.parent.parent / "blobs")))
    return roots


def move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished directory ``tmp`` to ``out_dir``; an existing ``out_dir`` is renamed
    aside first (and put back if the rename fails), then removed. Callers decide whether an
    existing ``out_dir`` may be replaced."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
        os.rename(tmp, out_dir)
        return
    aside = out_dir.parent / f".{out_dir.name}.old-{secrets.token_hex(4)}"
    os.rename(out_dir, aside)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(aside, out_dir)  # put the previous model back before reporting the failure
        raise
    _remove_tree(aside)


def _remove_tree(path: Path) -> None:
    # Cleanup runs while another error propagates; a leftover temp dir is reported, not raised.
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        logger.warning("could not fully remove temporary directory %s", path)
