"""Task runners: what scores one task's assembled body, for every form of the merge problem.

The merge problem (:mod:`modmerge.objectives.problem`) assembles a task's body from its expert
chain and hands it to the task's runner. Two kinds exist:

- a plain runner, ``runner(body) -> score``: an evaluator callable of the user's, wrapped by
  :class:`EvaluatorRunner` (it adds the task's own never-merged tensors, so the callable gets a
  complete state dict);
- a **staged** runner (:class:`StagedRunner`), which can also start a forward at encoder layer
  ``k`` from the hidden states after layer ``k - 1`` and keep the hidden states it computes. The
  problem then reuses activation prefixes between chains that agree on their first layers.
  :class:`PoolRunner` is the task pool's (a suite's or a zoo's data); a user's evaluator opts in
  by implementing ``n_layers``, ``stage_of`` and ``run_from`` (see :class:`StagedEvaluator`).

>>> import torch
>>> runner = EvaluatorRunner(lambda state: float(state["w"].sum()), kept={"b": torch.ones(1)}, keys=["w", "b"])
>>> runner({"w": torch.ones(3)})
3.0
>>> staged_runner(runner) is None
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from modmerge.errors import ModmergeError
from modmerge.tasks.taskpool import StagedRun, TaskPool

State = dict[str, torch.Tensor]
Hidden = Sequence[torch.Tensor] | None

__all__ = ["EvaluatorError", "EvaluatorRunner", "PoolRunner", "StagedEvaluator", "StagedRun", "StagedRunner",
           "TaskRunner", "check_evaluators", "staged_runner"]


class EvaluatorError(ModmergeError):
    """A task's evaluator is missing, not callable, or returned something that is not a score."""


def check_evaluators(tasks: Sequence[str], evaluators: Mapping[str, object], *, field: str = "evaluators") -> None:
    """Raise :class:`EvaluatorError` unless every task has exactly one callable evaluator.

    >>> check_evaluators(["a"], {"a": len})
    >>> check_evaluators(["a"], {"b": len})
    Traceback (most recent call last):
    ...
    modmerge.objectives.runners.EvaluatorError: evaluators: task 'a' has no evaluator (tasks: a)
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


class TaskRunner(Protocol):
    """Scores a task's body (the merged tensors of its expert chain): higher is better.
    ``state(body)`` is the complete state dict it scores (the body plus what is never merged)."""

    def __call__(self, body: State) -> float: ...

    def state(self, body: State) -> State: ...


@runtime_checkable
class StagedRunner(Protocol):
    """A runner whose forward can start at an encoder layer (activation-prefix reuse).

    ``stage_of(key)`` is the stage a body tensor is used in: 0 for the embeddings, ``i + 1`` for
    encoder layer ``i``. ``run_from(body, start_layer=k, hidden=h, keep_layers=K)`` scores the
    body with a forward that starts at layer ``k`` from ``h`` (the outputs of layer ``k - 1``, per
    evaluation batch, as an earlier run kept them; ``None`` with ``k = 0``), needs only the body
    tensors of stages ``k + 1`` on (all of them when ``k = 0``), and returns a
    :class:`~modmerge.tasks.taskpool.StagedRun` with the outputs of the layers in ``K``.
    """

    n_layers: int

    def __call__(self, body: State) -> float: ...

    def stage_of(self, key: str) -> int: ...

    def run_from(self, body: State, *, start_layer: int = 0, hidden: Hidden = None,
                 keep_layers: Collection[int] = ()) -> StagedRun: ...


class StagedEvaluator(Protocol):
    """What a user's evaluator implements to opt into prefix reuse: :class:`StagedRunner`'s
    methods, called with complete state dicts (the task's own never-merged tensors included).

    >>> class MyEval:                                                 # doctest: +SKIP
    ...     n_layers = 12
    ...     def __call__(self, state): return self.run_from(state).metric
    ...     def stage_of(self, key): ...            # 0 embeddings, i + 1 for layer i
    ...     def run_from(self, state, *, start_layer=0, hidden=None, keep_layers=()): ...
    """

    n_layers: int

    def __call__(self, state: State) -> float: ...

    def stage_of(self, key: str) -> int: ...

    def run_from(self, state: State, *, start_layer: int = 0, hidden: Hidden = None,
                 keep_layers: Collection[int] = ()) -> StagedRun: ...


def staged_runner(runner: object) -> StagedRunner | None:
    """``runner`` if it can run from a layer (:class:`StagedRunner`), else None."""
    if getattr(runner, "staged", True) and isinstance(runner, StagedRunner):
        return runner
    return None


class PoolRunner:
    """One task of a :class:`~modmerge.tasks.taskpool.TaskPool` (its split and subset): staged
    whenever the body class has a stage split."""

    def __init__(self, pool: TaskPool, task: str) -> None:
        self.pool, self.task = pool, task
        self._staged = pool.staged(task)
        self.staged = self._staged is not None
        self.n_layers = pool.n_layers(task)

    def __call__(self, body: State) -> float:
        return self.run_from(body).metric

    def state(self, body: State) -> State:
        """The complete body state the pool runs: ``body`` plus the task's own head-kind keys."""
        return self.pool.complete_state(self.task, body)

    def stage_of(self, key: str) -> int:
        return 0 if self._staged is None else self._staged.stage_of(key)

    def run_from(self, body: State, *, start_layer: int = 0, hidden: Hidden = None,
                 keep_layers: Collection[int] = ()) -> StagedRun:
        return self.pool.evaluate_from(self.task, body, start_layer=start_layer, hidden=hidden,
                                       keep_layers=keep_layers)


class EvaluatorRunner:
    """A user's evaluator for one task: called with the complete state dict (``keys`` order),
    the body from the chain and the task's own ``kept`` tensors (heads, poolers, buffers).
    Staged when the evaluator implements :class:`StagedEvaluator`."""

    def __init__(self, evaluator: Callable[[State], float], *, kept: Mapping[str, torch.Tensor],
                 keys: Sequence[str], task: str = "task") -> None:
        self.evaluator, self.kept, self.keys, self.task = evaluator, dict(kept), list(keys), task
        self.staged = all(hasattr(evaluator, a) for a in ("n_layers", "stage_of", "run_from"))
        self.n_layers = int(getattr(evaluator, "n_layers", 0)) if self.staged else 0

    def state(self, body: State) -> State:
        """The complete state dict for ``body``: every key present in ``body`` or kept, in key order."""
        parts = {**self.kept, **body}
        return {k: parts[k] for k in self.keys if k in parts}

    def __call__(self, body: State) -> float:
        return self._checked(self.evaluator(self.state(body)))

    def stage_of(self, key: str) -> int:
        return int(self.evaluator.stage_of(key))  # type: ignore[attr-defined]

    def run_from(self, body: State, *, start_layer: int = 0, hidden: Hidden = None,
                 keep_layers: Collection[int] = ()) -> StagedRun:
        run = self.evaluator.run_from(self.state(body), start_layer=start_layer, hidden=hidden,  # type: ignore[attr-defined]
                                      keep_layers=keep_layers)
        self._checked(run.metric)
        return run

    def _checked(self, value: object) -> float:
        try:
            score = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise EvaluatorError(f"evaluator of task '{self.task}' returned a {type(value).__name__}, "
                                 "not a number") from None
        if not math.isfinite(score):
            raise EvaluatorError(f"evaluator of task '{self.task}' returned {score}")
        return score
