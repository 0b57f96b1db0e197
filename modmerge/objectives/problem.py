"""The bi-objective MERGE problem: minimise storage cost C (eq. 8), maximise performance P (eq. 7).

One class serves every form of input. What differs is only how a task's assembled body is
scored, its **runner** (:mod:`modmerge.objectives.runners`):

- :meth:`MergeProblem.from_source`: a task source (a suite of the user's models and data, or a
  benchmark zoo) scored by its task pool, with activation-prefix reuse;
- :meth:`MergeProblem.from_models`: the user's checkpoints scored by one evaluator callable per
  task (prefix reuse when an evaluator implements the staged interface).

P_G = (1/T) sum_t metric_t(f_{theta~_t}, D'_t), where theta~_t recombines the modules of task
t's expert chain. Three caches make real evaluations cheap: modules by value (the
:class:`~modmerge.experts.modules.ExpertBuilder`), task results by (task, expert chain), and
hidden states after encoder layer k by chain prefix (:class:`PrefixCache`), so a chain that
agrees with an earlier one up to layer k runs only the later layers. The counters say how much
work the caches saved against a naive evaluator that rebuilds and re-runs everything.

>>> problem = MergeProblem.from_source(source, call, QuantConfig(), limit=200)  # doctest: +SKIP
>>> problem.evaluate([GroupingMatrix.individual(problem.n_tasks, problem.n_units)])  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from modmerge.components.decompose import Granularity, Rule
from modmerge.errors import RecipeError
from modmerge.experts.grouping import GroupingMatrix
from modmerge.experts.modules import ExpertBuilder, ModuleKey
from modmerge.merging.statistics import load_statistics
from modmerge.objectives.baselines import task_statistics
from modmerge.objectives.evaluation import Evaluation
from modmerge.objectives.own_models import ModelSource, read_models
from modmerge.objectives.performance import Chain, EvaluationCounters, chain, modules_of
from modmerge.objectives.prefix_cache import PrefixCache, prefix_keys
from modmerge.objectives.runners import (
    EvaluatorRunner,
    PoolRunner,
    TaskRunner,
    check_evaluators,
    staged_runner,
)
from modmerge.objectives.storage import module_storage_cost
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.tasks.source import TaskSource
from modmerge.tasks.taskpool import StagedRun, TaskPool

State = dict[str, torch.Tensor]
Evaluator = Callable[[State], float]
SplitRunners = Callable[[str, "int | None"], list[TaskRunner]]

__all__ = ["Evaluator", "MergeProblem", "gram_embeddings"]


def gram_embeddings(pretrained: Mapping[str, torch.Tensor], tasks: Sequence[Mapping[str, torch.Tensor]],
                    units: Mapping[str, Sequence[str]]) -> list[np.ndarray]:
    """Per unit, T points whose pairwise inner products equal the task vectors' (K-means init).

    The unit's T x T Gram matrix is accumulated tensor by tensor and embedded by
    eigendecomposition (X X^T = Gram), so distances and cosines stay exact at T dimensions
    however large the unit.

    >>> pre = {"w": torch.zeros(3)}
    >>> [p.shape for p in gram_embeddings(pre, [{"w": torch.ones(3)}, {"w": -torch.ones(3)}], {"u": ["w"]})]
    [(2, 2)]
    """
    out = []
    for keys in units.values():
        gram = torch.zeros(len(tasks), len(tasks), dtype=torch.float64)
        for k in keys:
            base = pretrained[k].double().reshape(-1)
            taus = torch.stack([s[k].double().reshape(-1) - base for s in tasks])
            gram += taus @ taus.T
        eigenvalues, eigenvectors = torch.linalg.eigh(gram)
        out.append((eigenvectors * eigenvalues.clamp_min(0).sqrt()).numpy())
    return out


class MergeProblem:
    """The MERGE problem over T x L grouping matrices (see the module doc).

    Built by :meth:`from_source` or :meth:`from_models`; the constructor takes the parts: the
    base's mergeable tensors (``pretrained``), each task's state (``tasks``: its body feeds the
    merges), the units, F and the quantisation, and one runner per task. ``split_runners(split,
    limit)`` gives the runners of another split (the Pareto set's test metrics); None when the
    form has none. ``precision`` is what the runners' forwards run at (recorded with test metrics).
    """

    def __init__(
        self, *, task_names: Sequence[str], pretrained: State, tasks: Sequence[State], units: Mapping[str, list[str]],
        call: MethodCall, quant: QuantConfig, runners: Sequence[TaskRunner], split_runners: SplitRunners | None = None,
        statistics: Sequence[Mapping[str, torch.Tensor]] | None = None, seed: int = 0,
        cache_bytes: int = 2 * 2**30, prefix_cache_bytes: int = 512 * 2**20, precision: str = "float32",
        label: str = "", config: Mapping | None = None,
    ) -> None:
        self.task_names = list(task_names)
        self.call, self.quant, self.precision = call, quant, precision
        self.units = dict(units)
        self.unit_ids = list(self.units)
        self.pretrained = pretrained
        self.body_parameters = sum(pretrained[k].numel() for keys in self.units.values() for k in keys)
        self.builder = ExpertBuilder(pretrained, list(tasks), self.units, call, quant, statistics=statistics,
                                     seed=seed, cache_bytes=cache_bytes)
        self.runners = list(runners)
        self.split_runners = split_runners
        self.label, self.config = label, None if config is None else dict(config)
        self.counters = EvaluationCounters()
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self._results: dict[tuple[int, Chain], float] = {}
        self._module_cost: dict[ModuleKey, float] = {}
        staged = staged_runner(self.runners[0])
        self.n_layers = int(getattr(self.runners[0], "n_layers", 0))  # counted even without a stage split
        # Per unit, the first and last stage its weights feed (0 embeddings, i + 1 layer i); without
        # a stage split every unit feeds stage 0, so no prefix is ever shorter than the chain.
        self._key_stage = {k: 0 if staged is None else staged.stage_of(k) for keys in self.units.values() for k in keys}
        stages = [[self._key_stage[k] for k in keys] for keys in self.units.values()]
        self._first_stage = [min(s) for s in stages]
        self._last_stage = [max(s) for s in stages]

    # -- the two forms ------------------------------------------------------------------------
    @classmethod
    def from_source(
        cls, source: TaskSource, call: MethodCall, quant: QuantConfig, *, granularity: str = "component",
        split: str = "validation", limit: int | None = 200, seed: int = 0, cache_bytes: int = 2 * 2**30,
        prefix_cache_bytes: int = 512 * 2**20, device: str = "cpu", precision: str = "float32",
    ) -> MergeProblem:
        """The problem on a task source (a suite or a zoo): its task pool scores ``split``'s
        first ``limit`` examples per task; heads (and poolers) stay each task's own."""
        pool = TaskPool(source, split=split, limit=limit, device=device, precision=precision)
        units = source.component_map().units(granularity, exclude_kinds=("head",))  # type: ignore[arg-type]
        needs = call.merge_method.needs
        return cls(
            task_names=source.tasks, pretrained=pool.pretrained_state(), tasks=[pool.own_state(t) for t in source.tasks],
            units=units, call=call, quant=quant, runners=[PoolRunner(pool, t) for t in source.tasks],
            split_runners=lambda s, n: [PoolRunner(pool.on_split(s, n), t) for t in source.tasks],
            statistics=task_statistics(source, needs[0]) if needs else None, seed=seed, cache_bytes=cache_bytes,
            prefix_cache_bytes=prefix_cache_bytes, precision=precision, label=source.name,
        )

    @classmethod
    def from_models(
        cls, pretrained: ModelSource, models: Mapping[str, ModelSource], evaluators: Mapping[str, Evaluator],
        call: MethodCall, quant: QuantConfig, *, granularity: Granularity = "component", architecture: str | None = None,
        rules: Sequence[Rule | tuple[str, ...]] = (), statistics: Mapping[str, str | Path] | None = None,
        test_evaluators: Mapping[str, Evaluator] | None = None, seed: int = 0, cache_bytes: int = 2 * 2**30,
        prefix_cache_bytes: int = 512 * 2**20, allow_pickle: bool = False,
    ) -> MergeProblem:
        """The problem on the user's checkpoints, scored by ``evaluators[task](state_dict)``.

        Each evaluator receives a complete state dict of its task's model: the body assembled
        from the task's expert chain (dequantised, as a deployed chain computes) and the task's
        own tensors for what is never merged (component kind ``head``, integer buffers). The
        tensors are shared with the module cache: treat them as read-only. An evaluator that
        implements :class:`~modmerge.objectives.runners.StagedEvaluator` gets prefix reuse.
        Everything is checked before a tensor is read: evaluators against the tasks, then the
        checkpoints against each other, then the granularity. ``statistics`` (a statistics file
        per task) is for the methods that need them (Fisher, RegMean); ``test_evaluators`` give
        the Pareto set's test figures (split ``"test"``).
        """
        tasks = list(models)
        if len(tasks) < 2:
            raise RecipeError(f"models: MERGE needs at least two fine-tuned models, got {len(tasks)}")
        check_evaluators(tasks, evaluators)
        if test_evaluators is not None:
            check_evaluators(tasks, test_evaluators, field="test_evaluators")
        if call.merge_method.needs and statistics is None:
            raise RecipeError(f"method {call.method} needs statistics: give a statistics file per task")
        if statistics is not None and set(statistics) != set(tasks):
            raise RecipeError(f"statistics: give one file per task ({', '.join(tasks)}), got {', '.join(statistics)}")
        own = read_models(pretrained, models, granularity=granularity, architecture=architecture, rules=rules,
                          allow_pickle=allow_pickle)
        kept = own.kept_keys

        def runners(fns: Mapping[str, Evaluator]) -> list[TaskRunner]:
            return [EvaluatorRunner(fns[t], kept={k: s[k] for k in kept}, keys=own.keys, task=t)
                    for t, s in zip(tasks, own.states, strict=True)]

        def split_runners(split: str, limit: int | None) -> list[TaskRunner]:
            if split != "test" or test_evaluators is None:
                raise RecipeError(f"split '{split}': the evaluator form scores it only with test_evaluators")
            return runners(test_evaluators)

        stats = None if statistics is None else [load_statistics(statistics[t])[0] for t in tasks]
        return cls(
            task_names=tasks, pretrained=own.pretrained, tasks=own.states, units=own.units, call=call, quant=quant,
            runners=runners(evaluators), split_runners=None if test_evaluators is None else split_runners,
            statistics=stats, seed=seed, cache_bytes=cache_bytes, prefix_cache_bytes=prefix_cache_bytes,
            label=own.label, config=own.config,
        )

    # -- sizes and storage cost (eq. 8) -------------------------------------------------------
    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def n_units(self) -> int:
        return len(self.unit_ids)

    @property
    def full_bits(self) -> int:
        """Eq. (8)'s ``b_plus``: bits per value of the pretrained checkpoint (16 for bfloat16)."""
        return self.builder.full_bits

    def module_cost(self, key: ModuleKey) -> float:
        """A module's share of eq. (8) (exact: conditional quantisation depends on merged values)."""
        if key not in self._module_cost:
            module = self.builder.module(key)
            self._module_cost[key] = module_storage_cost(module.tensors.values(), d=self.body_parameters,
                                                         full_bits=self.full_bits)
        return self._module_cost[key]

    def storage_cost(self, g: GroupingMatrix) -> float:
        """C (eq. 8): the summed cost of J(G)'s distinct modules, each computed once."""
        return float(sum(self.module_cost(k) for k in modules_of(g, self.unit_ids)))

    # -- performance (eq. 7) --------------------------------------------------------------------
    def body(self, task_chain: Chain, *, from_stage: int = 0) -> State:
        """The dense body of ``task_chain``: every tensor used in stages ``from_stage`` on (modules
        that only earlier stages use are not even dequantised)."""
        state: State = {}
        for module, last in zip(task_chain, self._last_stage, strict=True):
            if last >= from_stage:
                state.update((k, v) for k, v in self.builder.dense(module).items() if self._key_stage[k] >= from_stage)
        return state

    def assembled_state(self, task: int, task_chain: Chain) -> State:
        """Task ``task``'s complete state dict for ``task_chain`` (what its runner scores)."""
        return self.runners[task].state(self.body(task_chain))

    def task_metric(self, task: int, task_chain: Chain) -> float:
        """Task ``task``'s validation metric with the body of ``task_chain`` (cached by chain)."""
        key = (task, task_chain)
        if key not in self._results:
            run, resumed = self._run_on(self.runners[task], self.prefix_cache, task, task_chain)
            self.counters.count_run(run, resumed)
            self._results[key] = run.metric
        return self._results[key]

    def _run_on(self, runner: TaskRunner, cache: PrefixCache, task: int, task_chain: Chain) -> tuple[StagedRun, bool]:
        """Run ``task_chain`` through ``runner`` from the longest prefix ``cache`` holds, keeping
        the new layers' hidden states there; returns the run and whether it resumed."""
        staged = staged_runner(runner)
        if staged is None or not cache.enabled:
            return StagedRun(runner(self.body(task_chain)), self.n_layers), False
        keys = prefix_keys(task, task_chain, self._first_stage, self.n_layers)
        done, hidden = cache.longest(keys)
        start = done + 1 if hidden is not None else 0
        # The last layer's output only helps the identical chain, which the result cache answers.
        keep = [k for k in range(start, self.n_layers) if keys[k][1] != task_chain]
        run = staged.run_from(self.body(task_chain, from_stage=0 if hidden is None else start + 1),
                              start_layer=start, hidden=hidden, keep_layers=keep)
        for k in keep:
            cache.put(keys[k], run.hidden[k])
        return run, hidden is not None

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
        seconds, built = [0.0] * len(gs), [0] * len(gs)
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
            out.append(Evaluation(performance=float(np.mean(per_task)),
                                  per_task=dict(zip(self.task_names, per_task, strict=True)),
                                  storage_cost=cost, seconds=seconds[i]))
        return out

    def split_metrics(
        self, gs: Sequence[GroupingMatrix], split: str, limit: int | None, *, known: dict | None = None,
        progress: Callable[[int, int], None] | None = None, counters: EvaluationCounters | None = None,
    ) -> list[dict[str, float]]:
        """Each configuration's per-task metric on another split (the Pareto set's test metrics),
        with the search's modules, one run per distinct (task, chain), in prefix-sharing order
        through a prefix cache of its own. ``known`` maps ``(task, chain)`` to metrics already
        measured (it is filled in with the new ones). ``progress(done, total)`` follows every task
        run. ``counters`` gets the work done (added) and a naive evaluator's (one full forward per
        solution and task: set)."""
        if self.split_runners is None:
            raise RecipeError(f"split '{split}': this problem has no runners for it (give test evaluators)")
        known = {} if known is None else known
        runners = self.split_runners(split, limit)
        cache = PrefixCache(self.prefix_cache.max_bytes)
        chains = [[chain(g, t, self.unit_ids) for t in range(self.n_tasks)] for g in gs]
        todo = {(t, c) for per_task in chains for t, c in enumerate(per_task)} - set(known)
        counters = EvaluationCounters() if counters is None else counters
        counters.configurations = len(gs)
        counters.task_runs_naive = len(gs) * self.n_tasks
        counters.layer_forwards_naive = counters.task_runs_naive * self.n_layers
        for done, key in enumerate(sorted(todo, key=self._run_order), start=1):
            started = time.perf_counter()
            run, resumed = self._run_on(runners[key[0]], cache, *key)
            known[key] = run.metric
            counters.count_run(run, resumed)
            counters.seconds += time.perf_counter() - started
            if progress is not None:
                progress(done, len(todo))
        return [{name: known[(t, c)] for t, (name, c) in enumerate(zip(self.task_names, per_task, strict=True))}
                for per_task in chains]

    def unit_task_vectors(self) -> list[np.ndarray]:
        """Per unit, T points with the task vectors' inner products (see :func:`gram_embeddings`)."""
        return gram_embeddings(self.pretrained, self.builder.tasks, self.units)
