"""A zoo is one instance of a task suite: the tiny zoo written as a suite gives the zoo's results."""

from __future__ import annotations

import json

import pytest
import torch

from modmerge.objectives.adamerging import AdaMergingSettings
from modmerge.objectives.baselines import BASELINES, run_baselines
from modmerge.search.driver import run_search_recipe
from modmerge.search.recipe import SearchRecipe
from modmerge.tasks.suite_source import open_suite
from modmerge.tasks.taskpool import TaskPool
from modmerge.zoo.suite_export import write_suite


@pytest.fixture(scope="module")
def tiny_suite(tiny_zoo):
    return open_suite(write_suite(tiny_zoo))


def test_the_suite_holds_the_zoos_tasks_heads_and_data(tiny_zoo, tiny_suite):
    assert tiny_suite.tasks == tiny_zoo.tasks and tiny_suite.name == "tiny"
    for task in tiny_zoo.tasks:
        zoo_head, suite_head = tiny_zoo.task_head(task), tiny_suite.task_head(task)
        assert all(torch.equal(zoo_head[k], suite_head[k]) for k in zoo_head)
        for split, payload in tiny_zoo.task_data(task).items():
            assert tiny_suite.task_data(task)[split]["inputs"] == list(payload["inputs"])
            assert torch.equal(tiny_suite.task_data(task)[split]["labels"], payload["labels"])


def test_task_pool_predictions_are_identical(tiny_zoo, tiny_suite):
    zoo_pool, suite_pool = TaskPool(tiny_zoo, split="test"), TaskPool(tiny_suite, split="test")
    merged = {k: (v + zoo_pool.own_state(tiny_zoo.tasks[0])[k]) / 2 for k, v in zoo_pool.pretrained_state().items()}
    for task in tiny_zoo.tasks:
        assert torch.equal(zoo_pool.predictions(task), suite_pool.predictions(task))
        assert torch.equal(zoo_pool.predictions(task, merged), suite_pool.predictions(task, merged))


def test_baselines_are_identical(tiny_zoo, tiny_suite):
    names = {"Individual", "Task Arithmetic", "TIES", "AdaMerging (layer-wise)", "EMR-Merging"}
    chosen = tuple(b for b in BASELINES if b.name in names)
    adaptation = AdaMergingSettings(steps=2)
    zoo_rows = run_baselines(tiny_zoo, baselines=chosen, val_limit=16, test_limit=32, points=2, adamerging=adaptation)
    suite_rows = run_baselines(tiny_suite, baselines=chosen, val_limit=16, test_limit=32, points=2, adamerging=adaptation)
    assert {r.name for r in zoo_rows} == names
    assert [(r.name, r.parameters, r.test, r.storage_cost, r.details) for r in zoo_rows] == [
        (r.name, r.parameters, r.test, r.storage_cost, r.details) for r in suite_rows]


@pytest.mark.slow
def test_same_seed_gives_the_same_pareto_set(tiny_zoo, tiny_suite, tmp_path):
    fields = {"method": "task_arithmetic", "budget": 8, "population": 4, "validation_limit": 16, "test_limit": 16}
    by_zoo = run_search_recipe(SearchRecipe(zoo="tiny", **fields), tmp_path / "zoo", source=tiny_zoo)
    by_suite = run_search_recipe(SearchRecipe(suite=str(tiny_suite.path), **fields), tmp_path / "suite",
                                 source=tiny_suite)

    def front(payload):
        return json.dumps([[(s["grouping"], s["storage_cost"], s["validation"], s.get("test"))
                            for s in run["solutions"]] for run in payload["runs"]], sort_keys=True)

    assert front(by_zoo) == front(by_suite)


def test_a_tokenisation_cache_that_cannot_be_written_is_skipped(tiny_zoo, tmp_path, monkeypatch, caplog):
    """A full disk under the cache: one warning, the inputs still encoded, no stray file."""
    import errno

    import modmerge.tasks.taskpool as taskpool

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    suite = open_suite(write_suite(tiny_zoo), cache_root=tmp_path / "cache")
    monkeypatch.setattr(taskpool, "write_bytes", full_disk)
    pool = TaskPool(suite, split="test")
    task = suite.tasks[0]
    with caplog.at_level("WARNING"):
        predictions = pool.predictions(task)
    assert len(predictions) == len(pool.labels(task))
    assert "cannot cache tokenised" in caplog.text and "No space left" in caplog.text
    assert not list((tmp_path / "cache").rglob("*.pt"))
