"""A library configuration's performance on a zoo's splits, with oracle task labels and routed.

This is the per-budget row of the reuse stage's table: per task, the metric when every input is
sent to its own task's expert chain (oracle), the metric when the router chooses (a misrouted
input gets the other task's prediction, as a user would), and the router's accuracy. Inputs
and labels come from a :class:`~modmerge.tasks.taskpool.TaskPool`, which encodes each split once
(texts are tokenised once and cached on disk by the pool), exactly as the search evaluated.

Example::

    >>> evaluate_library(Library.open("lib"), "c3", ZooStore.default().load("vision"), limit=500)  # doctest: +SKIP
    {'config': 'c3', 'storage_cost': 2.1, 'oracle_mean': 0.83, 'routed_mean': 0.81, 'routing_accuracy': 0.97, ...}
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from modmerge.reuse.engine import ReuseEngine
from modmerge.tasks.source import TaskSource
from modmerge.tasks.taskpool import TaskPool, score


def evaluate_library(
    library: Any, config_id: str, source: TaskSource, split: str = "test", limit: int | None = None, use_router: bool = True,
    *, engine: ReuseEngine | None = None, pool: TaskPool | None = None,
) -> dict[str, Any]:
    """Per task ``{"metric", "oracle", "routed", "routing_accuracy", "examples"}`` plus means.

    ``engine`` / ``pool`` may be passed to reuse assembled bodies and encoded splits across
    configurations (the pool must be on ``split`` with ``limit``). ``use_router=False`` leaves
    the routed figures out (``None``).

    >>> evaluate_library(lib, "c0", source, limit=64, use_router=False)["oracle_mean"]  # doctest: +SKIP
    0.84
    """
    started = time.perf_counter()
    engine = engine if engine is not None and engine.config.id == config_id else ReuseEngine(library, config_id=config_id)
    pool = pool or TaskPool(source, split=split, limit=limit)
    per_task: dict[str, dict[str, Any]] = {}
    routed_right = routed_total = 0
    for task in engine.tasks:
        entry = source.entry(task)
        labels = pool.labels(task, split)
        # the pool's encoded split: same tokenisation and max_length as the search used
        encoded = pool.inputs(task, split)
        oracle = engine.predict_encoded(encoded, [task] * len(labels))
        row: dict[str, Any] = {"metric": entry.metric, "examples": len(labels),
                               "oracle": score(entry, labels, _labels(oracle)), "routed": None, "routing_accuracy": None}
        if use_router:
            routed = engine.predict_encoded(encoded, [None] * len(labels))
            right = sum(r["task"] == task for r in routed)
            row["routed"] = score(entry, labels, _labels(routed))
            row["routing_accuracy"] = right / len(labels)
            routed_right, routed_total = routed_right + right, routed_total + len(labels)
        per_task[task] = row
    return {
        "config": config_id,
        "storage_cost": engine.config.storage_cost,
        "split": split,
        "limit": limit,
        "tasks": per_task,
        "oracle_mean": float(np.mean([r["oracle"] for r in per_task.values()])),
        "routed_mean": float(np.mean([r["routed"] for r in per_task.values()])) if use_router else None,
        "routing_accuracy": routed_right / routed_total if use_router and routed_total else None,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _labels(results: list[dict[str, Any]]) -> torch.Tensor:
    values = [r["label"] for r in results]
    return torch.tensor(values, dtype=torch.float32 if any(isinstance(v, float) for v in values) else torch.int64)
