"""Performance P (eq. 7) and the MERGE problem on a zoo.

P_G = (1/T) sum_t metric_t(f_{theta~_t}, D'_t), where theta~_t recombines the modules of task
t's expert chain. Two caches make real evaluations cheap: modules by value (in the
:class:`~modmerge.experts.modules.ExpertBuilder`) and task results by (task, expert chain): two
configurations that give a task the same chain reuse its score. The counters say how much work
the caches saved against a naive evaluator that rebuilds and re-runs everything.

>>> problem = ZooMergeProblem(zoo, call, QuantConfig(), granularity="component", limit=200)  # doctest: +SKIP
>>> problem.evaluate([GroupingMatrix.individual(problem.n_tasks, problem.n_units)])  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from modmerge.experts.modules import ExpertBuilder, ModuleKey
from modmerge.objectives.storage import module_storage_cost
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.search.grouping import GroupingMatrix
from modmerge.search.problem import Evaluation
from modmerge.zoo.baselines import task_statistics
from modmerge.zoo.store import Zoo
from modmerge.zoo.taskpool import TaskPool

Chain = tuple[ModuleKey, ...]


@dataclass
class EvaluationCounters:
    """Work done, and what a naive evaluator (no caches) would have done."""

    configurations: int = 0
    task_runs: int = 0  # tasks actually run through a model
    task_runs_naive: int = 0  # T per configuration
    modules_built: int = 0
    modules_naive: int = 0  # sum over configurations of their distinct modules
    seconds: float = 0.0
    per_config_seconds: list[float] = field(default_factory=list)


def chain(g: GroupingMatrix, task: int, units: Sequence[str]) -> Chain:
    """Task ``task``'s expert chain: per unit, the module of the group it belongs to."""
    return tuple(
        ModuleKey(unit=u, members=next(m for m in g.groups(i) if task in m)) for i, u in enumerate(units)
    )


def modules_of(g: GroupingMatrix, units: Sequence[str]) -> list[ModuleKey]:
    """Every distinct module J(G) needs (one per unit and group)."""
    return [ModuleKey(unit=u, members=tuple(m)) for i, u in enumerate(units) for m in g.groups(i)]


class ZooMergeProblem:
    """The bi-objective MERGE problem on a zoo: minimise C (eq. 8), maximise P (eq. 7)."""

    def __init__(
        self,
        zoo: Zoo,
        call: MethodCall,
        quant: QuantConfig,
        *,
        granularity: str = "component",
        split: str = "validation",
        limit: int | None = 200,
        seed: int = 0,
        cache_bytes: int = 2 * 2**30,
        device: str = "cpu",
    ) -> None:
        self.zoo, self.call, self.quant = zoo, call, quant
        self.pool = TaskPool(zoo, split=split, limit=limit, device=device)
        cmap = zoo.component_map()
        self.units = cmap.units(granularity, exclude_kinds=("head",))  # type: ignore[arg-type]
        self.unit_ids = list(self.units)
        self.task_names = zoo.tasks
        self.pretrained = self.pool.pretrained_state()
        states = [self.pool.own_state(t) for t in self.task_names]
        self.body_parameters = sum(self.pretrained[k].numel() for keys in self.units.values() for k in keys)
        needs = call.merge_method.needs
        stats = task_statistics(zoo, needs[0]) if needs else None
        self.builder = ExpertBuilder(self.pretrained, states, self.units, call, quant, statistics=stats, seed=seed,
                                     cache_bytes=cache_bytes)
        self._results: dict[tuple[int, Chain], float] = {}
        self._module_cost: dict[ModuleKey, float] = {}
        self.counters = EvaluationCounters()

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def n_units(self) -> int:
        return len(self.unit_ids)

    def module_cost(self, key: ModuleKey) -> float:
        """A module's share of eq. (8) (exact: conditional quantisation depends on merged values)."""
        if key not in self._module_cost:
            module = self.builder.module(key)
            self._module_cost[key] = module_storage_cost(module.tensors.values(), d=self.body_parameters)
        return self._module_cost[key]

    def storage_cost(self, g: GroupingMatrix) -> float:
        return float(sum(self.module_cost(k) for k in modules_of(g, self.unit_ids)))

    def task_metric(self, task: int, task_chain: Chain) -> float:
        """Task ``task``'s metric on D'_t with the body assembled from ``task_chain`` (cached)."""
        key = (task, task_chain)
        if key not in self._results:
            state: dict[str, torch.Tensor] = {}
            for module in task_chain:
                state.update(self.builder.dense(module))
            self._results[key] = self.pool.evaluate(self.task_names[task], state)
            self.counters.task_runs += 1
        return self._results[key]

    def evaluate_one(self, g: GroupingMatrix) -> Evaluation:
        started = time.perf_counter()
        built_before = self.builder.builds
        per_task = [self.task_metric(t, chain(g, t, self.unit_ids)) for t in range(self.n_tasks)]
        cost = self.storage_cost(g)
        seconds = time.perf_counter() - started
        c = self.counters
        c.configurations += 1
        c.task_runs_naive += self.n_tasks
        c.modules_naive += len(modules_of(g, self.unit_ids))
        c.modules_built += self.builder.builds - built_before
        c.seconds += seconds
        c.per_config_seconds.append(seconds)
        return Evaluation(
            performance=float(np.mean(per_task)),
            per_task=dict(zip(self.task_names, per_task, strict=True)),
            storage_cost=cost,
            seconds=seconds,
        )

    def evaluate(self, gs: Sequence[GroupingMatrix]) -> list[Evaluation]:
        return [self.evaluate_one(g) for g in gs]

    def unit_task_vectors(self) -> list[np.ndarray]:
        """Per unit, T points whose pairwise inner products equal the task vectors' (for K-means init).

        The unit's T x T Gram matrix of task vectors is accumulated tensor by tensor and embedded
        by eigendecomposition (X X^T = Gram), which keeps distances and cosines exact at T
        dimensions, however large the unit.
        """
        out = []
        for keys in self.units.values():
            gram = torch.zeros(self.n_tasks, self.n_tasks, dtype=torch.float64)
            for k in keys:
                base = self.pretrained[k].double().reshape(-1)
                taus = torch.stack([s[k].double().reshape(-1) - base for s in self.builder.tasks])
                gram += taus @ taus.T
            eigenvalues, eigenvectors = torch.linalg.eigh(gram)
            out.append((eigenvectors * eigenvalues.clamp_min(0).sqrt()).numpy())
        return out
