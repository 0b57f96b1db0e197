"""`modmerge suite check SUITE.yaml`: validate a suite before any work.

Every model opens and shares the pretrained model's architecture (its body's tensor names and
shapes), each head is a linear classifier, data files parse, the named fields exist, labels fit
the head, and regression metrics get a one-output head. The first problem is raised as one
line naming the task, the file, the row and the field; a clean suite returns a summary row per
task.

>>> rows = check_suite("suite.yaml")   # doctest: +SKIP
>>> rows[0]["task"], rows[0]["labels"]  # doctest: +SKIP
('sentiment', 2)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modmerge.errors import ModmergeError
from modmerge.tasks.metrics import REGRESSION_METRICS
from modmerge.tasks.spec import TaskError
from modmerge.tasks.suite_source import SuiteSource, open_suite


def check_suite(path: str | Path, *, cache_root: Path | None = None, allow_pickle: bool = False) -> list[dict[str, Any]]:
    """Check everything :mod:`~modmerge.tasks.check` lists; one summary dict per task."""
    source = open_suite(path, cache_root=cache_root, allow_pickle=allow_pickle)
    with source.backbone() as base:
        shapes = {k: tuple(base.info(k).shape) for k in base.keys()}
    return [_check_task(source, task, shapes) for task in source.tasks]


def _check_task(source: SuiteSource, task: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    try:
        with source.task_body(task) as body:
            for key, shape in shapes.items():
                got = tuple(body.info(key).shape)
                if got != shape:
                    raise TaskError(f"task '{task}' model {body.label}: tensor '{key}' has shape {list(got)}, the "
                                    f"pretrained model's is {list(shape)} (not the same architecture)")
    except ModmergeError as err:
        raise TaskError(str(err) if str(err).startswith("task '") else f"task '{task}': {err}") from None
    entry = source.entry(task)
    head = source.task_head(task)
    n_out, width = head["classifier.weight"].shape
    hidden = _hidden(shapes)
    if hidden is not None and width != hidden:
        raise TaskError(f"task '{task}': head classifier.weight takes {width} features, the body gives {hidden}")
    if entry.metric in REGRESSION_METRICS and n_out != 1:
        raise TaskError(f"task '{task}': metric '{entry.metric}' needs a regression head (1 output), it has {n_out}")
    data = source.task_data(task)
    for split in ("validation", "test"):
        if split not in data:
            raise TaskError(f"task '{task}': no {split} split")
    return {"task": task, "modality": entry.modality, "metric": entry.metric, "labels": int(n_out),
            "pooling": entry.pooling, "splits": {s: len(d["labels"]) for s, d in data.items()}}


def _hidden(shapes: dict[str, tuple[int, ...]]) -> int | None:
    for key, shape in shapes.items():
        if key.endswith(("word_embeddings.weight", "patch_embeddings.projection.weight")):
            return shape[-1] if "word" in key else shape[0]
    return None
