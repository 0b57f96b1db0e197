"""The Ray executor gives the same evaluations as the local one and counts the same work (against a local Ray instance)."""

from __future__ import annotations

import functools

import pytest

from modmerge.experts.grouping import GroupingMatrix
from modmerge.objectives.problem import MergeProblem
from modmerge.search.driver import run_search_recipe, source_problem
from modmerge.search.recipe import SearchRecipe


@pytest.mark.slow
def test_ray_workers_match_local_evaluation(tiny_zoo, tmp_path):
    ray = pytest.importorskip("ray")
    from modmerge.search.executors import RayExecutor

    recipe = SearchRecipe(zoo="tiny", validation_limit=32, quantization={"mode": "never"})
    local = MergeProblem.from_source(tiny_zoo, recipe.call(), recipe.quant(), limit=32)
    gs = [GroupingMatrix.all_merged(local.n_tasks, local.n_units), GroupingMatrix.individual(local.n_tasks, local.n_units)]
    expected = local.evaluate(gs)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        executor = RayExecutor(functools.partial(source_problem, recipe, tiny_zoo), seed=0, workers=2)
        got = executor.evaluate(gs)
        counted = executor.counters()  # the workers' work, one configuration each
        executor.close()
        searched = run_search_recipe(  # a whole search through Ray workers reports their work
            SearchRecipe(zoo="tiny", budget=4, population=2, runs=1, validation_limit=16, test_limit=16,
                         surrogate=False, init="random", executor="ray", workers=2),
            tmp_path / "run", source=tiny_zoo,
        )
    finally:
        ray.shutdown()
    assert [e.per_task for e in got] == [e.per_task for e in expected]
    assert [e.storage_cost for e in got] == pytest.approx([e.storage_cost for e in expected])
    local_cost, ray_cost = local.counters.cost_record(), counted.cost_record()
    for name in ("real_evaluations", "task_runs", "task_runs_naive", "layer_forwards_naive"):
        assert ray_cost[name] == local_cost[name] > 0, name
    cost = searched["runs"][0]["evaluation_cost"]
    assert cost["real_evaluations"] == 4 and cost["task_runs"] > 0 and cost["layer_forwards"] > 0
