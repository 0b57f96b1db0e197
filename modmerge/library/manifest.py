"""The expert library's manifest: the one JSON file that says what every blob is and who uses it.

``LIB_DIR/manifest.json`` is written last (atomically, see :mod:`modmerge.library.build`), so a
directory with a valid manifest is a complete library. Blobs are named by the sha256 of their
bytes; the manifest refers to them by that hash only::

    configurations[i].chains[task] -> chain id -> chains[id] = [module hash per unit, unit order]
    modules[hash] = {unit, members, bytes, dtypes, quantised_units, tensors}
    tasks[i].head -> head blob hash;  router.blob -> router blob hash

A chain id is the sha256 of the chain's module hashes joined in unit order, so tasks (and
configurations) with the same expert chain share one id: the many-to-one task-pattern mapping.

>>> m = LibraryManifest.model_validate_json(Path("lib/manifest.json").read_text())  # doctest: +SKIP
>>> m.configurations[0].chains["mnist"]  # doctest: +SKIP
'9f2c...'
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modmerge.errors import ModmergeError
from modmerge.tasks.spec import BackboneInfo

FORMAT = 1
# a blob's file name is its sha256: anything else (``../``, ``/abs``) would name a path outside blobs/
BLOB_NAME = re.compile(r"[0-9a-f]{64}")


class LibraryError(ModmergeError):
    """An expert library is missing, damaged (tampered or truncated blob) or asked for something it lacks."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskInfo(_Model):
    """What inference needs to know about one task, and its head blob."""

    name: str
    modality: Literal["text", "image"]
    metric: str
    num_labels: int = Field(ge=1)
    pooling: str
    max_length: int = Field(description="tokeniser truncation the task was fine-tuned and evaluated with")
    labels: list[str] = Field(default_factory=list, description="class names, when the zoo has them")
    head: str = Field(description="blob hash of the head: classifier.* plus the body's head-kind keys (pooler.*)")
    head_bytes: int = Field(ge=0)


class ConfigEntry(_Model):
    """One Pareto configuration: its grouping matrix, objectives and each task's expert chain."""

    id: str
    grouping: list[list[int]] = Field(description="T x L grouping matrix, rows = tasks in manifest order")
    storage_cost: float = Field(description="eq. (8): bits held / bits of one full-precision pretrained body")
    validation: dict[str, Any]
    test: dict[str, Any] | None = None
    seed: int = Field(description="seed of the search run it came from (the ExpertBuilder's seed)")
    chains: dict[str, str] = Field(description="task -> chain id")
    modules: list[str] = Field(description="distinct module blob hashes this configuration uses")


class ModuleEntry(_Model):
    """One stored modular expert (a unit merged over a group, then compressed by Q)."""

    unit: str
    members: list[list[int]] = Field(
        description="task-index groups whose module has these bytes (usually one; several when equal modules coincide)"
    )
    bytes: int = Field(ge=0, description="size of the blob file")
    dtypes: dict[str, str] = Field(description="tensor name -> stored dtype of its values (codes or full precision)")
    quantised_units: int
    tensors: list[str] = Field(description="tensor names of the body this module fills")


class RouterEntry(_Model):
    """The task router's weights (a blob) and its configuration."""

    blob: str
    bytes: int = Field(ge=0)
    config: dict[str, Any]
    test_accuracy: float | None = None
    report: dict[str, Any] = Field(default_factory=dict, description="fit_zoo_router's report (per-task accuracy, times)")
    backbone_blob: str | None = Field(
        default=None, description="the pretrained body whose features the router reads, so routing needs no zoo"
    )
    backbone_bytes: int = Field(default=0, ge=0)


class LibraryManifest(_Model):
    """``LIB_DIR/manifest.json``; the library's single source of truth."""

    format: Literal[1] = FORMAT
    zoo: str = Field(description="the name of the task source (a suite's or a zoo's) the search ran on")
    source: dict[str, Any] | None = Field(default=None, description="how to reopen that source ({'suite': path} "
                                          "or {'zoo': name, 'store': root}); absent in libraries built before suites")
    backbone: BackboneInfo
    tasks: list[TaskInfo]
    units: list[str]
    unit_keys: dict[str, list[str]]
    method: dict[str, Any] = Field(description="{'name': F, 'parameters': {...}}")
    quantization: dict[str, Any]
    granularity: str
    body_parameters: int = Field(description="d of eq. (8): parameters of the merged body (head-kind keys excluded)")
    pretrained_body_bits: int = Field(description="b_plus * d: bits of one pretrained body in its checkpoint's dtype (eq. 8's unit)")
    configurations: list[ConfigEntry]
    chains: dict[str, list[str]]
    modules: dict[str, ModuleEntry]
    router: RouterEntry | None = None

    def task(self, name: str) -> TaskInfo:
        for entry in self.tasks:
            if entry.name == name:
                return entry
        raise LibraryError(f"library of '{self.zoo}' has no task '{name}' (tasks: {', '.join(self.task_names)})")

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def blob_references(self) -> Iterator[tuple[str, str]]:
        """(where, blob name) for every reference to a blob: modules, chain members, configurations'
        modules, task heads and the router's blobs."""
        yield from (("modules", h) for h in self.modules)
        for cid, hashes in self.chains.items():
            yield from ((f"chain {cid[:12]}", h) for h in hashes)
        for c in self.configurations:
            yield from ((f"configuration {c.id} modules", h) for h in c.modules)
        yield from ((f"task '{t.name}' head", t.head) for t in self.tasks)
        if self.router is not None:
            yield "router blob", self.router.blob
            if self.router.backbone_blob is not None:
                yield "router backbone_blob", self.router.backbone_blob

    def unsafe_blob_name(self) -> str | None:
        """One line naming the first blob reference that is not a sha256 hex digest, or None.

        >>> manifest.unsafe_blob_name()  # doctest: +SKIP
        "task 'mnist' head: blob name '../../etc/x' is not a sha256 hex digest"
        """
        for where, name in self.blob_references():
            if not BLOB_NAME.fullmatch(name):
                return f"{where}: blob name {name[:80]!r} is not a sha256 hex digest"
        return None

    def blob_sizes(self) -> dict[str, int]:
        """Every blob the manifest references -> its recorded size in bytes."""
        sizes = {h: m.bytes for h, m in self.modules.items()}
        sizes.update({t.head: t.head_bytes for t in self.tasks})
        if self.router is not None:
            sizes[self.router.blob] = self.router.bytes
            if self.router.backbone_blob is not None:
                sizes[self.router.backbone_blob] = self.router.backbone_bytes
        return sizes


def chain_id(module_hashes: Sequence[str]) -> str:
    """The id of an expert chain: sha256 of its module hashes joined in unit order.

    >>> chain_id(["a", "b"]) == chain_id(["a", "b"]) != chain_id(["b", "a"])
    True
    """
    return hashlib.sha256("".join(module_hashes).encode()).hexdigest()
