"""`modmerge search` end to end on the tiny zoo: outputs, budget, resume, bad input."""

from __future__ import annotations

import functools
import json

import pytest
import yaml

from modmerge.errors import RecipeError
from modmerge.search.driver import run_search_recipe
from modmerge.search.recipe import load_search_recipe
from modmerge.zoo.store import ZooError, ZooStore


def write(tmp_path, **fields):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"zoo": "tiny", "budget": 10, "population": 5, "validation_limit": 32,
                                    "test_limit": 32, **fields}))
    return path


@pytest.mark.slow
def test_search_writes_outputs_and_resumes_to_the_same_front(tiny_zoo, tmp_path):
    store = ZooStore(tiny_zoo.root.parent.parent)
    recipe = load_search_recipe(write(tmp_path))
    calls = []
    payload = run_search_recipe(recipe, tmp_path / "run", source=store.load(recipe.source.zoo), test_progress=lambda *a: calls.append(a))
    assert calls[-1][0] == 0 and calls[-1][1] == calls[-1][2] == len(calls) > 0  # one call per test task run
    for name in ("pareto.json", "history.json", "summary.md", "pareto.png", "hypervolume.png"):
        assert (tmp_path / "run" / name).exists()
    history = json.loads((tmp_path / "run" / "history.json").read_text())["runs"][0]["generations"]
    assert history[-1]["evaluations"] == 10
    sols = payload["runs"][0]["solutions"]
    for a in sols:  # the archive is non-dominated
        assert not any(
            b["storage_cost"] <= a["storage_cost"] and b["validation"]["mean"] >= a["validation"]["mean"]
            and (b["storage_cost"], b["validation"]["mean"]) != (a["storage_cost"], a["validation"]["mean"])
            for b in sols
        )
    assert payload["runs"][0]["representatives"]["G3"] is not None
    test_cost = payload["runs"][0]["test_cost"]
    assert test_cost["task_runs"] == len(calls) and test_cost["real_evaluations"] == len(sols)
    assert "Test metrics of the Pareto set: " in (tmp_path / "run" / "summary.md").read_text()
    stored = json.loads((tmp_path / "run" / "run0" / "test_metrics.json").read_text())
    assert [s["grouping"] for s in stored["solutions"]] == [s["grouping"] for s in sols]
    for entry in stored["solutions"]:  # a resumed search reads the finished run's test metrics back
        entry["test"] = dict.fromkeys(entry["test"], 0.125)
    (tmp_path / "run" / "run0" / "test_metrics.json").write_text(json.dumps(stored))
    again = run_search_recipe(recipe, tmp_path / "run", source=store.load(recipe.source.zoo), resume=True)
    assert [s["grouping"] for s in again["runs"][0]["solutions"]] == [s["grouping"] for s in sols]
    assert {s["test"]["mean"] for s in again["runs"][0]["solutions"]} == {0.125}
    # the finished run did no work in the resumed process, yet its cost is the first process's
    cost = payload["runs"][0]["evaluation_cost"]
    assert cost["real_evaluations"] == 10 and cost["task_runs"] > 0
    assert json.loads((tmp_path / "run" / "run0" / "evaluation_cost.json").read_text()) == cost
    assert again["runs"][0]["evaluation_cost"] == cost
    assert again["runs"][0]["test_cost"] == test_cost  # nothing measured again, the first cost kept
    # a run saved before per-run counters existed keeps the cost of the set's earlier pareto.json
    cost_file = tmp_path / "run" / "run0" / "evaluation_cost.json"
    cost_file.unlink()
    assert run_search_recipe(recipe, tmp_path / "run", source=store.load(recipe.source.zoo), resume=True)["runs"][0]["evaluation_cost"] == cost
    assert json.loads(cost_file.read_text()) == cost
    # ... and with neither, its cost is unknown, not the resumed process's zero
    cost_file.unlink()
    (tmp_path / "run" / "pareto.json").unlink()
    older = run_search_recipe(recipe, tmp_path / "run", source=store.load(recipe.source.zoo), resume=True)
    assert older["runs"][0]["evaluation_cost"] is None
    assert "Evaluation cost of the search: not recorded" in (tmp_path / "run" / "summary.md").read_text()
    with pytest.raises(RecipeError, match=r"--resume .*searched with precision='float32'"):
        run_search_recipe(load_search_recipe(write(tmp_path, precision="bfloat16")), tmp_path / "run", source=store.load("tiny"),
                          resume=True)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [({"budgett": 3}, "budgett: unknown field"), ({"budget": 3}, "smaller than the population"),
     ({"method": "nope"}, "unknown merge method"), ({"granularity": "block"}, "granularity"),
     ({"init": "grid"}, "init")],
)
def test_bad_search_recipe(tmp_path, fields, needle):
    with pytest.raises(RecipeError, match=needle):
        load_search_recipe(write(tmp_path, **fields))


def test_unknown_zoo_is_an_error_before_work(tmp_path):
    with pytest.raises(ZooError, match="not built"):
        ZooStore(tmp_path).load("vision")


def test_benchmark_search_recipes_load():
    """The recipes behind the reported figures stay valid as the recipe schema changes."""
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[2] / "benchmarks" / "search").glob("*.yaml"))
    assert len(recipes) >= 7
    loaded = {path.stem: load_search_recipe(path) for path in recipes}
    assert loaded["text-tm-default"].budget == 300 and loaded["text-tm-default"].population == 20
    assert loaded["text-tm-default"].source.validation_limit == 200
    assert {loaded[n].granularity for n in ("vision-ta5", "vision-ta5-layer", "vision-ta5-model")} == {
        "component", "layer", "model"}
    assert not loaded["vision-ta5-nosurr"].surrogate and loaded["vision-ta5-randinit"].init == "random"
    assert loaded["vision-ta5-mixedinit"].init == "mixed"


def test_resume_refuses_a_recipe_that_changes_the_objective(tmp_path):
    from modmerge.search.recipe import check_resume, save_recipe

    out = tmp_path / "run"
    check_resume(load_search_recipe(write(tmp_path)), out, resume=True)  # nothing saved yet: fine, writes nothing
    assert not out.exists()
    save_recipe(load_search_recipe(write(tmp_path)), out)
    saved = json.loads((out / "search_recipe.json").read_text())
    assert saved["precision"] == "float32" and saved["budget"] == 10
    # budget, runs, test limit and caches may change on resume
    check_resume(load_search_recipe(write(tmp_path, budget=20, runs=3, test_limit=8)), out, resume=True)
    for fields, needle in [({"precision": "bfloat16"}, "precision='float32', the recipe gives 'bfloat16'"),
                           ({"method": "ties"}, "method='task_arithmetic'"),
                           ({"validation_limit": 16}, "validation_limit=32")]:
        with pytest.raises(RecipeError, match=needle):
            check_resume(load_search_recipe(write(tmp_path, **fields)), out, resume=True)
        check_resume(load_search_recipe(write(tmp_path, **fields)), out, resume=False)  # a fresh search may
    # a run directory from before search_recipe.json existed resumes; missing fields count as defaults
    (out / "search_recipe.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "precision"}))
    check_resume(load_search_recipe(write(tmp_path)), out, resume=True)


def test_mixed_init_runs_on_a_zoo(tiny_zoo, tmp_path):
    """init 'mixed' needs the units' task vectors, as K-means does: the driver computes them."""
    from modmerge.experts.grouping import GroupingMatrix
    from modmerge.search.driver import run_one, source_problem

    recipe = load_search_recipe(write(tmp_path, init="mixed", budget=8, population=6))
    problem_for = functools.partial(source_problem, recipe, tiny_zoo)
    problem = problem_for(0)
    state = run_one(recipe, problem, problem_for, tmp_path / "run0", seed=0, resume=False)
    assert state.evaluations == 8 and state.config.init == "mixed"
    initial = [r.grouping for r in state.records if r.generation == 0]
    assert len(set(initial)) == 6
    assert initial[:2] == [GroupingMatrix.all_merged(problem.n_tasks, problem.n_units),
                           GroupingMatrix.individual(problem.n_tasks, problem.n_units)]
