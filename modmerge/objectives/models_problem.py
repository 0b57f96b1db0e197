"""The MERGE problem on the user's own checkpoints, scored by one callable per task.

The zoo problem (:mod:`modmerge.objectives.performance`) knows its tasks' data and metrics; here
the user brings a pretrained checkpoint, T fine-tuned ones (anything
:func:`~modmerge.checkpoints.open_checkpoint` opens: HF directory, ``.safetensors`` file, hub id,
PEFT adapter directory; or an in-memory state dict) and an **evaluator per task**: a callable
that receives a complete state dict of the task's model and returns a score, higher better::

    def evaluate_sst2(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)      # the user's own model class, data and metric
        return accuracy(model, sst2_validation)

A state dict is the contract because it needs no model class: the evaluator builds whatever it
likes from it. The dict holds every key of the pretrained checkpoint: the mergeable body
assembled from the task's expert chain (float32, dequantised, as a deployed chain would
compute) and the task's own fine-tuned tensors for everything that is never merged (component
kind ``head``, as the zoo problem treats them, and non-floating buffers). Its tensors are shared
with the module cache: treat them as read-only (``load_state_dict`` copies, which is fine).

P (eq. 7) is the mean over tasks of the evaluators, cached by (task, expert chain); C (eq. 8) is
exact, from the compressed modules. Each checkpoint is read once, at construction; the
pretrained model's never-merged tensors are not kept.

>>> problem = ModelsMergeProblem("base/", {"a": "ft_a/", "b": "ft_b/"}, {"a": f_a, "b": f_b},
...                              MethodCall.build("ties", {}), QuantConfig())  # doctest: +SKIP
>>> problem.evaluate([GroupingMatrix.individual(2, problem.n_units)])[0].per_task  # doctest: +SKIP
{'a': 0.91, 'b': 0.88}
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from modmerge.checkpoints import Checkpoint, in_memory, open_checkpoint, validate_checkpoints
from modmerge.components import ComponentMap, decompose, detect_architecture, load_architecture
from modmerge.components.decompose import Granularity, Rule
from modmerge.errors import ModmergeError, RecipeError
from modmerge.experts.modules import ExpertBuilder, ModuleKey
from modmerge.merging.statistics import load_statistics
from modmerge.objectives.performance import (
    Chain,
    EvaluationCounters,
    ExpertCosts,
    chain,
    modules_of,
)
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.search.grouping import GroupingMatrix
from modmerge.search.problem import Evaluation

State = dict[str, torch.Tensor]
Evaluator = Callable[[State], float]
ModelSource = str | os.PathLike[str] | Checkpoint | Mapping[str, torch.Tensor]

__all__ = ["Evaluator", "ModelSource", "ModelsMergeProblem", "check_evaluators", "gram_embeddings"]


class EvaluatorError(ModmergeError):
    """A task's evaluator is missing, not callable, or returned something that is not a score."""


def check_evaluators(tasks: Sequence[str], evaluators: Mapping[str, object], *, field: str = "evaluators") -> None:
    """Raise :class:`EvaluatorError` unless every task has exactly one callable evaluator.

    >>> check_evaluators(["a"], {"a": len})
    >>> check_evaluators(["a"], {"b": len})
    Traceback (most recent call last):
    ...
    modmerge.objectives.models_problem.EvaluatorError: evaluators: task 'a' has no evaluator (tasks: a)
    """
    missing = [t for t in tasks if t not in evaluators]
    if missing:
        raise EvaluatorError(f"{field}: task '{missing[0]}' has no evaluator (tasks: {', '.join(tasks)})")
    unknown = [t for t in evaluators if t not in tasks]
    if unknown:
        raise EvaluatorError(f"{field}: '{unknown[0]}' is not one of the models' tasks ({', '.join(tasks)})")
    for task, fn in evaluators.items():
        if not callable(fn):
            raise EvaluatorError(f"{field}: the evaluator of task '{task}' is a {type(fn).__name__}, not a callable")


def open_source(spec: ModelSource, *, label: str, base: Checkpoint | None = None, allow_pickle: bool = False) -> Checkpoint:
    """A lazy :class:`Checkpoint` for a user's model spec (path, hub id, checkpoint or state dict).

    >>> open_source({"w": torch.ones(2)}, label="a").keys()
    ['w']
    """
    if isinstance(spec, Checkpoint):
        return spec
    if isinstance(spec, Mapping):
        return in_memory(spec, label=label)
    return open_checkpoint(spec, allow_pickle=allow_pickle, base=base)


def component_map(base: Checkpoint, architecture: str | None = None, rules: Sequence[Rule | tuple[str, ...]] = ()) -> ComponentMap:
    """The base's parameter names decomposed with ``architecture`` (else detected) and user rules."""
    keys = base.keys()
    arch = load_architecture(architecture) if architecture else detect_architecture(base.config, keys)
    return decompose(keys, arch, extra_rules=rules)


def gram_embeddings(pretrained: Mapping[str, torch.Tensor], tasks: Sequence[Mapping[str, torch.Tensor]],
                    units: Mapping[str, Sequence[str]]) -> list[np.ndarray]:
    """Per unit, T points whose pairwise inner products equal the task vectors' (K-means init).

    The unit's T x T Gram matrix is accumulated tensor by tensor and embedded by
    eigendecomposition, so distances stay exact at T dimensions however large the unit.

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


class ModelsMergeProblem(ExpertCosts):
    """The bi-objective MERGE problem on the user's checkpoints: minimise C (eq. 8), maximise P (eq. 7).

    ``models`` maps task names to fine-tuned sources (their order is the task order of the
    grouping matrices); ``evaluators`` maps the same names to callables (see the module doc).
    Everything is checked before tensors are read: evaluators against tasks, then the
    checkpoints against each other (architecture, keys, shapes, dtypes), then the granularity.
    ``statistics`` (paths of per-task statistics files) is for methods that need them (Fisher,
    RegMean).
    """

    def __init__(
        self,
        pretrained: ModelSource,
        models: Mapping[str, ModelSource],
        evaluators: Mapping[str, Evaluator],
        call: MethodCall,
        quant: QuantConfig,
        *,
        granularity: Granularity = "component",
        architecture: str | None = None,
        rules: Sequence[Rule | tuple[str, ...]] = (),
        statistics: Mapping[str, str | Path] | None = None,
        seed: int = 0,
        cache_bytes: int = 2 * 2**30,
        allow_pickle: bool = False,
    ) -> None:
        self.task_names = list(models)
        if len(self.task_names) < 2:
            raise RecipeError(f"models: MERGE needs at least two fine-tuned models, got {len(self.task_names)}")
        check_evaluators(self.task_names, evaluators)
        self.evaluators = dict(evaluators)
        self.call, self.quant = call, quant
        needs = call.merge_method.needs
        if needs and statistics is None:
            raise RecipeError(f"method {call.method} needs statistics: give a statistics file per task")
        if statistics is not None and set(statistics) != set(self.task_names):
            raise RecipeError(f"statistics: give one file per task ({', '.join(self.task_names)}), got {', '.join(statistics)}")
        with ExitStack() as stack:
            base = stack.enter_context(open_source(pretrained, label="pretrained", allow_pickle=allow_pickle))
            tuned = [
                stack.enter_context(open_source(models[t], label=t, base=base, allow_pickle=allow_pickle))
                for t in self.task_names
            ]
            validate_checkpoints(base, tuned)
            self.label = base.label
            self.config = base.config
            cmap = component_map(base, architecture, rules)
            self.units = _floating_units(cmap.units(granularity, exclude_kinds=("head",)), base)
            self.unit_ids = list(self.units)
            self.keys = base.keys()
            merged = {k for keys in self.units.values() for k in keys}
            # Read once: the base's mergeable tensors and each task's whole model (its body feeds
            # singletons and merges, its kept tensors every evaluation of that task).
            self.pretrained = _read(base, [k for k in self.keys if k in merged])
            states = [_read(m, self.keys) for m in tuned]
        self._kept = [k for k in self.keys if k not in merged]
        self.body_parameters = sum(self.pretrained[k].numel() for k in merged)
        stats = None if statistics is None else [load_statistics(statistics[t])[0] for t in self.task_names]
        self.builder = ExpertBuilder(self.pretrained, states, self.units, call, quant, statistics=stats, seed=seed,
                                     cache_bytes=cache_bytes)
        self._results: dict[tuple[int, Chain], float] = {}
        self._module_cost: dict[ModuleKey, float] = {}
        self.counters = EvaluationCounters()

    def assembled_state(self, task: int, task_chain: Chain) -> State:
        """Task ``task``'s full state dict: ``task_chain``'s modules plus its own kept tensors, in key order.

        >>> problem.assembled_state(0, chain(g, 0, problem.unit_ids))  # doctest: +SKIP
        """
        own = self.builder.tasks[task]
        parts: State = {k: own[k] for k in self._kept}
        for module in task_chain:
            parts.update(self.builder.dense(module))
        return {k: parts[k] for k in self.keys}

    def score(self, task: int, task_chain: Chain, evaluators: Mapping[str, Evaluator] | None = None) -> float:
        """Run one evaluator (the problem's own unless ``evaluators`` is given) on an assembled state."""
        name = self.task_names[task]
        value = (evaluators or self.evaluators)[name](self.assembled_state(task, task_chain))
        try:
            score = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise EvaluatorError(f"evaluator of task '{name}' returned a {type(value).__name__}, not a number") from None
        if not math.isfinite(score):
            raise EvaluatorError(f"evaluator of task '{name}' returned {score}")
        return score

    def task_metric(self, task: int, task_chain: Chain) -> float:
        """The task's validation score with its body assembled from ``task_chain`` (cached)."""
        key = (task, task_chain)
        if key not in self._results:
            self._results[key] = self.score(task, task_chain)
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
        """Per unit, T points with the task vectors' inner products (see :func:`gram_embeddings`)."""
        return gram_embeddings(self.pretrained, self.builder.tasks, self.units)


def _floating_units(units: Mapping[str, list[str]], base: Checkpoint) -> dict[str, list[str]]:
    # Integer buffers (position ids, ...) are not weights: never merged or quantised, so they stay
    # with each task's kept tensors.
    out = {u: [k for k in keys if base.info(k).dtype.is_floating_point] for u, keys in units.items()}
    out = {u: keys for u, keys in out.items() if keys}
    if not out:
        raise RecipeError(f"{base.label}: no mergeable floating tensors outside the heads")
    return out


def _read(ckpt: Checkpoint, keys: Sequence[str]) -> State:
    out = {}
    for k in keys:
        # A clone owns its memory, so the readers (mmaps, adapter views) can be closed.
        out[k] = ckpt.get(k).clone()
        ckpt.release(k)
    return out
