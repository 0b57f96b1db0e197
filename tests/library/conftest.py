"""A tiny search run (two seeded runs) on the ``tiny`` zoo, and a run with hand-picked groupings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from library_configs import individual_and_mixed

from modmerge.experts.grouping import GroupingMatrix
from modmerge.library import Library, build_library
from modmerge.objectives.problem import MergeProblem
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.search.driver import run_search_recipe
from modmerge.search.recipe import SearchRecipe
from modmerge.zoo.store import ZooStore


@pytest.fixture(scope="session")
def zoo_store(tiny_zoo) -> ZooStore:
    return ZooStore(tiny_zoo.root.parent.parent)


@pytest.fixture(scope="session")
def search_run(zoo_store, tmp_path_factory) -> Path:
    """RUN_DIR of a real (tiny) search: 2 runs, budget 4, population 2."""
    recipe = SearchRecipe(zoo="tiny", budget=4, population=2, runs=2, validation_limit=16, test_limit=16,
                          surrogate=False, init="random")
    out = tmp_path_factory.mktemp("search") / "run"
    run_search_recipe(recipe, out, source=zoo_store.load(recipe.source.zoo))
    return out


@pytest.fixture(scope="session")
def problem(tiny_zoo, search_run) -> MergeProblem:
    """The search's problem, rebuilt independently of the library (for expected values)."""
    recipe = json.loads((search_run / "pareto.json").read_text())["recipe"]
    return MergeProblem.from_source(tiny_zoo, MethodCall.build(recipe["method"], recipe["parameters"]),
                           QuantConfig.from_dict(recipe["quantization"]), granularity=recipe["granularity"], limit=16)


@pytest.fixture(scope="session")
def chosen_run(search_run, problem, tmp_path_factory) -> Path:
    """A RUN_DIR whose pareto.json holds known groupings: individual and mixed in run 0, mixed again in run 1."""
    payload = json.loads((search_run / "pareto.json").read_text())
    ind, mixed = individual_and_mixed(problem)

    def solution(g: GroupingMatrix, perf: float) -> dict:
        per_task = dict.fromkeys(problem.task_names, perf)
        return {"grouping": g.to_list(), "storage_cost": problem.storage_cost(g),
                "validation": {"mean": perf, "per_task": per_task}, "test": {"mean": perf - 0.01, "per_task": per_task},
                "generation": 0}

    payload["runs"] = [
        {"seed": 0, "solutions": [solution(ind, 0.9), solution(mixed, 0.8)]},
        {"seed": 1, "solutions": [solution(GroupingMatrix.from_array(np.asarray(mixed.to_list()) + 3), 0.8)]},
    ]
    out = tmp_path_factory.mktemp("chosen") / "run"
    out.mkdir()
    (out / "pareto.json").write_text(json.dumps(payload))
    return out


@pytest.fixture(scope="session")
def chosen_lib(chosen_run, zoo_store, tmp_path_factory) -> Library:
    return build_library(chosen_run, tmp_path_factory.mktemp("libs") / "chosen", source=zoo_store.load("tiny"))


@pytest.fixture(scope="session")
def search_lib(search_run, zoo_store, tmp_path_factory) -> Library:
    return build_library(search_run, tmp_path_factory.mktemp("libs") / "search", source=zoo_store.load("tiny"))


@pytest.fixture
def lib_copy(chosen_lib, tmp_path) -> Library:
    """A private copy of the chosen library, free to damage."""
    return Library.open(shutil.copytree(chosen_lib.root, tmp_path / "lib"))
