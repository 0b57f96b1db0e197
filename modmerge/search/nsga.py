"""Surrogate-assisted NSGA-II over grouping matrices (paper Algorithm 1, lines 2-16).

Generation 0 evaluates the initial population (K-means or random) for real. Each later
generation: fit the random forest on every real evaluation so far; breed candidates by binary
tournament, column crossover and mutation; predict their ``P`` (``C`` is exact); evaluate for
real only the candidates that are non-dominated under the prediction (at most
``evals_per_generation``, cut by crowding distance); keep the best ``population_size`` of the
old population and the new evaluations by non-dominated sorting and crowding; update the Pareto
archive (all non-dominated real evaluations). The search stops when the real evaluations reach
the budget, exactly; it stops earlier only if no new configuration can be bred.

Without the surrogate (the ablation) each generation evaluates ``evals_per_generation``
offspring straight from the NSGA-II operators. All randomness flows from one seeded
:class:`numpy.random.Generator` whose state is saved with the search state after every
generation, so a resumed run equals an uninterrupted one.

Example::

    >>> from modmerge.objectives.evaluation import Evaluation
    >>> class Toy:  # P falls as tasks 0 and 1 share units; C counts modules
    ...     n_tasks, n_units = 3, 4
    ...     def storage_cost(self, g): return sum(g.n_groups_per_unit()) / 4
    ...     def evaluate(self, gs):
    ...         p = [1 - sum(c[0] == c[1] for c in g.columns) / 4 for g in gs]
    ...         return [Evaluation(x, [x], self.storage_cost(g)) for x, g in zip(p, gs)]
    >>> cfg = SearchConfig(hv_storage_ref=4.0, hv_performance_ref=0.0, population_size=6,
    ...                    budget=20, init="random", rf_trees=10)
    >>> state = run_search(Toy(), cfg)
    >>> state.evaluations
    20
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from modmerge.errors import ModmergeError
from modmerge.experts.grouping import GroupingMatrix
from modmerge.search.config import SearchConfig
from modmerge.search.init import (
    kmeans_population,
    mixed_population,
    random_grouping,
    random_population,
)
from modmerge.search.operators import make_offspring
from modmerge.search.pareto import (
    hypervolume,
    non_dominated,
    objectives,
    rank_and_crowding,
    survival,
)
from modmerge.search.problem import Evaluation, Executor, LocalExecutor, SearchProblem
from modmerge.search.state import (
    EvaluatedConfig,
    GenerationRecord,
    SearchState,
    load_state,
    save_state,
)
from modmerge.search.surrogate import fit_surrogate

__all__ = ["GenerationCallback", "resume_search", "run_search"]

log = logging.getLogger(__name__)

GenerationCallback = Callable[[GenerationRecord], None]


def run_search(
    problem: SearchProblem,
    config: SearchConfig,
    *,
    unit_vectors: Sequence[np.ndarray] | None = None,
    executor: Executor | None = None,
    state_path: str | os.PathLike[str] | None = None,
    callback: GenerationCallback | None = None,
) -> SearchState:
    """Run a whole search from scratch; return the final state (its ``pareto()`` is the result).

    ``unit_vectors`` (one ``T x d_l`` array of task vectors per unit, possibly projected) is
    required for ``init="kmeans"`` and ``"mixed"``. With ``state_path`` the state is written atomically after
    every generation, for :func:`resume_search`. ``callback`` sees each generation's record after
    the state is saved; an exception it raises stops the search.
    """
    _check_problem(problem)
    if unit_vectors is not None and len(unit_vectors) != problem.n_units:
        raise ModmergeError(
            f"search: {len(unit_vectors)} unit task-vector arrays for a problem of {problem.n_units} units"
        )
    executor = executor or LocalExecutor(problem)
    rng = np.random.default_rng(config.seed)
    t, n = problem.n_tasks, config.population_size
    if config.init == "random":
        initial = random_population(
            t, problem.n_units, n, rng, include_extremes=config.include_extremes
        )
    elif unit_vectors is None:
        raise ModmergeError(f"search: init '{config.init}' needs the units' task vectors (unit_vectors)")
    else:
        populate = mixed_population if config.init == "mixed" else kmeans_population
        initial = populate(
            unit_vectors, n, config.kmeans_ks, rng, include_extremes=config.include_extremes
        )
    state = SearchState(config, t, problem.n_units)
    evaluations = _evaluate(executor, initial)
    state.records = [
        EvaluatedConfig.from_evaluation(g, e, 0) for g, e in zip(initial, evaluations, strict=True)
    ]
    state.population = list(range(len(state.records)))
    state.archive = _archive(state.records)
    record = _history_entry(state, 0, len(initial), len(initial), None)
    _finish_generation(state, rng, record, state_path, callback)
    return _loop(problem, state, rng, executor, state_path, callback)


def resume_search(
    problem: SearchProblem,
    state_path: str | os.PathLike[str],
    *,
    executor: Executor | None = None,
    callback: GenerationCallback | None = None,
) -> SearchState:
    """Continue the search saved at ``state_path`` (written by :func:`run_search`) to its budget."""
    state = load_state(state_path)
    _check_problem(problem)
    if (state.n_tasks, state.n_units) != (problem.n_tasks, problem.n_units):
        raise ModmergeError(
            f"search state {state_path}: saved for {state.n_tasks} tasks x {state.n_units} units, "
            f"the problem has {problem.n_tasks} x {problem.n_units}"
        )
    executor = executor or LocalExecutor(problem)
    return _loop(problem, state, state.generator(), executor, state_path, callback)


def _check_problem(problem: SearchProblem) -> None:
    if problem.n_tasks < 1 or problem.n_units < 1:
        raise ModmergeError(
            f"search: the problem needs >= 1 task and unit, got {problem.n_tasks} x {problem.n_units}"
        )


def _evaluate(executor: Executor, gs: Sequence[GroupingMatrix]) -> list[Evaluation]:
    results = executor.evaluate(gs)
    if len(results) != len(gs):
        raise ModmergeError(
            f"search: executor returned {len(results)} evaluations for {len(gs)} matrices"
        )
    for g, ev in zip(gs, results, strict=True):
        if not (math.isfinite(ev.performance) and math.isfinite(ev.storage_cost)):
            raise ModmergeError(
                f"search: evaluation of grouping {g.key()} gave non-finite objectives "
                f"(P={ev.performance}, C={ev.storage_cost})"
            )
    return list(results)


def _archive(records: Sequence[EvaluatedConfig]) -> list[int]:
    """Indices of all non-dominated real evaluations (Algorithm 1, line 13)."""
    F = objectives([r.storage_cost for r in records], [r.performance for r in records])
    return [int(i) for i in non_dominated(F)]


def _history_entry(
    state: SearchState, generation: int, new: int, candidates: int, mae: float | None
) -> GenerationRecord:
    front = [state.records[i] for i in state.archive]
    F = objectives([r.storage_cost for r in front], [r.performance for r in front])
    return GenerationRecord(
        generation=generation,
        evaluations=state.evaluations,
        new_evaluations=new,
        candidates=candidates,
        hypervolume=hypervolume(F, state.config.hv_reference),
        archive_size=len(front),
        best_performance=max(r.performance for r in state.records),
        least_storage=min(r.storage_cost for r in state.records),
        surrogate_mae=mae,
    )


def _finish_generation(
    state: SearchState,
    rng: np.random.Generator,
    record: GenerationRecord,
    state_path: str | os.PathLike[str] | None,
    callback: GenerationCallback | None,
) -> None:
    state.generation = record.generation
    state.history.append(record)
    state.rng_state = rng.bit_generator.state
    if state_path is not None:
        save_state(state, state_path)
    if callback is not None:
        callback(record)


def _loop(
    problem: SearchProblem,
    state: SearchState,
    rng: np.random.Generator,
    executor: Executor,
    state_path: str | os.PathLike[str] | None,
    callback: GenerationCallback | None,
) -> SearchState:
    while state.evaluations < state.config.budget:
        record = _generation(problem, state, rng, executor)
        if record is None:
            log.warning(
                "search stopped at %d of %d evaluations: no new configuration could be bred",
                state.evaluations,
                state.config.budget,
            )
            break
        _finish_generation(state, rng, record, state_path, callback)
    return state


def _breed(
    state: SearchState, rng: np.random.Generator, n: int, evaluated: set[GroupingMatrix]
) -> list[GroupingMatrix]:
    """``n`` new candidates from the population; random ones only if breeding yields none."""
    cfg = state.config
    parents = [state.records[i] for i in state.population]
    F = objectives([r.storage_cost for r in parents], [r.performance for r in parents])
    rank, crowd = rank_and_crowding(F)
    children = make_offspring(
        [r.grouping for r in parents],
        rank,
        crowd,
        n,
        rng,
        exclude=evaluated,
        crossover_prob=cfg.crossover_prob,
        swap_prob=cfg.swap_prob,
        mutation_rate=cfg.mutation_rate,
    )
    if not children:  # the population's neighbourhood is used up: jump elsewhere
        for _ in range(20 * n):
            g = random_grouping(state.n_tasks, state.n_units, rng)
            if g not in evaluated and g not in children:
                children.append(g)
                if len(children) >= n:
                    break
    return children


def _generation(
    problem: SearchProblem, state: SearchState, rng: np.random.Generator, executor: Executor
) -> GenerationRecord | None:
    """One generation (Algorithm 1, lines 4-14); ``None`` when no new candidate can be made."""
    cfg = state.config
    generation = state.generation + 1
    cap = min(cfg.evals_cap, cfg.budget - state.evaluations)
    evaluated = {r.grouping for r in state.records}
    predicted: list[float | None]
    if cfg.surrogate:
        model = fit_surrogate(
            [r.grouping for r in state.records],
            [r.performance for r in state.records],
            random_state=int(rng.integers(2**31 - 1)),
            n_estimators=cfg.rf_trees,
        )
        candidates = _breed(state, rng, cfg.n_offspring, evaluated)
        if not candidates:
            return None
        guess = model.predict(candidates)
        F = objectives([problem.storage_cost(g) for g in candidates], guess)
        front = non_dominated(F)
        if len(front) > cap:
            front = np.sort(front[survival(F[front], cap)])
        chosen = [candidates[int(i)] for i in front]
        predicted = [float(guess[int(i)]) for i in front]
    else:
        candidates = _breed(state, rng, cap, evaluated)
        if not candidates:
            return None
        chosen = candidates
        predicted = [None] * len(chosen)

    evaluations = _evaluate(executor, chosen)
    first_new = len(state.records)
    state.records.extend(
        EvaluatedConfig.from_evaluation(g, e, generation, p)
        for g, e, p in zip(chosen, evaluations, predicted, strict=True)
    )
    pool = state.population + list(range(first_new, len(state.records)))
    pool_records = [state.records[i] for i in pool]
    F_pool = objectives(
        [r.storage_cost for r in pool_records], [r.performance for r in pool_records]
    )
    state.population = [pool[int(i)] for i in survival(F_pool, cfg.population_size)]
    state.archive = _archive(state.records)
    mae = None
    if cfg.surrogate:
        errors = [
            abs(e.performance - p)
            for e, p in zip(evaluations, predicted, strict=True)
            if p is not None
        ]
        mae = float(np.mean(errors))
    return _history_entry(state, generation, len(chosen), len(candidates), mae)
