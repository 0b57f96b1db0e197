"""The MERGE search from Python: :func:`merge_search`, on a task suite or on checkpoints with
evaluator callables.

It takes everything a search recipe takes (:class:`~modmerge.search.recipe.SearchRecipe`) and
runs the same driver (:func:`~modmerge.search.driver.run_recipe`): the same outputs, caches,
Ray executor, ``resume`` and test phase as ``modmerge search``.

Example::

    >>> from modmerge.search import merge_search
    >>> result = merge_search(suite="my-suite.yaml", budget=100, baselines="runs/base/baselines.json")  # doctest: +SKIP
    >>> result = merge_search("base/", {"sst2": "ft/sst2", "mrpc": "ft/mrpc"},
    ...                       {"sst2": eval_sst2, "mrpc": eval_mrpc}, budget=100)  # doctest: +SKIP
    >>> [(s.storage_cost, s.performance) for s in result.front()]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modmerge.checkpoints import Checkpoint
from modmerge.errors import RecipeError
from modmerge.objectives.own_models import ModelSource
from modmerge.objectives.problem import Evaluator
from modmerge.search.driver import (
    models_description,
    models_problem,
    run_recipe,
    source_description,
    source_problem,
)
from modmerge.search.outputs import ParetoSolution, SearchResult
from modmerge.search.recipe import validated_recipe
from modmerge.search.state import GenerationRecord
from modmerge.tasks.source import TaskSource

__all__ = ["ParetoSolution", "SearchResult", "merge_search"]

Progress = Callable[[int, GenerationRecord], None]


def merge_search(
    pretrained: ModelSource | None = None,
    models: Mapping[str, ModelSource] | None = None,
    evaluators: Mapping[str, Evaluator] | None = None,
    *,
    suite: str | os.PathLike[str] | TaskSource | None = None,
    test_evaluators: Mapping[str, Evaluator] | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    test_progress: Callable[[int, int, int], None] | None = None,
    allow_pickle: bool = False,
    **settings: Any,
) -> SearchResult:
    """The MERGE offline search, on ``suite`` (a suite file or an opened task source) or on
    ``pretrained`` and the fine-tuned ``models`` (task -> source) scored by ``evaluators``.

    Model sources are anything :func:`~modmerge.checkpoints.open_checkpoint` opens (HF
    directory, ``.safetensors``, hub id, PEFT adapter directory), a ``Checkpoint``, or a state
    dict. ``evaluators[task](state_dict) -> float`` scores the task's assembled model (the
    search's P, on validation data); ``test_evaluators`` give the Pareto set's test figures. An
    evaluator that implements :class:`~modmerge.objectives.runners.StagedEvaluator` gets
    activation-prefix reuse.

    ``settings`` are the recipe's fields, checked as the recipe checks them: ``method``,
    ``parameters``, ``quantization`` (default 8-bit, per tensor, conditional), ``granularity``,
    ``budget``, ``population``, ``seed``, ``runs``, ``surrogate``, ``init``, ``executor``,
    ``workers``, ``baselines`` (a ``baselines.json``: G2's bar and the plot), the cache sizes; with
    a suite also ``validation_limit``, ``test_limit``, ``precision``, ``device``; with
    checkpoints ``architecture``, ``rules`` and ``statistics``. A setting that means nothing for
    the form is refused. With ``out_dir`` the driver's ``RUN_DIR`` files are written (``resume``
    continues them, ``overwrite`` replaces a previous search). ``progress(run, record)`` follows
    every generation, ``test_progress(run, done, total)`` every task run of the test phase.
    Everything is validated before a checkpoint is read.

    >>> result = merge_search(suite="suite.yaml", budget=40, population=8, out_dir="out/search")  # doctest: +SKIP
    >>> result.front()[-1].per_task  # doctest: +SKIP
    {'a': 0.93, 'b': 0.90}
    """
    fields: dict[str, Any] = dict(settings)
    if suite is not None:
        if pretrained is not None or models is not None or evaluators is not None or test_evaluators is not None:
            raise RecipeError("merge_search: give suite, or pretrained + models + evaluators, not both")
        source = _open_suite(suite, allow_pickle=allow_pickle)
        described = source.describe()
        if "zoo" in described:  # an opened benchmark zoo
            fields["zoo"] = str(described["zoo"])
        else:
            fields["suite"] = str(described.get("suite", suite))
    else:
        if pretrained is None or models is None or evaluators is None:
            raise RecipeError("merge_search: give suite, or pretrained + models + evaluators")
        fields.update({
            "pretrained": _label(pretrained, "pretrained"),
            "models": {t: _label(s, t) for t, s in models.items()},
            "evaluators": {t: _qualname(f) for t, f in evaluators.items()},
            "test_evaluators": None if test_evaluators is None else {t: _qualname(f) for t, f in test_evaluators.items()},
            "allow_pickle": allow_pickle,
        })
        if "statistics" in fields and fields["statistics"] is not None:
            fields["statistics"] = {t: str(p) for t, p in fields["statistics"].items()}
        if "rules" in fields:
            fields["rules"] = [dict(r) for r in fields["rules"]]
    recipe = validated_recipe(fields, where="merge_search")
    if suite is not None:
        factory = functools.partial(source_problem, recipe, source)
        describe = source_description(source)
    else:
        factory = functools.partial(models_problem, recipe, pretrained, dict(models), dict(evaluators),
                                    None if test_evaluators is None else dict(test_evaluators))
        describe = models_description(recipe.source.pretrained, dict(recipe.source.models))  # type: ignore[union-attr]
    return run_recipe(
        recipe, None if out_dir is None else Path(out_dir), factory, describe=describe, resume=resume,
        overwrite=overwrite, callback=None if progress is None else (lambda run, rec, counters: progress(run, rec)),
        test_progress=test_progress,
    )


def _open_suite(suite: str | os.PathLike[str] | TaskSource, *, allow_pickle: bool) -> TaskSource:
    if isinstance(suite, TaskSource):
        return suite
    from modmerge.tasks.suite_source import open_suite

    return open_suite(Path(suite), allow_pickle=allow_pickle)


def _label(source: ModelSource, task: str) -> str:
    """How a source is recorded in ``pareto.json`` (a path or hub id as given; else a description)."""
    if isinstance(source, Checkpoint):
        return source.label
    if isinstance(source, Mapping):
        return f"<state dict of {task}>"
    return str(source)


def _qualname(fn: object) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None)
    return f"{module}:{name}" if module and name else repr(fn)
