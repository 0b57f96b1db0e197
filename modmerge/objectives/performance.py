"""Performance P (eq. 7) and the MERGE problem on a source.

P_G = (1/T) sum_t metric_t(f_{theta~_t}, D'_t), where theta~_t recombines the modules of task
t's expert chain. Two caches make real evaluations cheap: modules by value (in the
:class:`~modmerge.experts.modules.ExpertBuilder`) and task results by (task, expert chain): two
configurations that give a task the same chain reuse its score. A third one, the
:class:`~modmerge.objectives.prefix_cache.PrefixCache`, keeps hidden states after encoder layer
k by chain prefix, so a chain that agrees with an earlier one up to layer k runs only the later
layers. The counters say how much work the caches saved against a naive evaluator that rebuilds
and re-runs everything.

>>> problem = TaskMergeProblem(source, call, QuantConfig(), granularity="component", limit=200)  # doctest: +SKIP
>>> problem.evaluate([GroupingMatrix.individual(problem.n_tasks, problem.n_units)])  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from modmerge.experts.modules import ExpertBuilder, ModuleKey
from modmerge.objectives.baselines import task_statistics
from modmerge.objectives.prefix_cache import PrefixCache, prefix_keys
from modmerge.objectives.storage import module_storage_cost
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.search.grouping import GroupingMatrix
from modmerge.search.problem import Evaluation
from modmerge.tasks.source import TaskSource
from modmerge.tasks.taskpool import StagedRun, TaskPool

Chain = tuple[ModuleKey, ...]


@dataclass
class EvaluationCounters:
    """Work done, and what a naive evaluator (no caches) would have done."""

    configurations: int = 0
    task_runs: int = 0  # tasks actually run through a model
    task_runs_naive: int = 0  # T per configuration
    modules_built: int = 0
    modules_naive: int = 0  # sum over configurations of their distinct modules
    # Encoder layers run, counted once per task run (a layer over all of the task's batches);
    # naive: every layer for every task of every configuration.
    layer_forwards: int = 0
    layer_forwards_naive: int = 0
    prefix_hits: int = 0  # task runs that started from cached hidden states
    seconds: float = 0.0
    per_config_seconds: list[float] = field(default_factory=list)

    def cost_record(self) -> dict[str, float | int]:
        """The ``evaluation_cost`` entry of a search's ``pareto.json``.

        >>> EvaluationCounters(configurations=2, layer_forwards=9, layer_forwards_naive=12).cost_record()["layer_forwards"]
        9
        """
        return {
            "real_evaluations": self.configurations, "task_runs": self.task_runs,
            "task_runs_naive": self.task_runs_naive, "layer_forwards": self.layer_forwards,
            "layer_forwards_naive": self.layer_forwards_naive, "prefix_hits": self.prefix_hits,
            "modules_built": self.modules_built, "modules_naive": self.modules_naive, "seconds": round(self.seconds, 2),
        }

    def plus(self, other: EvaluationCounters) -> EvaluationCounters:
        """Both counts summed (the driver's saved counts plus its Ray workers' work).

        >>> EvaluationCounters(task_runs=2).plus(EvaluationCounters(task_runs=3)).task_runs
        5
        """
        return EvaluationCounters(**{
            f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)
        })

    @classmethod
    def from_record(cls, record: Mapping[str, float | int]) -> EvaluationCounters:
        """Inverse of :meth:`cost_record` (a resumed run starts from its saved counters).

        >>> EvaluationCounters.from_record({"real_evaluations": 2, "task_runs": 5}).configurations
        2
        """
        names = {"real_evaluations": "configurations"}
        return cls(**{names.get(k, k): v for k, v in record.items()})

    def count_run(self, run: StagedRun, resumed: bool) -> None:
        """One task run: the encoder layers it ran, and whether it started from cached hidden states."""
        self.task_runs += 1
        self.layer_forwards += run.layers_run
        self.prefix_hits += resumed

    def progress(self) -> str:
        """One line for a progress display: how much of the naive work was done.

        >>> EvaluationCounters(task_runs=3, task_runs_naive=4, layer_forwards=9, layer_forwards_naive=24).progress()
        'task runs 3/4, layer forwards 9/24 (62% saved)'
        """
        saved = 1 - self.layer_forwards / self.layer_forwards_naive if self.layer_forwards_naive else 0.0
        return (f"task runs {self.task_runs}/{self.task_runs_naive}, "
                f"layer forwards {self.layer_forwards}/{self.layer_forwards_naive} ({100 * saved:.0f}% saved)")


def chain(g: GroupingMatrix, task: int, units: Sequence[str]) -> Chain:
    """Task ``task``'s expert chain: per unit, the module of the group it belongs to."""
    return tuple(
        ModuleKey(unit=u, members=next(m for m in g.groups(i) if task in m)) for i, u in enumerate(units)
    )


def modules_of(g: GroupingMatrix, units: Sequence[str]) -> list[ModuleKey]:
    """Every distinct module J(G) needs (one per unit and group)."""
    return [ModuleKey(unit=u, members=tuple(m)) for i, u in enumerate(units) for m in g.groups(i)]


class ExpertCosts:
    """What every MERGE problem over modular experts shares: sizes, and storage cost C (eq. 8)
    summed over the distinct modules of J(G), each module's cost computed once.

    A subclass sets ``task_names``, ``unit_ids``, ``builder`` (an ExpertBuilder),
    ``body_parameters`` (d of eq. 8) and an empty ``_module_cost`` dict.
    """

    task_names: list[str]
    unit_ids: list[str]
    builder: ExpertBuilder
    body_parameters: int
    _module_cost: dict[ModuleKey, float]

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


class TaskMergeProblem(ExpertCosts):
    """The bi-objective MERGE problem on a task source (a suite or a zoo): minimise C (eq. 8), maximise P (eq. 7)."""

    def __init__(
        self,
        source: TaskSource,
        call: MethodCall,
        quant: QuantConfig,
        *,
        granularity: str = "component",
        split: str = "validation",
        limit: int | None = 200,
        seed: int = 0,
        cache_bytes: int = 2 * 2**30,
        prefix_cache_bytes: int = 512 * 2**20,
        device: str = "cpu",
        precision: str = "float32",
    ) -> None:
        self.source, self.call, self.quant = source, call, quant
        self.pool = TaskPool(source, split=split, limit=limit, device=device, precision=precision)
        cmap = source.component_map()
        self.units = cmap.units(granularity, exclude_kinds=("head",))  # type: ignore[arg-type]
        self.unit_ids = list(self.units)
        self.task_names = source.tasks
        self.pretrained = self.pool.pretrained_state()
        states = [self.pool.own_state(t) for t in self.task_names]
        self.body_parameters = sum(self.pretrained[k].numel() for keys in self.units.values() for k in keys)
        needs = call.merge_method.needs
        stats = task_statistics(source, needs[0]) if needs else None
        self.builder = ExpertBuilder(self.pretrained, states, self.units, call, quant, statistics=stats, seed=seed,
                                     cache_bytes=cache_bytes)
        self._results: dict[tuple[int, Chain], float] = {}
        self._module_cost: dict[ModuleKey, float] = {}
        self.counters = EvaluationCounters()
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.n_layers = self.pool.n_layers(self.task_names[0])
        staged = self.pool.staged(self.task_names[0])
        # Per unit, the first and last stage its weights feed (0 embeddings, i + 1 layer i); without
        # a stage split every unit feeds stage 0, so no prefix is ever shorter than the chain.
        self._key_stage = {k: 0 if staged is None else staged.stage_of(k) for keys in self.units.values() for k in keys}
        stages = [[self._key_stage[k] for k in keys] for keys in self.units.values()]
        self._first_stage = [min(s) for s in stages]
        self._last_stage = [max(s) for s in stages]
        self._staged = staged is not None

    def task_metric(self, task: int, task_chain: Chain) -> float:
        """Task ``task``'s metric on D'_t with the body assembled from ``task_chain`` (cached), run
        from the longest prefix of hidden states the prefix cache holds."""
        key = (task, task_chain)
        if key not in self._results:
            self._results[key] = self._run(task, task_chain)
        return self._results[key]

    def _run(self, task: int, task_chain: Chain) -> float:
        run, resumed = self._run_on(self.pool, self.prefix_cache, task, task_chain)
        self.counters.count_run(run, resumed)
        return run.metric

    def _run_on(self, pool: TaskPool, cache: PrefixCache, task: int, task_chain: Chain) -> tuple[StagedRun, bool]:
        """Run ``task_chain`` on ``pool``'s split from the longest prefix ``cache`` holds, keeping
        the new layers' hidden states there; returns the run and whether it resumed."""
        use_prefixes = self._staged and cache.enabled
        keys = prefix_keys(task, task_chain, self._first_stage, self.n_layers)
        done, hidden = cache.longest(keys) if use_prefixes else (-1, None)
        start = done + 1
        first_stage = 0 if hidden is None else start + 1
        state: dict[str, torch.Tensor] = {}
        for module, last in zip(task_chain, self._last_stage, strict=True):
            if last >= first_stage:  # modules only the cached layers use are not even dequantised
                state.update(
                    (k, v) for k, v in self.builder.dense(module).items() if self._key_stage[k] >= first_stage
                )
        # The last layer's output only helps the identical chain, which the result cache answers.
        keep = [k for k in range(start, self.n_layers) if keys[k][1] != task_chain] if use_prefixes else []
        run = pool.evaluate_from(self.task_names[task], state, start_layer=start if hidden is not None else 0,
                                 hidden=hidden, keep_layers=keep)
        for k in keep:
            cache.put(keys[k], run.hidden[k])
        return run, hidden is not None

    def split_metrics(
        self, gs: Sequence[GroupingMatrix], split: str, limit: int | None, *, known: dict | None = None,
        progress: Callable[[int, int], None] | None = None, counters: EvaluationCounters | None = None,
    ) -> list[dict[str, float]]:
        """Each configuration's per-task metric on another split (the test metrics of the Pareto
        set), with the search's modules, one run per distinct (task, chain), in prefix-sharing order
        through a prefix cache of its own. ``known`` maps ``(task, chain)`` to metrics already
        measured (it is filled in with the new ones). ``progress(done, total)`` follows every task run.
        ``counters`` gets the work done (added) and a naive evaluator's (one full forward per solution
        and task: set)."""
        known = {} if known is None else known
        pool = self.pool.on_split(split, limit)
        cache = PrefixCache(self.prefix_cache.max_bytes)
        chains = [[chain(g, t, self.unit_ids) for t in range(self.n_tasks)] for g in gs]
        todo = {(t, c) for per_task in chains for t, c in enumerate(per_task)} - set(known)
        counters = EvaluationCounters() if counters is None else counters
        counters.configurations = len(gs)
        counters.task_runs_naive = len(gs) * self.n_tasks
        counters.layer_forwards_naive = counters.task_runs_naive * self.n_layers
        for done, key in enumerate(sorted(todo, key=self._run_order), start=1):
            started = time.perf_counter()
            run, resumed = self._run_on(pool, cache, *key)
            known[key] = run.metric
            counters.count_run(run, resumed)
            counters.seconds += time.perf_counter() - started
            if progress is not None:
                progress(done, len(todo))
        return [{name: known[(t, c)] for t, (name, c) in enumerate(zip(self.task_names, per_task, strict=True))}
                for per_task in chains]

    def _run_order(self, item: tuple[int, Chain]) -> tuple:
        """Sort key that puts task runs sharing a chain prefix next to each other (depth-first
        order of the prefix tree), so each run finds its longest prefix among the freshest entries."""
        task, task_chain = item
        return task, tuple(sorted(zip(self._first_stage, range(len(task_chain)), task_chain, strict=True)))

    def evaluate_one(self, g: GroupingMatrix) -> Evaluation:
        return self.evaluate([g])[0]

    def evaluate(self, gs: Sequence[GroupingMatrix]) -> list[Evaluation]:
        """Evaluations of ``gs``; their new task runs go in prefix-sharing order, each one's time
        charged to the first configuration that needs it."""
        chains = [[chain(g, t, self.unit_ids) for t in range(self.n_tasks)] for g in gs]
        owner: dict[tuple[int, Chain], int] = {}
        for i, per_task in enumerate(chains):
            for t, task_chain in enumerate(per_task):
                if (t, task_chain) not in self._results:
                    owner.setdefault((t, task_chain), i)
        seconds = [0.0] * len(gs)
        built = [0] * len(gs)
        for key in sorted(owner, key=self._run_order):
            started, built_before = time.perf_counter(), self.builder.builds
            self.task_metric(*key)
            seconds[owner[key]] += time.perf_counter() - started
            built[owner[key]] += self.builder.builds - built_before
        out = []
        for i, g in enumerate(gs):
            started, built_before = time.perf_counter(), self.builder.builds
            per_task = [self.task_metric(t, task_chain) for t, task_chain in enumerate(chains[i])]
            cost = self.storage_cost(g)
            seconds[i] += time.perf_counter() - started
            built[i] += self.builder.builds - built_before
            c = self.counters
            c.configurations += 1
            c.task_runs_naive += self.n_tasks
            c.layer_forwards_naive += self.n_tasks * self.n_layers
            c.modules_naive += len(modules_of(g, self.unit_ids))
            c.modules_built += built[i]
            c.seconds += seconds[i]
            c.per_config_seconds.append(seconds[i])
            out.append(Evaluation(
                performance=float(np.mean(per_task)),
                per_task=dict(zip(self.task_names, per_task, strict=True)),
                storage_cost=cost,
                seconds=seconds[i],
            ))
        return out

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
