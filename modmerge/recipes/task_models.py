"""Merging ordinary task checkpoints: bodies merged, heads and poolers kept per task.

Users' fine-tuned models are usually ``AutoModelFor...Classification`` directories (body under a
prefix such as ``bert.``, plus ``classifier.*``), while the base is the bare pretrained body.
:func:`split_task_models` recognises that case and splits each model into a body view with the
base's names and what is task-specific. Only the body is merged, and of the body only what is
not of component kind ``head``: BERT's pooler belongs to each task, as in the baselines and the
search. :func:`write_task_models` then writes, under ``OUT_DIR``, one loadable model per task
(the merged body with that task's own pooler and classifier, in the task model's own format and
config), or with ``body_only`` the merged body alone (with the base's pooler, so it loads as the
base's class).

>>> parts = split_task_models(base, models, cmap)        # doctest: +SKIP
>>> parts.names                                          # doctest: +SKIP
['sst2', 'mrpc']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from modmerge.atomic import output_error, remove_dead_staging, staging_dir, write_text
from modmerge.checkpoints import Checkpoint, TensorInfo, open_checkpoint, write_model_directory
from modmerge.checkpoints.task_model import (
    HEAD_MODULES,
    PrefixedView,
    TaskModelParts,
    body_prefix,
    split_task_model,
)
from modmerge.checkpoints.writer import move_into_place
from modmerge.components import ComponentMap
from modmerge.errors import CheckpointError


@dataclass
class TaskModels:
    """Task checkpoints split against the base (see the module doc)."""

    names: list[str]
    parts: list[TaskModelParts]
    merged_keys: list[str]  # base keys that are merged (not of kind head)
    kept_keys: list[str]  # base keys of kind head: taken per task (its own), never merged

    def bodies(self) -> list[Checkpoint]:
        return [p.body for p in self.parts]


def _is_task_model(model: Checkpoint, base_keys: Sequence[str]) -> bool:
    """A body under a prefix (``bert.``), or the base's names plus tensors under a head module
    (:data:`HEAD_MODULES`); any other extra tensor is left to the ordinary merge to refuse."""
    prefix = body_prefix(model.keys(), base_keys)
    if prefix:
        return True
    inside = set(base_keys)
    extra = [k for k in model.keys() if k not in inside and not k.endswith("position_ids")]
    return bool(extra) and all(k.startswith(HEAD_MODULES) for k in extra)


def split_task_models(base: Checkpoint, models: Sequence[Checkpoint], cmap: ComponentMap,
                      labels: Sequence[str]) -> TaskModels | None:
    """The models split into bodies and heads when they are task checkpoints of ``base``; None
    when they are plain bodies with the base's own names (an ordinary merge)."""
    base_keys = base.keys()
    if not any(_is_task_model(m, base_keys) for m in models):
        return None
    kept = [k for k in base_keys if cmap.component_of(k).kind == "head"]
    parts = [split_task_model(m, base_keys, optional=kept) for m in models]
    names, seen = [], set()
    for i, label in enumerate(labels):
        name = Path(str(label).rstrip("/")).name or f"model{i}"
        name = name if name not in seen else f"{name}-{i}"
        seen.add(name)
        names.append(name)
    return TaskModels(names=names, parts=parts, merged_keys=[k for k in base_keys if k not in kept], kept_keys=kept)


def body_view(ckpt: Checkpoint, keys: Sequence[str]) -> Checkpoint:
    """``ckpt`` restricted to ``keys`` (same names), lazily; its config without ``architectures``
    (a task model's class differs from the bare base's, while the bodies compared are alike)."""
    config = None if ckpt.config is None else {k: v for k, v in ckpt.config.items() if k != "architectures"}
    return Checkpoint(source=PrefixedView(ckpt, "", keys), label=ckpt.label, config=config,
                      directory=ckpt.directory, files=ckpt.files)


def write_task_models(
    out_dir: Path, merged: Iterable[tuple[str, torch.Tensor]], specs: dict[str, TensorInfo], tasks: TaskModels,
    base: Checkpoint, *, body_only: bool, overwrite: bool, metadata: dict[str, str], max_shard_bytes: int,
    base_config: dict | None, progress: Callable[[str, int], None] | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write the merged body (``merged``, the base's names) as per-task models or the body alone,
    all into a staging folder first, so ``out_dir`` appears complete or not at all; ``extra_files``
    (name -> text) go to ``out_dir`` itself."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise CheckpointError(f"{out_dir}: directory exists and is not empty (use overwrite)")
    remove_dead_staging(out_dir)
    staging = staging_dir(out_dir)
    try:
        if body_only:
            kept = {k: base.get(k) for k in tasks.kept_keys}
            all_specs = {**specs, **{k: TensorInfo(tuple(v.shape), v.dtype) for k, v in kept.items()}}
            write_model_directory(staging / "body", _chain(merged, kept.items()), all_specs, config=base_config,
                                  copy_files_from=base.directory, metadata=metadata, max_shard_bytes=max_shard_bytes,
                                  progress=progress, extra_files=extra_files)
            _flatten(staging / "body", staging)
            written = [out_dir]
        else:
            write_model_directory(staging / ".merged-body", merged, specs, metadata=metadata,
                                  max_shard_bytes=max_shard_bytes, progress=progress)
            written = []
            with open_checkpoint(staging / ".merged-body") as body:
                for name, part in zip(tasks.names, tasks.parts, strict=True):
                    written.append(_write_one(staging / name, body, part, tasks, metadata, max_shard_bytes))
            _remove(staging / ".merged-body")
            written = [out_dir / p.name for p in written]
            for name, text in (extra_files or {}).items():
                write_text(staging / name, text)
        move_into_place(staging, out_dir)
    except OSError as err:  # a full disk, a read-only mount: one line naming the file
        _remove(staging)
        raise output_error(err, out_dir) from err
    except BaseException:
        _remove(staging)
        raise
    return written


def _write_one(out: Path, body: Checkpoint, part: TaskModelParts, tasks: TaskModels, metadata: dict[str, str],
               max_shard_bytes: int) -> Path:
    prefix = part.prefix
    own = {k: part.body.get(k) for k in tasks.kept_keys if k in part.body.keys()}

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for k in tasks.merged_keys:
            yield prefix + k, body.get(k)
        for k, v in own.items():
            yield prefix + k, v
        yield from part.head.items()

    specs = {prefix + k: body.info(k) for k in tasks.merged_keys}
    specs.update({prefix + k: TensorInfo(tuple(v.shape), v.dtype) for k, v in own.items()})
    specs.update({k: TensorInfo(tuple(v.shape), v.dtype) for k, v in part.head.items()})
    return write_model_directory(out, tensors(), specs, config=part.body.config, copy_files_from=part.body.directory,
                                 metadata=metadata, max_shard_bytes=max_shard_bytes)


def _chain(*streams: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    for stream in streams:
        yield from stream


def _flatten(inner: Path, outer: Path) -> None:
    for child in inner.iterdir():
        child.rename(outer / child.name)
    inner.rmdir()


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
