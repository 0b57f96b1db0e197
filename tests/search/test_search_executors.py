"""The Ray executor gives the same evaluations as the local one (against a local Ray instance)."""

from __future__ import annotations

import pytest

from modmerge.objectives.performance import ZooMergeProblem
from modmerge.search.driver import SearchRecipe
from modmerge.search.grouping import GroupingMatrix


@pytest.mark.slow
def test_ray_workers_match_local_evaluation(tiny_zoo):
    ray = pytest.importorskip("ray")
    from modmerge.search.executors import RayExecutor

    recipe = SearchRecipe(zoo="tiny", validation_limit=32, quantization={"mode": "never"})
    local = ZooMergeProblem(tiny_zoo, recipe.call(), recipe.quant(), limit=32)
    gs = [GroupingMatrix.all_merged(local.n_tasks, local.n_units), GroupingMatrix.individual(local.n_tasks, local.n_units)]
    expected = local.evaluate(gs)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        executor = RayExecutor(tiny_zoo.root.parent.parent, recipe.model_dump(), seed=0, workers=2)
        got = executor.evaluate(gs)
        executor.close()
    finally:
        ray.shutdown()
    assert [e.per_task for e in got] == [e.per_task for e in expected]
    assert [e.storage_cost for e in got] == pytest.approx([e.storage_cost for e in expected])
