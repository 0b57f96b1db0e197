"""MERGE search on the user's own models: :func:`merge_search` (Python) and the recipe form.

The user gives a pretrained checkpoint, fine-tuned checkpoints by task, and an evaluator per
task (a callable from a complete state dict to a score, higher better; see
:mod:`modmerge.objectives.models_problem`). The search, its outputs and the ``RUN_DIR`` layout
are the zoo driver's (:mod:`modmerge.search.outputs`); only the problem differs.

Example::

    >>> from modmerge.search import merge_search
    >>> result = merge_search("base/", {"sst2": "ft/sst2", "mrpc": "ft/mrpc"},
    ...                       {"sst2": eval_sst2, "mrpc": eval_mrpc}, budget=100)  # doctest: +SKIP
    >>> [(s.storage_cost, s.performance) for s in result.front()]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from modmerge.checkpoints import Checkpoint
from modmerge.errors import ModmergeError, RecipeError, validation_line
from modmerge.objectives.models_problem import Evaluator, ModelsMergeProblem, ModelSource
from modmerge.search.driver import SearchRecipe, _baseline_figures, save_recipe
from modmerge.search.grouping import GroupingMatrix
from modmerge.search.outputs import (
    chain_scores,
    history_record,
    run_record,
    run_seeded,
    whole_model_performance,
    write_run_dir,
)
from modmerge.search.pareto import non_dominated
from modmerge.search.state import GenerationRecord

Progress = Callable[[int, GenerationRecord], None]


@dataclass(frozen=True)
class ParetoSolution:
    """One configuration of a run's Pareto set: grouping matrix, C (eq. 8), validation P (eq. 7)."""

    grouping: GroupingMatrix
    storage_cost: float
    performance: float
    per_task: dict[str, float]
    test: dict[str, float] | None
    run: int
    generation: int


@dataclass(frozen=True)
class SearchResult:
    """Every run's Pareto set, and the ``pareto.json`` payload (written under ``out_dir`` if given)."""

    tasks: list[str]
    units: list[str]
    runs: list[list[ParetoSolution]]
    payload: dict[str, Any]
    out_dir: Path | None = None

    @property
    def solutions(self) -> list[ParetoSolution]:
        return [s for run in self.runs for s in run]

    def front(self) -> list[ParetoSolution]:
        """The non-dominated solutions over all runs, by increasing storage cost.

        >>> result.front()[0].storage_cost  # doctest: +SKIP
        """
        sols = self.solutions
        if not sols:
            return []
        keep = non_dominated(np.array([[s.storage_cost, -s.performance] for s in sols]))
        return sorted((sols[i] for i in keep), key=lambda s: (s.storage_cost, -s.performance))


def import_callable(path: str, *, source: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (attributes may be dotted: ``module:Class.method``).

    >>> import_callable("math:sqrt", source="evaluators.a")(4.0)
    2.0
    >>> import_callable("math.sqrt", source="evaluators.a")
    Traceback (most recent call last):
    ...
    modmerge.errors.RecipeError: evaluators.a: 'math.sqrt' is not of the form 'package.module:function'
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise RecipeError(f"{source}: {path!r} is not of the form 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise RecipeError(f"{source}: cannot import module '{module_name}' of {path!r} ({err})") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise RecipeError(f"{source}: module '{module_name}' has no '{attr}' ({path!r})")
        target = getattr(target, part)
    if not callable(target):
        raise RecipeError(f"{source}: {path!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def resolve_evaluators(paths: Mapping[str, str], *, source: str = "evaluators") -> dict[str, Evaluator]:
    """Import each task's evaluator by dotted path; errors name the task and the path.

    >>> resolve_evaluators({"a": "math:nope"})
    Traceback (most recent call last):
    ...
    modmerge.errors.RecipeError: evaluators.a: module 'math' has no 'nope' ('math:nope')
    """
    return {task: import_callable(p, source=f"{source}.{task}") for task, p in paths.items()}


def merge_search(
    pretrained: ModelSource,
    models: Mapping[str, ModelSource],
    evaluators: Mapping[str, Evaluator],
    *,
    method: str = "ties",
    parameters: Mapping[str, Any] | None = None,
    quantization: Mapping[str, Any] | None = None,
    granularity: str = "component",
    budget: int = 300,
    population: int = 20,
    seed: int = 0,
    runs: int = 1,
    out_dir: str | Path | None = None,
    executor: str = "local",
    progress: Progress | None = None,
    test_evaluators: Mapping[str, Evaluator] | None = None,
    architecture: str | None = None,
    rules: Sequence[Mapping[str, str]] = (),
    statistics: Mapping[str, str | Path] | None = None,
    surrogate: bool = True,
    init: str = "kmeans",
    resume: bool = False,
    cache_bytes: int = 2 * 2**30,
    allow_pickle: bool = False,
) -> SearchResult:
    """The MERGE offline search on ``pretrained`` and the fine-tuned ``models`` (task -> source).

    Sources are anything :func:`~modmerge.checkpoints.open_checkpoint` opens (HF directory,
    ``.safetensors``, hub id, PEFT adapter directory), a ``Checkpoint``, or a state dict.
    ``evaluators[task](state_dict) -> float`` scores the task's assembled model (validation, the
    search's P); optional ``test_evaluators`` give the test figures of the Pareto set.
    ``quantization`` is a :class:`~modmerge.quantization.QuantConfig` mapping (default: 8-bit,
    per tensor, conditional). ``rules`` are extra component rules ``{pattern, kind[, stack]}``.
    With ``out_dir`` the zoo driver's ``RUN_DIR`` files are written (``run<i>/state.json`` after
    every generation, ``resume`` continues them). ``progress(run, record)`` is called after
    every generation. Everything is validated before a checkpoint is read.

    >>> result = merge_search("base", {"a": "ft_a", "b": "ft_b"}, {"a": f_a, "b": f_b}, budget=40,
    ...                       population=8, out_dir="out/search")  # doctest: +SKIP
    >>> result.front()[-1].per_task  # doctest: +SKIP
    {'a': 0.93, 'b': 0.90}
    """
    fields: dict[str, Any] = {
        "pretrained": _label(pretrained, "pretrained"),
        "models": {t: _label(s, t) for t, s in models.items()},
        "evaluators": {t: _qualname(f) for t, f in evaluators.items()},
        "test_evaluators": None if test_evaluators is None else {t: _qualname(f) for t, f in test_evaluators.items()},
        "statistics": None if statistics is None else {t: str(p) for t, p in statistics.items()},
        "architecture": architecture, "rules": [dict(r) for r in rules], "allow_pickle": allow_pickle,
        "method": method, "parameters": dict(parameters or {}), "granularity": granularity, "budget": budget,
        "population": population, "seed": seed, "runs": runs, "executor": executor, "surrogate": surrogate,
        "init": init, "cache_bytes": cache_bytes,
    }
    if quantization is not None:
        fields["quantization"] = dict(quantization)
    recipe = _validated(fields)
    return _run_models(
        recipe, pretrained, dict(models), dict(evaluators),
        None if test_evaluators is None else dict(test_evaluators),
        out_dir=None if out_dir is None else Path(out_dir), resume=resume, progress=progress,
    )


def run_models_recipe(
    recipe: SearchRecipe, out_dir: Path | None, *, resume: bool = False, callback: Progress | None = None
) -> SearchResult:
    """Run a recipe of the own-models form (``pretrained`` + ``models`` + dotted ``evaluators``)."""
    if recipe.has_source or recipe.pretrained is None or recipe.models is None or recipe.evaluators is None:
        raise RecipeError("run_models_recipe: the recipe is not of the own-models form (pretrained/models/evaluators)")
    evaluators = resolve_evaluators(recipe.evaluators)
    tests = None if recipe.test_evaluators is None else resolve_evaluators(recipe.test_evaluators, source="test_evaluators")
    return _run_models(recipe, recipe.pretrained, dict(recipe.models), evaluators, tests, out_dir=out_dir,
                       resume=resume, progress=callback)


def _run_models(
    recipe: SearchRecipe, pretrained: ModelSource, models: dict[str, ModelSource], evaluators: dict[str, Evaluator],
    test_evaluators: dict[str, Evaluator] | None, *, out_dir: Path | None, resume: bool, progress: Progress | None,
) -> SearchResult:
    baselines = _baseline_figures(recipe.baselines, recipe.call().method)
    base_p, best_p = baselines.base, baselines.best
    records, histories, results = [], [], []
    problem: ModelsMergeProblem | None = None
    for i in range(recipe.runs):
        seed = recipe.seed + i
        problem = None  # drop the previous run's tensors before reading them again
        problem = ModelsMergeProblem(
            pretrained, models, evaluators, recipe.call(), recipe.quant(), granularity=recipe.granularity,
            architecture=recipe.architecture, rules=[(r.pattern, r.kind, r.stack) for r in recipe.rules],
            statistics=recipe.statistics, seed=seed, cache_bytes=recipe.cache_bytes, allow_pickle=recipe.allow_pickle,
        )
        if out_dir is not None and i == 0:  # the checkpoints loaded: the search starts
            save_recipe(recipe, out_dir)
        state = run_seeded(
            problem, seed=seed, budget=recipe.budget, population=recipe.population, surrogate=recipe.surrogate,
            init=recipe.init, run_dir=None if out_dir is None else out_dir / f"run{i}", resume=resume,
            callback=None if progress is None else (lambda rec, i=i: progress(i, rec)),
        )
        if base_p is None:
            base_p = whole_model_performance(problem)
        pareto = state.pareto()
        tests = None
        if test_evaluators is not None:
            p = problem
            tests = chain_scores(p, [r.grouping for r in pareto], lambda t, c, p=p: p.score(t, c, test_evaluators))
        records.append(run_record(problem, state, seed=seed, tests=tests, base_performance=base_p,
                                  best_baseline_performance=best_p))
        histories.append(history_record(state, seed))
        results.append([
            ParetoSolution(r.grouping, r.storage_cost, r.performance, dict(r.per_task),  # type: ignore[arg-type]
                           None if tests is None else tests[j], i, r.generation)
            for j, r in enumerate(pareto)
        ])
    assert problem is not None  # runs >= 1 (validated)
    payload = {
        "zoo": None,
        "pretrained": recipe.pretrained,
        "models": recipe.models,
        "backbone": {"name": problem.label, "model_type": (problem.config or {}).get("model_type"),
                     "self_pretrained": False},
        "tasks": problem.task_names,
        "recipe": recipe.model_dump(),
        "units": problem.unit_ids,
        "hv_reference": {"storage": float(problem.n_tasks), "performance": 0.0},
        "bars": {"base_method_validation": base_p, "best_baseline_validation": best_p},
        "runs": records,
    }
    if out_dir is not None:
        write_run_dir(out_dir, payload, histories, baselines.rows)
    return SearchResult(tasks=problem.task_names, units=problem.unit_ids, runs=results, payload=payload,
                        out_dir=out_dir)


def _validated(fields: dict[str, Any]) -> SearchRecipe:
    try:
        recipe = SearchRecipe.model_validate(fields)
        recipe.call()
        recipe.quant()
    except ValidationError as err:
        raise RecipeError(f"merge_search: {validation_line(err)}") from None
    except (ModmergeError, ValueError, TypeError) as err:  # method / quantisation errors carry one line
        raise RecipeError(f"merge_search: {err}") from None
    if recipe.budget < recipe.population:
        raise RecipeError(f"merge_search: budget {recipe.budget} is smaller than the population {recipe.population}")
    return recipe


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
