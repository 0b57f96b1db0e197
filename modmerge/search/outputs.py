"""What a search run writes and returns.

One seeded search (:func:`run_seeded`), its record in ``pareto.json`` (:func:`run_record`: the
Pareto set with validation and test figures, the G1/G2/G3 representatives, the evaluation
cost), the run directory (:func:`write_run_dir`: ``pareto.json``, ``history.json``,
``summary.md``, ``pareto.png``) and the :class:`SearchResult` the Python API returns. The
problem is anything with the chain-cached shape of :class:`~modmerge.objectives.problem.MergeProblem`.

>>> state = run_seeded(problem, seed=0, budget=10, population=5, run_dir=Path("out/run0"))  # doctest: +SKIP
>>> record = run_record(problem, state, seed=0, tests=None, base_performance=0.8)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from modmerge.atomic import write_json, write_text
from modmerge.experts.grouping import GroupingMatrix
from modmerge.objectives.performance import EvaluationCounters
from modmerge.run_files import HistoryFile, ParetoFile
from modmerge.search.config import SearchConfig
from modmerge.search.nsga import resume_search, run_search
from modmerge.search.pareto import non_dominated
from modmerge.search.problem import Evaluation, Executor
from modmerge.search.representatives import select_representatives
from modmerge.search.state import GenerationRecord, SearchState


class ChainProblem(Protocol):
    """A merge problem whose tasks are scored per expert chain (zoo or own models)."""

    task_names: list[str]
    unit_ids: list[str]
    counters: EvaluationCounters

    @property
    def n_tasks(self) -> int: ...

    @property
    def n_units(self) -> int: ...

    def storage_cost(self, g: GroupingMatrix) -> float: ...

    def evaluate(self, gs: Sequence[GroupingMatrix]) -> list[Evaluation]: ...

    def unit_task_vectors(self) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class ParetoSolution:
    """One configuration of a run's Pareto set: grouping matrix, C (eq. 8), validation P (eq. 7)."""

    grouping: GroupingMatrix
    storage_cost: float
    performance: float
    per_task: dict[str, float]
    test: dict[str, float] | None
    run: int
    generation: int


@dataclass(frozen=True)
class SearchResult:
    """Every run's Pareto set, and the ``pareto.json`` payload (written under ``out_dir`` if given)."""

    tasks: list[str]
    units: list[str]
    runs: list[list[ParetoSolution]]
    payload: dict[str, Any]
    out_dir: Path | None = None

    @property
    def solutions(self) -> list[ParetoSolution]:
        return [s for run in self.runs for s in run]

    def front(self) -> list[ParetoSolution]:
        """The non-dominated solutions over all runs, by increasing storage cost.

        >>> result.front()[0].storage_cost  # doctest: +SKIP
        """
        sols = self.solutions
        if not sols:
            return []
        keep = non_dominated(np.array([[s.storage_cost, -s.performance] for s in sols]))
        return sorted((sols[i] for i in keep), key=lambda s: (s.storage_cost, -s.performance))


def run_seeded(
    problem: ChainProblem, *, seed: int, budget: int, population: int, surrogate: bool = True,
    init: str = "kmeans", run_dir: Path | None = None, resume: bool = False, executor: Executor | None = None,
    callback: Callable[[GenerationRecord], None] | None = None,
) -> SearchState:
    """One seeded search; with ``run_dir`` its state lives in ``run_dir/state.json`` (``resume`` continues it).

    >>> run_seeded(problem, seed=0, budget=10, population=5).pareto()  # doctest: +SKIP
    """
    config = SearchConfig(
        hv_storage_ref=float(problem.n_tasks), hv_performance_ref=0.0, population_size=population,
        budget=budget, seed=seed, surrogate=surrogate, init=init,  # type: ignore[arg-type]
    )
    state_path = None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        state_path = run_dir / "state.json"
    if resume and state_path is not None and state_path.exists():
        return resume_search(problem, state_path, executor=executor, callback=callback)
    vectors = None if init == "random" else problem.unit_task_vectors()
    return run_search(problem, config, unit_vectors=vectors, state_path=state_path, callback=callback,
                      executor=executor)


def whole_model_performance(problem: ChainProblem) -> float:
    """Validation P of F on the whole model (all tasks merged everywhere): G1's bar, off budget
    (its work is left out of the search's evaluation counters)."""
    counters, problem.counters = problem.counters, EvaluationCounters()
    try:
        return problem.evaluate([GroupingMatrix.all_merged(problem.n_tasks, problem.n_units)])[0].performance
    finally:
        problem.counters = counters


def run_record(
    problem: ChainProblem, state: SearchState, *, seed: int, tests: Sequence[dict[str, float]] | None,
    base_performance: float | None, best_baseline_performance: float | None = None,
    test_cost: EvaluationCounters | None = None,
) -> dict[str, Any]:
    """One run's entry of ``pareto.json``; ``tests`` (per Pareto solution) None means no test split;
    ``test_cost`` the work the test metrics took, where it was counted. ``evaluation_cost`` is None
    when the counters cover fewer evaluations than the run made (a run saved before its counters
    were, then resumed): a partial count would understate the search's work.

    >>> run_record(problem, state, seed=0, tests=None, base_performance=0.7)["solutions"][0].keys()  # doctest: +SKIP
    dict_keys(['grouping', 'storage_cost', 'validation', 'test', 'generation'])
    """
    pareto = state.pareto()
    solutions = [
        {
            "grouping": r.grouping.to_list(),
            "storage_cost": r.storage_cost,
            "validation": {"mean": r.performance, "per_task": r.per_task},
            "test": None if tests is None else {"mean": float(np.mean(list(tests[i].values()))), "per_task": tests[i]},
            "generation": r.generation,
        }
        for i, r in enumerate(pareto)
    ]
    reps = select_representatives(
        [_Sol(s) for s in solutions], base_performance=base_performance,
        best_baseline_performance=best_baseline_performance,
    )
    c = problem.counters
    # A run resumed from a state saved before its counters were: they miss earlier processes' work.
    known = c.configurations >= state.evaluations
    return {
        "seed": seed,
        "solutions": solutions,
        "representatives": {n: (None if r is None else r.payload) for n, r in zip(("G1", "G2", "G3"), reps.__dict__.values(), strict=True)},
        "evaluation_cost": c.cost_record() if known else None,
        "test_cost": None if test_cost is None else test_cost.cost_record(),
    }


def history_record(state: SearchState, seed: int) -> dict[str, Any]:
    """One run's entry of ``history.json``."""
    return {"seed": seed, "generations": [vars(h) for h in state.history]}


def write_run_dir(out_dir: Path, payload: dict[str, Any], histories: list[dict[str, Any]],
                  baseline_rows: Sequence[dict[str, Any]] = ()) -> None:
    """Write ``pareto.json``, ``history.json``, ``summary.md``, ``pareto.png`` (the fronts) and
    ``hypervolume.png`` (each run's hypervolume against real evaluations) under ``out_dir``.

    >>> write_run_dir(Path("out/search"), payload, histories)  # doctest: +SKIP
    """
    from modmerge.reports.pareto import plot_front, plot_hypervolume, summary_markdown

    # Through the typed models first: what is written is what the library and the reports parse.
    pareto = ParetoFile.model_validate(payload)
    HistoryFile.model_validate({"runs": histories})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "pareto.json", payload)
    write_json(out_dir / "history.json", {"runs": histories})
    write_text(out_dir / "summary.md", summary_markdown(pareto, list(baseline_rows)))
    plot_front(pareto, list(baseline_rows), out_dir / "pareto.png")
    plot_hypervolume(histories, out_dir / "hypervolume.png")


class _Sol:
    """Adapter so representative selection sees ``performance``/``storage_cost`` (validation P)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.performance = payload["validation"]["mean"]
        self.storage_cost = payload["storage_cost"]
