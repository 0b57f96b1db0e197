"""A task source: the pretrained body, T task models and their data, whatever their origin.

Everything past ``modmerge.tasks`` (the objectives, the search, the library, reuse) reads tasks
through this one interface. A user's task suite (:mod:`modmerge.tasks.suite`) and a built
benchmark zoo (``modmerge.zoo``) both provide it, so the pipeline never knows which it runs on.

``describe()`` returns a small JSON object from which :func:`reopen` (given the openers the CLI
registers) opens the same source again: a search's Ray workers, a run directory and a library
record it instead of a zoo name.

Example::

    >>> source = open_suite("suite.yaml")                                   # doctest: +SKIP
    >>> source.tasks, source.entry("sentiment").metric                      # doctest: +SKIP
    (['sentiment', 'topic'], 'accuracy')
    >>> with source.task_body("sentiment") as body: body.keys()[:2]         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from modmerge.checkpoints import Checkpoint
from modmerge.components import ComponentMap
from modmerge.tasks.spec import BackboneInfo, TaskEntry, TaskError


@runtime_checkable
class TaskSource(Protocol):
    """What the task runtime needs of a set of tasks (see the module doc)."""

    @property
    def name(self) -> str: ...

    @property
    def tasks(self) -> list[str]: ...

    @property
    def backbone_dir(self) -> Path:
        """HF directory with the pretrained body's config and tokenizer or processor."""
        ...

    @property
    def tokenizer_dir(self) -> Path:
        """Where the tokenizer (text tasks) is read from."""
        ...

    @property
    def backbone_info(self) -> BackboneInfo: ...

    @property
    def cache_dir(self) -> Path | None:
        """Where encoded inputs may be cached (None: not cached)."""
        ...

    def entry(self, task: str) -> TaskEntry: ...

    def backbone(self) -> Checkpoint:
        """The pretrained body (lazy, per tensor)."""
        ...

    def task_body(self, task: str) -> Checkpoint:
        """The task's fine-tuned body (lazy; the backbone's keys, head-kind keys such as BERT's
        pooler included)."""
        ...

    def task_head(self, task: str) -> dict[str, torch.Tensor]:
        """The task's classifier (``classifier.weight``, ``classifier.bias``), never merged."""
        ...

    def task_data(self, task: str) -> dict[str, Any]:
        """``{split: {"inputs": ..., "labels": tensor}}`` for the splits the task has."""
        ...

    def component_map(self) -> ComponentMap: ...

    def describe(self) -> dict[str, Any]:
        """A JSON object :func:`reopen` opens this source from (``{"suite": path}``, ``{"zoo": ...}``)."""
        ...


def entries(source: TaskSource) -> list[TaskEntry]:
    """Every task's entry, in task order."""
    return [source.entry(t) for t in source.tasks]


def source_modality(source: TaskSource) -> str:
    """The one modality of the source's tasks; a one-line error when they mix."""
    modalities = {source.entry(t).modality for t in source.tasks}
    if len(modalities) != 1:
        raise TaskError(f"'{source.name}' mixes modalities ({', '.join(sorted(modalities))})")
    return modalities.pop()


Opener = Callable[[Mapping[str, Any]], TaskSource]


def reopen(description: Mapping[str, Any], openers: Mapping[str, Opener]) -> TaskSource:
    """Open the source that ``description`` (from :meth:`TaskSource.describe`) names, with the
    opener registered for its kind (``openers["suite"]``, ``openers["zoo"]``)."""
    kinds = [k for k in ("suite", "zoo") if k in description]
    if len(kinds) != 1 or kinds[0] not in openers:
        raise TaskError(f"cannot open task source {dict(description)!r} (known: {', '.join(openers)})")
    return openers[kinds[0]](description)
