"""The search loop on the synthetic problem: budget, archive, hypervolume, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from search_synthetic import SyntheticProblem, random_search_hv

from modmerge.errors import ModmergeError, RecipeError
from modmerge.search import Evaluation, GroupingMatrix, SearchConfig, non_dominated, run_search
from modmerge.search.pareto import objectives

REF = dict(hv_storage_ref=1.05, hv_performance_ref=0.0)  # C <= 1.0 and P >= 0 on the problem


def config(**kw) -> SearchConfig:
    return SearchConfig(**{**REF, "population_size": 10, "budget": 57, "rf_trees": 20, **kw})


def search(seed=0, **kw):
    problem = SyntheticProblem()
    state = run_search(problem, config(seed=seed, **kw), unit_vectors=problem.unit_vectors())
    return problem, state


@pytest.mark.parametrize(
    "kw", [{}, {"surrogate": False}, {"init": "random"}, {"init": "mixed"}, {"evals_per_generation": 4}]
)
def test_budget_is_spent_exactly_and_never_exceeded(kw):
    problem, state = search(**kw)
    assert state.evaluations == 57
    assert sum(problem.batches) == 57
    cap = kw.get("evals_per_generation", 10)
    assert problem.batches[0] == 10  # the initial population
    assert all(1 <= b <= cap for b in problem.batches[1:])
    assert [h.evaluations for h in state.history] == list(np.cumsum(problem.batches))
    # no configuration is evaluated twice
    assert len({r.grouping for r in state.records}) == 57


def test_archive_is_exactly_the_non_dominated_evaluations():
    _, state = search()
    F = objectives([r.storage_cost for r in state.records], [r.performance for r in state.records])
    assert state.archive == non_dominated(F).tolist()
    front = state.pareto()
    for a in front:
        for b in state.records:
            dominated = (
                b.storage_cost <= a.storage_cost
                and b.performance >= a.performance
                and (b.storage_cost < a.storage_cost or b.performance > a.performance)
            )
            assert not dominated
    assert [r.storage_cost for r in front] == sorted(r.storage_cost for r in front)
    assert state.history[-1].archive_size == len(front)


def test_history_is_monotone_and_consistent():
    _, state = search()
    hv = [h.hypervolume for h in state.history]
    assert all(b >= a for a, b in itertools.pairwise(hv))
    assert hv[-1] > hv[0]
    assert [h.generation for h in state.history] == list(range(len(state.history)))
    assert state.history[-1].best_performance == max(r.performance for r in state.records)
    assert state.history[-1].least_storage == min(r.storage_cost for r in state.records)
    assert state.history[0].surrogate_mae is None
    assert all(h.surrogate_mae is not None for h in state.history[1:])
    assert len(state.population) == 10


def test_same_seed_same_search_different_seed_different_search():
    _, a = search(seed=3)
    _, b = search(seed=3)
    _, c = search(seed=4)
    assert a.history == b.history
    assert a.records == b.records
    assert a.population == b.population
    assert [r.grouping for r in a.records] != [r.grouping for r in c.records]


def test_kmeans_initial_population_is_evaluated_first():
    problem, state = search()
    initial = [r.grouping for r in state.records if r.generation == 0]
    assert GroupingMatrix.all_merged(4, 6) in initial
    assert problem.planted() in initial


def test_surrogate_search_beats_random_search_on_average():
    seeds = range(3)
    searched = [search(seed=s, budget=60)[1].history[-1].hypervolume for s in seeds]
    baseline = [random_search_hv(SyntheticProblem(), 60, s, (1.05, 0.0)) for s in seeds]
    assert np.mean(searched) > np.mean(baseline)


def test_callback_sees_every_generation():
    problem = SyntheticProblem()
    seen = []
    state = run_search(problem, config(init="random"), callback=seen.append)
    assert seen == state.history


def test_tiny_space_stops_when_everything_is_evaluated():
    class Tiny(SyntheticProblem):
        def __init__(self):
            super().__init__(n_tasks=2, n_units=2)

    problem = Tiny()  # Bell(2)^2 = 4 configurations
    cfg = SearchConfig(
        hv_storage_ref=1.0,
        hv_performance_ref=0.0,
        population_size=2,
        budget=10,
        init="random",
        rf_trees=5,
    )
    state = run_search(problem, cfg)
    assert state.evaluations == 4
    assert len({r.grouping for r in state.records}) == 4


def test_bad_input_is_a_clear_error_before_any_work():
    problem = SyntheticProblem()
    with pytest.raises(RecipeError, match="budget"):
        config(budget=5)
    with pytest.raises(RecipeError, match="init"):
        config(init="grid")
    with pytest.raises(ModmergeError, match="unit_vectors"):
        run_search(problem, config())
    with pytest.raises(ModmergeError, match="init 'mixed' needs"):
        run_search(problem, config(init="mixed"))
    with pytest.raises(ModmergeError, match="3 unit task-vector arrays"):
        run_search(problem, config(), unit_vectors=problem.unit_vectors()[:3])
    assert problem.batches == []


def test_non_finite_objectives_are_an_error():
    class NaNProblem(SyntheticProblem):
        def evaluate(self, gs):
            out = super().evaluate(gs)
            return [Evaluation(float("nan"), e.per_task, e.storage_cost) for e in out]

    with pytest.raises(ModmergeError, match="non-finite"):
        run_search(NaNProblem(), config(init="random"))


def test_executor_returning_wrong_count_is_an_error():
    class Broken:
        def evaluate(self, gs):
            return []

    with pytest.raises(ModmergeError, match="0 evaluations for 10"):
        run_search(SyntheticProblem(), config(init="random"), executor=Broken())
