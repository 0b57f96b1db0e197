"""A search on the tiny zoo reports layer forwards in pareto.json, summary.md and the progress callback."""

from __future__ import annotations

import json

from modmerge.search.driver import run_search_recipe
from modmerge.search.recipe import SearchRecipe
from modmerge.zoo.store import ZooStore


def test_search_reports_layer_forwards(tiny_zoo, tmp_path):
    recipe = SearchRecipe(zoo="tiny", budget=4, population=4, validation_limit=16, test_limit=16, init="random")
    seen = []
    payload = run_search_recipe(recipe, tmp_path / "run", source=ZooStore(tiny_zoo.root.parent.parent).load(recipe.source.zoo),
                                callback=lambda run, rec, counters: seen.append(counters.cost_record()))
    cost = json.loads((tmp_path / "run" / "pareto.json").read_text())["runs"][0]["evaluation_cost"]
    assert cost == payload["runs"][0]["evaluation_cost"]
    # the budget's 4 configurations, 4 tasks, 2 layers each (the off-budget whole-model one is not counted)
    assert cost["layer_forwards_naive"] == 4 * 4 * 2 and cost["real_evaluations"] == 4
    assert 0 < cost["layer_forwards"] <= cost["task_runs"] * 2
    assert seen and seen[-1] == cost
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert f"Encoder layer forwards (one = one layer over a task's whole validation subset): {cost['layer_forwards']} " \
           f"against {cost['layer_forwards_naive']}" in summary
    # G1's bar is measured on this search's own validation subset, and the summary says so
    assert payload["bars"]["base_method_validation"] is not None
    assert f"F on the whole model {100 * payload['bars']['base_method_validation']:.1f} (this search's subset)" in summary
