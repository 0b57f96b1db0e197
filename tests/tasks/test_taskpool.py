"""TaskPool on the tiny zoo: recorded metrics reproduced, limits, caches, head-kind keys."""

from __future__ import annotations

import pytest
import torch

from modmerge.errors import ModmergeError
from modmerge.merging import get_method
from modmerge.tasks.metrics import accuracy
from modmerge.tasks.spec import TaskError
from modmerge.tasks.taskpool import TaskPool, head_kind_keys


@pytest.fixture(scope="module")
def pool(tiny_zoo):
    return TaskPool(tiny_zoo)


def test_own_body_reproduces_recorded_individual_metrics(tiny_zoo, pool):
    for task in tiny_zoo.tasks:
        assert pool.evaluate(task) == tiny_zoo.entry(task).metrics["individual_test"]
    val = TaskPool(tiny_zoo, split="validation")
    assert val.evaluate_many(dict.fromkeys(tiny_zoo.tasks)) == {
        t: tiny_zoo.entry(t).metrics["individual_validation"] for t in tiny_zoo.tasks
    }


def test_pretrained_body_with_task_head_is_worse(tiny_zoo, pool):
    pretrained = pool.pretrained_state()
    assert not set(head_kind_keys(tiny_zoo)) & set(pretrained)  # the pooler goes with the head
    scores = {t: pool.evaluate(t, pretrained) for t in tiny_zoo.tasks}
    for task, value in scores.items():
        assert value == tiny_zoo.entry(task).metrics["pretrained_test"]
        assert value < tiny_zoo.entry(task).metrics["individual_test"]


def test_missing_head_kind_keys_come_from_the_tasks_own_body(tiny_zoo, pool):
    task = tiny_zoo.tasks[0]
    own = pool.own_state(task)
    keys = head_kind_keys(tiny_zoo)
    assert keys == ["pooler.dense.weight", "pooler.dense.bias"]
    without_pooler = {k: v for k, v in own.items() if k not in keys}
    assert pool.evaluate(task, without_pooler) == pool.evaluate(task)
    # A body state missing a non-head key is an error naming the key.
    broken = {k: v for k, v in own.items() if k != "embeddings.word_embeddings.weight"}
    with pytest.raises(ModmergeError, match=r"embeddings\.word_embeddings\.weight"):
        pool.evaluate(task, broken)


def test_limit_takes_the_first_examples(tiny_zoo, pool):
    task = "has_color"
    limited = TaskPool(tiny_zoo, limit=40)
    assert len(limited.labels(task)) == 40
    full_preds, full_labels = pool.predictions(task), pool.labels(task)
    assert torch.equal(limited.labels(task), full_labels[:40])
    assert torch.equal(limited.predictions(task), full_preds[:40])
    assert limited.evaluate(task) == accuracy(full_labels[:40], full_preds[:40])
    with pytest.raises(TaskError, match="limit"):
        TaskPool(tiny_zoo, limit=0)


def test_encodings_are_cached_in_memory_and_on_disk(tiny_zoo, monkeypatch):
    pool = TaskPool(tiny_zoo, split="validation", limit=64)
    task = "first_group"
    pool.evaluate(task)
    first = pool.encodings
    assert first <= 1  # 0 if an earlier pool already cached this split on disk
    pool.evaluate(task)
    pool.evaluate(task, pool.pretrained_state())
    assert pool.encodings == first  # not re-tokenised
    assert list((tiny_zoo.root / "data" / "cache").glob(f"{task}.validation.*.pt"))

    # A fresh pool reads the tokenised split from disk: the tokenizer is never called.
    fresh = TaskPool(tiny_zoo, split="validation", limit=64)
    monkeypatch.setattr(fresh, "_get_tokenizer", lambda: pytest.fail("re-tokenised"))
    assert fresh.evaluate(task) == pool.evaluate(task)
    assert fresh.encodings == 0


def test_one_body_module_is_reused(tiny_zoo, pool):
    a = pool.task_model("has_animal")
    b = pool.task_model("has_color", pool.pretrained_state())
    assert a.body is b.body


def test_merged_bodies_and_features(tiny_zoo, pool):
    pre = pool.pretrained_state()
    owns = [pool.own_state(t) for t in tiny_zoo.tasks]
    ta = get_method("task_arithmetic")
    params = ta.validate_params({"scaling": 0.3})
    merged = {k: ta(pre[k], [o[k] for o in owns], **params) for k in pre}
    scores = pool.evaluate_many(dict.fromkeys(tiny_zoo.tasks, merged))
    assert set(scores) == set(tiny_zoo.tasks) and all(0.0 <= s <= 1.0 for s in scores.values())
    feats = pool.features("has_animal")
    assert feats.shape == (len(pool.labels("has_animal")), 32)
    assert pool.throughput() > 0
