"""ReuseEngine on the tiny zoo: oracle equals the task pool, grouping by chain, order, LRU, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_library import fake_library

from modmerge.errors import ModmergeError
from modmerge.experts.grouping import GroupingMatrix
from modmerge.reuse.assembly import chain_state
from modmerge.reuse.engine import ReuseEngine
from modmerge.tasks.taskpool import TaskPool
from modmerge.zoo.store import ZooStore

N = 48


@pytest.fixture(scope="module")
def lib(tiny_zoo, tmp_path_factory):
    t, units = len(tiny_zoo.tasks), len(tiny_zoo.component_map().units("component", exclude_kinds=("head",)))
    pairs = np.array([[0] * units, [0] * units, [1] * units, [2] * units])  # tasks 0 and 1 share every module
    gs = [GroupingMatrix.individual(t, units), GroupingMatrix.from_array(pairs), GroupingMatrix.all_merged(t, units)]
    return fake_library(tiny_zoo, gs, tmp_path_factory.mktemp("fake_lib"))


def texts(zoo, task, n=N):
    return list(zoo.task_data(task)["test"]["inputs"][:n])


@pytest.mark.parametrize("config_id", ["c0", "c1"])
def test_oracle_predictions_equal_the_task_pool_on_the_assembled_chain(lib, tiny_zoo, config_id):
    engine = ReuseEngine(lib, config_id=config_id)
    pool = TaskPool(tiny_zoo, split="test", limit=N)
    for task in tiny_zoo.tasks:
        out = engine.predict([{"text": s} for s in texts(tiny_zoo, task)], tasks=[task] * N)
        expected = pool.predictions(task, chain_state(lib, lib.chain(config_id, task)))
        assert [o["label"] for o in out] == expected.tolist()
        assert {o["task"] for o in out} == {task}
        names = next(e.labels for e in lib.tasks if e.name == task)
        assert [o["label_name"] for o in out] == [names[o["label"]] for o in out]


def test_mixed_request_is_grouped_by_chain_and_keeps_input_order(lib, tiny_zoo):
    engine = ReuseEngine(lib, config_id="c1")
    items, tasks = [], []
    for i in range(12):  # interleave the four tasks
        task = tiny_zoo.tasks[i % 4]
        items.append({"text": texts(tiny_zoo, task)[i], "id": i})
        tasks.append(task)
    out = engine.predict(items, tasks=tasks)
    assert [o["id"] for o in out] == list(range(12))
    assert [o["task"] for o in out] == tasks
    # c1: tasks 0 and 1 share one chain (many-to-one) -> 3 chains, each assembled once
    assert len({o["chain"] for o in out}) == 3
    assert out[0]["chain"] == out[1]["chain"] != out[2]["chain"]
    assert engine.cache.assemblies == 3
    alone = [engine.predict([item], tasks=[task])[0] for item, task in zip(items, tasks, strict=True)]
    assert [o["label"] for o in alone] == [o["label"] for o in out]
    assert engine.cache.assemblies == 3 and engine.cache.hits >= 12


def test_many_to_one_assembles_one_body_for_all_tasks(lib, tiny_zoo):
    engine = ReuseEngine(lib, config_id="c2")  # all merged: every task has the same chain
    items = [{"text": texts(tiny_zoo, t)[0], "task": t} for t in tiny_zoo.tasks]
    out = engine.predict(items)
    assert len({o["chain"] for o in out}) == 1 and engine.cache.assemblies == 1
    # each task still applies its own head: logits widths follow each task's classes
    wide = engine.predict(items, with_logits=True)
    assert [len(o["logits"]) for o in wide] == [e.num_labels for e in lib.tasks]


def test_lru_bound_evicts_and_results_do_not_change(lib, tiny_zoo):
    items = [{"text": texts(tiny_zoo, t)[i]} for i in range(6) for t in tiny_zoo.tasks]
    tasks = [t for _ in range(6) for t in tiny_zoo.tasks]
    roomy = ReuseEngine(lib, config_id="c0")
    tight = ReuseEngine(lib, config_id="c0", cache_bytes=1)
    a = roomy.predict(items, tasks=tasks)
    for _ in range(2):
        b = tight.predict(items, tasks=tasks)
        assert [o["label"] for o in a] == [o["label"] for o in b]
    assert len(tight.cache) == 1 and tight.cache.evictions == 7 and tight.cache.assemblies == 8
    assert roomy.cache.evictions == 0 and len(roomy.cache) == 4


def test_budget_selects_and_configs_lists(lib):
    engine = ReuseEngine(lib, budget=2.5)
    assert engine.config.id == "c1"
    rows = engine.configs()
    assert [r["id"] for r in rows] == ["c0", "c1", "c2"] and [r["selected"] for r in rows] == [False, True, False]


def test_head_without_pooler_falls_back_to_the_zoo(tiny_zoo, tmp_path):
    units = len(tiny_zoo.component_map().units("component", exclude_kinds=("head",)))
    bare = fake_library(tiny_zoo, [GroupingMatrix.all_merged(4, units)], tmp_path, with_pooler=False)
    full = fake_library(tiny_zoo, [GroupingMatrix.all_merged(4, units)], tmp_path / "b")
    items = [{"text": s, "task": "has_color"} for s in texts(tiny_zoo, "has_color", 8)]
    store = ZooStore(tiny_zoo.root.parent.parent)
    assert ReuseEngine(bare, source=store.load("tiny")).predict(items, with_logits=True) == ReuseEngine(full).predict(
        items, with_logits=True)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda e: e.predict([{"text": "x", "task": "nope"}]), "task 'nope' is not in the library"),
        (lambda e: e.predict([{"text": "x"}], tasks=["nope"]), "input 0: task 'nope'"),
        (lambda e: e.predict([{"txt": "x"}]), "input 0: unknown field 'txt'"),
        (lambda e: e.predict([{"text": 3}]), "'text' must be a string"),
        (lambda e: e.predict([{"image": "a.png", "task": "has_color"}]), "library's tasks take texts"),
        (lambda e: e.predict([{"text": "x"}], tasks=["has_color", "has_color"]), "2 labels for 1 inputs"),
        (lambda e: e.predict([{"text": "x"}]), "no router"),
    ],
)
def test_errors_name_the_culprit(lib, call, needle):
    with pytest.raises(ModmergeError, match=needle):
        call(ReuseEngine(lib, config_id="c0"))


def test_unknown_config_is_an_error(lib):
    with pytest.raises(ModmergeError, match="unknown configuration 'c9'"):
        ReuseEngine(lib, config_id="c9")


def test_empty_request(lib):
    assert ReuseEngine(lib, config_id="c0").predict([]) == []


def test_engine_batches_larger_requests(lib, tiny_zoo):
    engine = ReuseEngine(lib, config_id="c0", batch_size=5)
    task = tiny_zoo.tasks[0]
    done = []
    out = engine.predict([{"text": s} for s in texts(tiny_zoo, task, 12)], tasks=[task] * 12, progress=done.append)
    assert done == [5, 5, 2] and len(out) == 12
    assert torch.tensor([o["label"] for o in out]).tolist() == [
        o["label"] for o in ReuseEngine(lib, config_id="c0").predict([{"text": s} for s in texts(tiny_zoo, task, 12)],
                                                                      tasks=[task] * 12)]
