"""The test phase of a search run: the Pareto set's per-task test metrics, resumable.

Every distinct (task, expert chain) across the solutions runs once, in prefix-sharing order
(:meth:`~modmerge.objectives.problem.MergeProblem.split_metrics`). ``run<i>/test_metrics.json``
keeps what was measured, keyed by everything that determines a test metric (the recipe's
objective fields, the test subset, the precision, the seed, the tasks and units): a stored file
is reused only under the same key, so a new recipe never reads another recipe's figures.

>>> tests = test_metrics(problem, [g], limit=None, run_dir=Path("out/run0"), recipe=recipe, seed=0)  # doctest: +SKIP
>>> tests.per_solution[0]  # doctest: +SKIP
{'sst2': 0.91, 'mrpc': 0.84}
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from modmerge.atomic import write_json
from modmerge.errors import RecipeError
from modmerge.experts.grouping import GroupingMatrix
from modmerge.experts.modules import ModuleKey
from modmerge.objectives.performance import EvaluationCounters, chain
from modmerge.objectives.problem import MergeProblem
from modmerge.search.recipe import RESUMABLE_CHANGES, SearchRecipe

__all__ = ["ParetoTestMetrics", "read_json_file", "test_metrics", "test_metrics_key"]


class ParetoTestMetrics(NamedTuple):
    """The Pareto set's test figures: per solution, task -> metric; and the work they took
    (None for a run whose test metrics were stored before their cost was recorded)."""

    per_solution: list[dict[str, float]]
    cost: EvaluationCounters | None


def read_json_file(path: Path, *, what: str) -> dict[str, Any]:
    """A JSON object a search wrote; a damaged one is one :class:`RecipeError` line naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise RecipeError(f"{path}: damaged {what} (not the JSON a search writes); delete it to measure again") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: damaged {what} (not a JSON object); delete it to measure again")
    return data


def test_metrics_key(problem: MergeProblem, recipe: SearchRecipe | None, seed: int, limit: int | None) -> str:
    """A digest of everything a run's test metrics depend on.

    >>> len(test_metrics_key(problem, recipe, 0, None))  # doctest: +SKIP
    64
    """
    objective = {} if recipe is None else {k: v for k, v in recipe.model_dump(mode="json").items()
                                           if k not in RESUMABLE_CHANGES}
    fields = {"recipe": objective, "seed": seed, "limit": limit, "precision": problem.precision,
              "source": problem.label, "tasks": problem.task_names, "units": problem.unit_ids}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def test_metrics(
    problem: MergeProblem, gs: list[GroupingMatrix], limit: int | None, run_dir: Path | None = None, *,
    recipe: SearchRecipe | None = None, seed: int = 0, progress: Callable[[int, int], None] | None = None,
    save_every: float = 60.0,
) -> ParetoTestMetrics:
    """Each solution's per-task test metric (staged forwards with prefix reuse, results shared
    between equal expert chains), and the work it took. With ``run_dir``, metrics already in its
    ``test_metrics.json`` (same key: :func:`test_metrics_key`) are reused and the new ones written
    there: every ``save_every`` seconds the task runs measured so far (by task and expert chain)
    with their cost, at the end each solution's metrics. So a resumed search neither measures a
    finished run's Pareto set again nor loses more than ``save_every`` seconds of a test phase
    that was cut off, and the cost covers every process that worked on it."""
    path = None if run_dir is None else run_dir / "test_metrics.json"
    key = test_metrics_key(problem, recipe, seed, limit)
    stored: dict[GroupingMatrix, dict[str, float]] = {}
    known: dict[tuple[int, tuple[ModuleKey, ...]], float] = {}
    cost: EvaluationCounters | None = EvaluationCounters()
    if path is not None and path.is_file():
        payload = read_json_file(path, what="test metrics")
        if payload.get("key") == key:
            try:
                stored = {GroupingMatrix.from_array(e["grouping"]): e["test"] for e in payload["solutions"]}
                tasks = {name: t for t, name in enumerate(problem.task_names)}
                known = {(tasks[e["task"]], tuple(map(ModuleKey.from_id, e["chain"]))): float(e["metric"])
                         for e in payload.get("task_runs", []) if e["task"] in tasks}
                cost = EvaluationCounters.from_record(payload["cost"]) if payload.get("cost") else None
            except (KeyError, TypeError, ValueError):
                raise RecipeError(f"{path}: damaged test metrics (fields missing or of the wrong type); "
                                  "delete it to measure again") from None
            if cost is None and not (stored or known):
                cost = EvaluationCounters()
    known.update({(t, chain(g, t, problem.unit_ids)): per_task[name]
                  for g, per_task in stored.items() for t, name in enumerate(problem.task_names)})

    def record(task_runs: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"split": "test", "key": key, "limit": limit, "precision": problem.precision,
                               "cost": None if cost is None else cost.cost_record(),
                               "solutions": [{"grouping": g.to_list(), "test": t} for g, t in stored.items()]}
        if task_runs:  # a test phase in progress: every (task, chain) measured so far
            out["task_runs"] = [{"task": problem.task_names[t], "chain": [m.id for m in c], "metric": v}
                                for (t, c), v in known.items()]
        return out

    last_save = time.monotonic()

    def on_task_run(done: int, total: int) -> None:
        nonlocal last_save
        if path is not None and time.monotonic() - last_save >= save_every:
            write_json(path, record(task_runs=True))
            last_save = time.monotonic()
        if progress is not None:
            progress(done, total)

    tests = problem.split_metrics(gs, "test", limit, known=known, progress=on_task_run, counters=cost)
    if path is not None:
        stored.update(zip(gs, tests, strict=True))
        write_json(path, record(task_runs=False))
    return ParetoTestMetrics(tests, cost)
