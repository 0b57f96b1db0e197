"""Executors for real evaluations beyond the local one: Ray workers that each hold the models.

Every worker builds its own :class:`~modmerge.objectives.problem.MergeProblem` once, from the
driver's ``problem_for(seed)`` factory (a suite, a zoo, or checkpoints with evaluator callables,
which Ray ships to the workers), and keeps its module and chain caches warm across generations;
a batch of grouping matrices is spread over the workers and the results come back in order. For
users with many GPUs or machines, point Ray at a cluster (``address``) and give each worker a
GPU (``num_gpus``).

>>> executor = RayExecutor(functools.partial(source_problem, recipe, source), seed=0, workers=4)  # doctest: +SKIP
>>> run_search(problem, config, executor=executor)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from modmerge.errors import ModmergeError
from modmerge.experts.grouping import GroupingMatrix
from modmerge.objectives.evaluation import Evaluation
from modmerge.objectives.performance import EvaluationCounters


class _Worker:
    """A Ray actor body: one problem, built by the driver's factory."""

    def __init__(self, problem_for: Callable[[int], Any], seed: int) -> None:
        self.problem = problem_for(seed)

    def evaluate(self, rows: list[list[list[int]]]) -> tuple[list[Evaluation], EvaluationCounters]:
        """The evaluations, and this worker's counters so far (its work since it started)."""
        return self.problem.evaluate([GroupingMatrix.from_array(r) for r in rows]), self.problem.counters


class RayExecutor:
    """Spread each batch of real evaluations over ``workers`` Ray actors (see module doc)."""

    def __init__(
        self,
        problem_for: Callable[[int], Any],
        *,
        seed: int,
        workers: int = 2,
        address: str | None = None,
        num_cpus_per_worker: float = 1.0,
        num_gpus_per_worker: float = 0.0,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ModmergeError("executor 'ray' needs Ray: pip install 'modmerge[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        actor = ray.remote(num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker)(_Worker)
        self._ray = ray
        self.workers = [actor.remote(problem_for, seed) for _ in range(workers)]
        self._worker_counters = [EvaluationCounters() for _ in self.workers]

    def evaluate(self, gs: Sequence[GroupingMatrix]) -> list[Evaluation]:
        """Round-robin the batch over the workers; results in the batch's order."""
        owners = [i % len(self.workers) for i in range(len(gs))]
        futures = [self.workers[w].evaluate.remote([g.to_list()]) for w, g in zip(owners, gs, strict=True)]
        results = self._ray.get(futures)
        for w, (_, counters) in zip(owners, results, strict=True):  # an actor runs our calls in order:
            self._worker_counters[w] = counters  # its last result holds all its work
        return [evaluations[0] for evaluations, _ in results]

    def counters(self) -> EvaluationCounters:
        """The workers' evaluation work so far, summed (what a local problem's counters hold)."""
        total = EvaluationCounters()
        for counters in self._worker_counters:
            total = total.plus(counters)
        return total

    def close(self) -> None:
        for worker in self.workers:
            self._ray.kill(worker)
        self.workers = []
