"""Where zoos live and how a built zoo is opened.

>>> zoo = ZooStore.default().load("vision")  # doctest: +SKIP
>>> body = zoo.task_body("mnist")  # a lazy Checkpoint  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file

from modmerge.cache import default_cache_root, sha256_file  # noqa: F401  (re-exported)
from modmerge.checkpoints import Checkpoint, TensorInfo, open_checkpoint
from modmerge.components import ComponentMap, decompose, load_architecture
from modmerge.errors import ModmergeError
from modmerge.zoo.manifest import TaskEntry, ZooManifest

logger = logging.getLogger(__name__)


class ZooError(ModmergeError):
    """A zoo is unknown, not built, or damaged."""


class _ClosesBase:
    """An adapter's dense view that also closes the backbone it was opened over (which the
    adapter reader leaves open when given an explicit base)."""

    def __init__(self, dense: Checkpoint, base: Checkpoint) -> None:
        self.label, self._dense, self._base = dense.label, dense, base

    def keys(self) -> list[str]:
        return self._dense.keys()

    def info(self, key: str) -> TensorInfo:
        return self._dense.info(key)

    def get(self, key: str) -> torch.Tensor:
        return self._dense.get(key)

    def release(self, key: str) -> None:
        self._dense.release(key)

    def close(self) -> None:
        self._dense.close()
        self._base.close()


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
            source = _ClosesBase(dense, base)
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
