"""The table of benchmark zoos: name -> builder and one-line description.

``modmerge zoo build NAME [--cache DIR]`` calls :func:`build_zoo`; ``modmerge zoo list`` shows
:func:`list_zoos`. A builder takes the zoo store, the asset store, a seed and an optional progress
display, and returns the built :class:`~modmerge.zoo.store.Zoo` (skipping work already done).

Example::

    >>> [row.name for row in list_zoos(ZooStore.default())]   # doctest: +SKIP
    ['tiny', 'vision']
    >>> zoo = build_zoo("tiny", ZooStore.default(), seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from modmerge.zoo.assets import AssetStore
from modmerge.zoo.peft_zoo import build_peft
from modmerge.zoo.store import Zoo, ZooError, ZooStore
from modmerge.zoo.suite_export import write_suite
from modmerge.zoo.text import build_text
from modmerge.zoo.tiny import build_tiny
from modmerge.zoo.vision import build_vision

Builder = Callable[[ZooStore, AssetStore, int, Progress | None], Zoo]


@dataclass(frozen=True)
class ZooSpec:
    """A registered zoo: how to build it and what it is."""

    name: str
    description: str
    build: Builder


@dataclass(frozen=True)
class ZooRow:
    """One line of ``modmerge zoo list``."""

    name: str
    description: str
    built: bool
    tasks: int
    backbone: str
    size_bytes: int


ZOOS: Mapping[str, ZooSpec] = {
    spec.name: spec
    for spec in (
        ZooSpec("tiny", "synthetic 4-task text zoo on a random-init 2-layer BERT, for tests (seconds)",
                lambda store, assets, seed, progress: build_tiny(store, seed=seed, progress=progress)),
        ZooSpec("vision", "self-pretrained 6-layer ViT fully fine-tuned on 7 image tasks (~5-10 min)",
                lambda store, assets, seed, progress: build_vision(store, assets, seed=seed, progress=progress)),
        ZooSpec("text", "real all-MiniLM-L6-v2 fully fine-tuned on 8 text tasks (~20-40 min)",
                lambda store, assets, seed, progress: build_text(store, assets, seed=seed, progress=progress)),
        ZooSpec("peft-lora", "all-MiniLM-L6-v2 + LoRA (r=8, every encoder linear) on the text zoo's tasks",
                lambda store, assets, seed, progress: build_peft(store, assets, "lora", seed=seed, progress=progress)),
        ZooSpec("peft-ia3", "all-MiniLM-L6-v2 + (IA)^3 (keys, values, FFN) on the text zoo's tasks",
                lambda store, assets, seed, progress: build_peft(store, assets, "ia3", seed=seed, progress=progress)),
    )
}  # fmt: skip

# Names that build several zoos: `modmerge zoo build peft` builds both PEFT zoos.
GROUPS: Mapping[str, tuple[str, ...]] = {"peft": ("peft-lora", "peft-ia3")}

# Zoos the issue plans that are not registered yet, so asking for one gives a clear answer.
PLANNED: Mapping[str, str] = {}


def get_zoo(name: str) -> ZooSpec:
    """The registered zoo ``name``; a one-line error for planned or unknown names."""
    if name in ZOOS:
        return ZOOS[name]
    if name in PLANNED:
        raise ZooError(f"zoo '{name}' ({PLANNED[name]}) is not yet available; available: {', '.join(ZOOS)}")
    raise ZooError(f"unknown zoo '{name}'; available: {', '.join([*ZOOS, *GROUPS])}")


def build_zoo(
    name: str, store: ZooStore, *, seed: int = 0, progress: Progress | None = None,
    assets: AssetStore | None = None, force: bool = False,
) -> Zoo:
    """Build zoo ``name`` under ``store`` (resuming a partial build); return it when built.

    ``assets`` defaults to ``<store root>/assets``, the same cache the datasets use. ``force``
    deletes the zoo's directory first, for a clean rebuild. The zoo's build lock
    (:meth:`ZooStore.build_lock`) is held throughout, so two processes never write one zoo. A group name (:data:`GROUPS`, e.g.
    ``peft``) builds each of its zoos in turn and returns the last. A text zoo is also written as
    a task suite, ``<zoo>/suite/suite.yaml`` (:func:`~modmerge.zoo.suite_export.write_suite`).

    >>> build_zoo("tiny", ZooStore(tmp_path)).tasks   # doctest: +SKIP
    ['has_animal', 'has_color', 'first_group', 'food_over_tool']
    """
    if name in GROUPS:  # each member in turn; the last one is returned
        return [build_zoo(member, store, seed=seed, progress=progress, assets=assets, force=force)
                for member in GROUPS[name]][-1]  # fmt: skip
    spec = get_zoo(name)
    with store.build_lock(name):  # a concurrent build of the same zoo waits, then finds it built
        if force and store.zoo_dir(name).exists():
            shutil.rmtree(store.zoo_dir(name))
        zoo = spec.build(store, assets or AssetStore(store.root / "assets"), seed, progress)
        if isinstance(zoo, Zoo) and all(zoo.entry(t).modality == "text" for t in zoo.tasks) and not (zoo.root / "suite" / "suite.yaml").is_file():
            write_suite(zoo)  # every text zoo is also a task suite (suite/suite.yaml)
        return zoo


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def list_zoos(store: ZooStore) -> list[ZooRow]:
    """Every registered zoo with whether it is built under ``store``, its task count, backbone
    and size on disk (partial builds count their size but show ``built=False``)."""
    rows = []
    for spec in ZOOS.values():
        directory = store.zoo_dir(spec.name)
        built = (directory / "manifest.json").is_file()
        zoo = store.load(spec.name) if built else None
        rows.append(ZooRow(
            name=spec.name, description=spec.description, built=built,
            tasks=len(zoo.tasks) if zoo else 0, backbone=zoo.manifest.backbone.name if zoo else "",
            size_bytes=_size(directory),
        ))
    return rows
