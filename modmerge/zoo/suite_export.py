"""A built zoo written out as a task suite: every zoo is one instance of the user's input.

``write_suite(zoo)`` writes ``<zoo>/suite/suite.yaml`` and one JSONL file per task and split
(rows in the zoo's stored order, so a suite's first N examples are the zoo's), naming the zoo's
own pretrained directory, task bodies and head files. Running a suite command on that file
gives the zoo's results: the same bodies, heads, texts and labels reach the task pool.

Only text zoos are written so far: image tasks would need their images as files plus an image
processor matching the zoo's pixel normalisation (a one-line error says so).

>>> write_suite(ZooStore.default().load("text"))  # doctest: +SKIP
PosixPath('.../zoos/text/suite/suite.yaml')
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from modmerge.atomic import write_text
from modmerge.tasks.metrics import REGRESSION_METRICS
from modmerge.zoo.store import Zoo, ZooError


def write_suite(zoo: Zoo) -> Path:
    """Write (or rewrite) the zoo's suite file and data files; returns the suite file's path."""
    out = zoo.root / "suite"
    tasks = {}
    for task in zoo.tasks:
        entry = zoo.entry(task)
        if entry.modality != "text":
            raise ZooError(f"zoo '{zoo.name}': task '{task}' is an image task; only text zoos are written as suites")
        data = zoo.task_data(task)
        files = {}
        for split, payload in data.items():
            labels = payload["labels"].tolist()
            lines = [json.dumps({"text": text, "label": label}) for text, label in zip(payload["inputs"], labels, strict=True)]
            path = out / "data" / task / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, "\n".join(lines) + "\n")
            files[split] = str(path.relative_to(out))
        tasks[task] = {
            "model": str(Path("..") / entry.body), "head": str(Path("..") / entry.head), "data": files,
            "input": "text", "label": "label", "metric": entry.metric, "pooling": entry.pooling,
            "label_names": list(entry.label_names) if entry.metric not in REGRESSION_METRICS else None,
            "max_length": int(entry.fine_tuning.get("max_length", 128)), "description": entry.description,
        }
        tasks[task] = {k: v for k, v in tasks[task].items() if v is not None}
    suite = {"name": zoo.name, "pretrained": str(Path("..") / zoo.manifest.backbone.path),
             "self_pretrained": zoo.manifest.backbone.self_pretrained,
             "description": f"the '{zoo.name}' benchmark zoo as a task suite", "tasks": tasks}
    path = out / "suite.yaml"
    write_text(path, yaml.safe_dump(suite, sort_keys=False))
    return path
