"""Evaluation precision: autocast contexts, and the warning where a lower precision is slower."""

from __future__ import annotations

import logging

import pytest
import torch

from modmerge.tasks import precision as precision_module
from modmerge.tasks.precision import check_precision_speed, precision_context, precision_speedup
from modmerge.tasks.spec import TaskError

CPU = torch.device("cpu")


def test_contexts_and_unknown_precision():
    with precision_context("bfloat16", CPU):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    with precision_context("float32", CPU):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float32
    with pytest.raises(TaskError, match="precision must be one of float32, bfloat16, float16, got 'int4'"):
        precision_context("int4", CPU)


def test_speedup_is_measured():
    assert precision_speedup("float32", CPU) == 1.0
    assert precision_speedup("bfloat16", CPU, rows=64, width=64, repeats=1) > 0


def test_a_slower_lower_precision_is_warned_about(monkeypatch, caplog):
    monkeypatch.setattr(precision_module, "precision_speedup", lambda precision, device: 0.4)
    with caplog.at_level(logging.WARNING, logger="modmerge.tasks.precision"):
        assert check_precision_speed("bfloat16", CPU) == 0.4
    assert "precision bfloat16: a linear layer runs 2.5x slower than float32 on this cpu" in caplog.text
    caplog.clear()
    monkeypatch.setattr(precision_module, "precision_speedup", lambda precision, device: 1.9)
    with caplog.at_level(logging.WARNING, logger="modmerge.tasks.precision"):
        check_precision_speed("bfloat16", CPU)
    assert caplog.text == ""


def test_a_pool_on_another_split_keeps_the_measured_speed(monkeypatch, tiny_zoo):
    from modmerge.tasks import taskpool as taskpool_module
    from modmerge.tasks.taskpool import TaskPool

    calls = []
    monkeypatch.setattr(taskpool_module, "check_precision_speed", lambda p, d: calls.append(p) or 0.5)
    pool = TaskPool(tiny_zoo, split="validation", limit=8, precision="bfloat16")
    test = pool.on_split("test", 4)
    assert calls == ["bfloat16"]  # measured (and warned about) once
    assert (test.split, test.limit, test.precision, test.precision_speedup) == ("test", 4, "bfloat16", 0.5)
    assert TaskPool(tiny_zoo, split="test").precision_speedup == 1.0 and calls == ["bfloat16"]  # float32: nothing to time
