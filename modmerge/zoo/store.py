"""Where zoos live and how a built zoo is opened.

>>> zoo = ZooStore.default().load("vision")  # doctest: +SKIP
>>> body = zoo.task_body("mnist")  # a lazy Checkpoint  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file

from modmerge.cache import default_cache_root, sha256_file  # noqa: F401  (re-exported)
from modmerge.checkpoints import Checkpoint, open_checkpoint
from modmerge.checkpoints.task_model import WithBase
from modmerge.components import ComponentMap, decompose, load_architecture
from modmerge.tasks.spec import BackboneInfo, TaskEntry, TaskError
from modmerge.zoo.manifest import ZooManifest

logger = logging.getLogger(__name__)


class ZooError(TaskError):
    """A zoo is unknown, not built, or damaged."""


@dataclass(frozen=True)
class Zoo:
    """A built zoo: its manifest and directory, with lazy access to bodies, heads and data."""

    root: Path
    manifest: ZooManifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def tasks(self) -> list[str]:
        return self.manifest.task_names

    @property
    def backbone_dir(self) -> Path:
        return self.root / self.manifest.backbone.path

    @property
    def tokenizer_dir(self) -> Path:
        return self.backbone_dir

    @property
    def backbone_info(self) -> BackboneInfo:
        return self.manifest.backbone

    @property
    def cache_dir(self) -> Path:
        return self.root / "data" / "cache"

    def describe(self) -> dict[str, str]:
        """``{"zoo": name, "store": root}``: what :func:`open_zoo_description` reopens."""
        return {"zoo": self.name, "store": str(self.root.parent.parent)}

    def entry(self, task: str) -> TaskEntry:
        try:
            return self.manifest.task(task)
        except KeyError:
            raise ZooError(f"zoo '{self.name}' has no task '{task}' (tasks: {', '.join(self.tasks)})") from None

    def backbone(self) -> Checkpoint:
        """The pretrained body (lazy, per tensor)."""
        return open_checkpoint(self.root / self.manifest.backbone.path)

    def task_body(self, task: str) -> Checkpoint:
        """The task's fine-tuned body (lazy, per tensor; same keys as the backbone).

        A PEFT task stores an adapter directory (``adapter_config.json``); it opens as the dense
        body, backbone + the adapter's delta, so every consumer sees a normal body.
        """
        path = self.root / self.entry(task).body
        if (path / "adapter_config.json").is_file():
            base = self.backbone()
            try:
                dense = open_checkpoint(path, base=base)
            except Exception:
                base.close()
                raise
            source = WithBase(dense, base)
            return Checkpoint(source=source, label=dense.label, config=dense.config, directory=dense.directory,
                              files=dense.files)
        return open_checkpoint(path)

    def task_head(self, task: str) -> dict[str, torch.Tensor]:
        return load_file(self.root / self.entry(task).head)

    def task_data(self, task: str) -> dict:
        """The cached splits: ``{"train"|"validation"|"test": {"inputs": ..., "labels": ...}}``."""
        return torch.load(self.root / self.entry(task).data, weights_only=True)

    def component_map(self) -> ComponentMap:
        """The body's parameter names decomposed with the backbone's architecture."""
        with self.backbone() as bb:
            return decompose(bb.keys(), load_architecture(self.manifest.backbone.architecture))


class ZooStore:
    """Zoos under ``root/zoos/<name>``; explicit, so tests and users can point it anywhere."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def default(cls) -> ZooStore:
        return cls(default_cache_root())

    def zoo_dir(self, name: str) -> Path:
        return self.root / "zoos" / name

    @contextmanager
    def build_lock(self, name: str) -> Iterator[None]:
        """Hold zoo ``name``'s build lock (a file lock beside its folder) for the block: one writer
        per zoo, so a second build of the same zoo waits and then finds it built, and a writer's
        leftover cleanup never meets another live writer's files.

        >>> with ZooStore(tmp).build_lock("tiny"):  # doctest: +SKIP
        ...     build_tiny(ZooStore(tmp))
        """
        path = self.root / "zoos" / f".{name}.build.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.warning("zoo '%s': waiting for another build of it to finish (%s)", name, path)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def built(self) -> list[str]:
        base = self.root / "zoos"
        return sorted(p.name for p in base.iterdir() if (p / "manifest.json").exists()) if base.exists() else []

    def load(self, name: str) -> Zoo:
        path = self.zoo_dir(name) / "manifest.json"
        if not path.exists():
            raise ZooError(f"zoo '{name}' is not built under {self.root} (run: modmerge zoo build {name})")
        try:
            manifest = ZooManifest.model_validate(json.loads(path.read_text()))
        except (ValueError, OSError) as err:
            raise ZooError(f"{path}: unreadable zoo manifest ({str(err).splitlines()[0]})") from None
        return Zoo(root=path.parent, manifest=manifest)


def open_zoo_description(description: Mapping[str, Any]) -> Zoo:
    """The zoo a :meth:`Zoo.describe` object names (its store root, else the default store)."""
    store = ZooStore(Path(description["store"])) if description.get("store") else ZooStore.default()
    return store.load(str(description["zoo"]))
