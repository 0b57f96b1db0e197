"""A contract-shaped, in-memory expert library over a zoo (for engine tests independent of the
on-disk library): modules built with the search's ExpertBuilder, chains as hashes of modules."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modmerge.experts.grouping import GroupingMatrix
from modmerge.experts.modules import ExpertBuilder, ModuleKey
from modmerge.objectives.performance import chain
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.tasks.taskpool import TaskPool


@dataclass
class FakeConfig:
    id: str
    grouping: list
    storage_cost: float
    validation: dict
    test: dict
    chains: dict[str, str]
    modules: list[str]


@dataclass
class FakeTask:
    name: str
    modality: str
    metric: str
    num_labels: int
    pooling: str
    max_length: int
    labels: list[str]
    head: str = ""


@dataclass
class FakeManifest:
    zoo: str
    source: dict | None = None


@dataclass
class FakeLibrary:
    backbone_dir: Path
    manifest: FakeManifest
    tasks: list[FakeTask]
    configurations: list[FakeConfig]
    chains: dict[str, list[str]]
    modules: dict[str, dict[str, torch.Tensor]]
    heads: dict[str, dict[str, torch.Tensor]]
    router: tuple[dict[str, torch.Tensor], dict] | None = None
    loads: list[str] = field(default_factory=list)

    def select(self, budget: float) -> FakeConfig:
        fits = [c for c in self.configurations if c.storage_cost <= budget]
        return max(fits, key=lambda c: c.validation["mean"])

    def chain(self, config_id: str, task: str) -> str:
        return next(c for c in self.configurations if c.id == config_id).chains[task]

    def chain_modules(self, chain_id: str) -> list[str]:
        return list(self.chains[chain_id])

    def module_state(self, blob: str) -> dict[str, torch.Tensor]:
        self.loads.append(blob)
        return {k: v.clone() for k, v in self.modules[blob].items()}

    def head_state(self, task: str) -> dict[str, torch.Tensor]:
        return dict(self.heads[task])

    def router_state(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        return self.router


def fake_library(
    zoo: Any, groupings: list[GroupingMatrix], root: Path, *, with_pooler: bool = True, call: MethodCall | None = None,
) -> FakeLibrary:
    """Configurations c0, c1, ... for ``groupings`` (T x L over the zoo's component units)."""
    pool = TaskPool(zoo, split="validation", limit=8)
    units = zoo.component_map().units("component", exclude_kinds=("head",))
    unit_ids = list(units)
    pretrained = pool.pretrained_state()
    states = [pool.own_state(t) for t in zoo.tasks]
    call = call or MethodCall.build("task_arithmetic", {"scaling": 0.3})
    builder = ExpertBuilder(pretrained, states, units, call, QuantConfig())
    modules: dict[str, dict[str, torch.Tensor]] = {}
    chains: dict[str, list[str]] = {}
    configs = []
    for c, g in enumerate(groupings):
        per_task = {}
        for t, task in enumerate(zoo.tasks):
            hashes = []
            for key in chain(g, t, unit_ids):
                blob = _hash(key)
                modules.setdefault(blob, builder.dense(key))
                hashes.append(blob)
            chain_id = hashlib.sha256("".join(hashes).encode()).hexdigest()
            chains[chain_id] = hashes
            per_task[task] = chain_id
        used = sorted({h for cid in per_task.values() for h in chains[cid]})
        configs.append(FakeConfig(f"c{c}", g.to_list(), float(c + 1), {"mean": 0.5 + c / 10}, {"mean": 0.5},
                                  per_task, used))
    backbone = root / "backbone"
    backbone.mkdir(parents=True, exist_ok=True)
    for f in (zoo.root / zoo.manifest.backbone.path).iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, backbone / f.name)
    heads = {}
    for task in zoo.tasks:
        own = pool.own_state(task)
        pooler = {k: v for k, v in own.items() if k.startswith("pooler.")} if with_pooler else {}
        heads[task] = {**zoo.task_head(task), **pooler}
    tasks = [FakeTask(e.name, e.modality, e.metric, len(e.label_names), e.pooling,
                      int(e.fine_tuning.get("max_length", 128)), list(e.label_names)) for e in zoo.manifest.tasks]
    return FakeLibrary(backbone, FakeManifest(zoo.name), tasks, configs, chains, modules, heads)


def _hash(key: ModuleKey) -> str:
    return hashlib.sha256(key.id.encode()).hexdigest()
