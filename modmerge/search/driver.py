"""`modmerge search RECIPE.yaml --out RUN_DIR`: the MERGE offline optimisation, end to end, on any
source (a task suite, a benchmark zoo, or checkpoints with evaluator callables).

One run loop serves every form: :func:`run_recipe` takes a ``problem_for(seed)`` factory (a
:class:`~modmerge.objectives.problem.MergeProblem` per seeded run) and the source's description.
Each run (``runs`` seeds) writes ``RUN_DIR/run<i>/state.json`` and ``evaluation_cost.json``
after every generation (``--resume`` continues them); at the end its Pareto set is measured
once on the test split (where the source has one), every distinct (task, chain) once.
``RUN_DIR`` gets ``pareto.json``, ``history.json``, ``summary.md``, ``pareto.png`` and
``hypervolume.png``.

Example recipe::

    suite: my-suite.yaml          # a task suite (paths relative to the recipe); or zoo: vision
    method: ties
    parameters: {density: 0.2, scaling: 1.0}
    quantization: {bits: 8, granularity: tensor, mode: conditional}
    granularity: component
    budget: 300
    population: 20
    runs: 1
    baselines: out/baselines/baselines.json   # optional: for G2 and the plot

Or, for what no data file expresses (generation, custom metrics), instead of ``suite:`` (paths
relative to the recipe file; each evaluator is ``package.module:function`` taking a state dict
and returning a score, see :meth:`~modmerge.objectives.problem.MergeProblem.from_models`)::

    pretrained: models/base            # HF dir, .safetensors, hub id
    models: {sst2: models/sst2, mrpc: models/mrpc-lora}   # PEFT adapter dirs work too
    evaluators: {sst2: "my_evals:sst2", mrpc: "my_evals:mrpc"}
    test_evaluators: {sst2: "my_evals:sst2_test", mrpc: "my_evals:mrpc_test"}   # optional
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modmerge.atomic import write_json
from modmerge.errors import RecipeError
from modmerge.objectives.own_models import ModelSource
from modmerge.objectives.performance import EvaluationCounters
from modmerge.objectives.problem import Evaluator, MergeProblem
from modmerge.search.outputs import (
    ParetoSolution,
    SearchResult,
    history_record,
    run_record,
    run_seeded,
    whole_model_performance,
    write_run_dir,
)
from modmerge.search.recipe import (
    RECIPE_FILE,
    ModelsForm,
    SearchRecipe,
    baseline_figures,
    check_resume,
    resolve_evaluators,
    save_recipe,
)
from modmerge.search.state import GenerationRecord, SearchState
from modmerge.search.test_phase import read_json_file, test_metrics
from modmerge.tasks.source import TaskSource

logger = logging.getLogger(__name__)

ProblemFactory = Callable[[int], MergeProblem]
GenerationCallback = Callable[[int, GenerationRecord, EvaluationCounters], None]
TestProgress = Callable[[int, int, int], None]

# What a search writes into RUN_DIR (``--overwrite`` clears exactly these, and run<i>/ folders).
RUN_FILES = (RECIPE_FILE, "pareto.json", "history.json", "summary.md", "pareto.png", "hypervolume.png")


def source_problem(recipe: SearchRecipe, source: TaskSource, seed: int) -> MergeProblem:
    """The MERGE problem of one seeded run on a task source; the expert library rebuilds modules
    with it.

    >>> problem = source_problem(load_search_recipe("search.yaml"), open_suite("suite.yaml"), seed=0)  # doctest: +SKIP
    """
    form = recipe.source
    if isinstance(form, ModelsForm):
        raise RecipeError("source_problem: the recipe is of the evaluator form, not a suite or zoo")
    return MergeProblem.from_source(
        source, recipe.call(), recipe.quant(), granularity=recipe.granularity, limit=form.validation_limit,
        seed=seed, cache_bytes=recipe.cache_bytes, prefix_cache_bytes=recipe.prefix_cache_bytes, device=form.device,
        precision=form.precision,
    )


def models_problem(
    recipe: SearchRecipe, pretrained: ModelSource, models: Mapping[str, ModelSource],
    evaluators: Mapping[str, Evaluator], test_evaluators: Mapping[str, Evaluator] | None, seed: int,
) -> MergeProblem:
    """The MERGE problem of one seeded run on checkpoints scored by evaluator callables."""
    form = recipe.source
    if not isinstance(form, ModelsForm):
        raise RecipeError("models_problem: the recipe names a suite or zoo, not checkpoints and evaluators")
    return MergeProblem.from_models(
        pretrained, models, evaluators, recipe.call(), recipe.quant(), granularity=recipe.granularity,
        architecture=form.architecture, rules=[(r.pattern, r.kind, r.stack) for r in form.rules],
        statistics=form.statistics, test_evaluators=test_evaluators, seed=seed, cache_bytes=recipe.cache_bytes,
        prefix_cache_bytes=recipe.prefix_cache_bytes, allow_pickle=form.allow_pickle,
    )


def prepare_out_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a new search into a directory that holds anything, unless ``overwrite`` (then a
    previous search's files and ``run<i>/`` folders are removed, nothing else); with ``resume``
    the directory is continued. Run before any work."""
    if resume or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise RecipeError(f"--out {out_dir}: exists and is not a directory")
    entries = list(out_dir.iterdir())
    if not entries:
        return
    if not overwrite:
        raise RecipeError(f"--out {out_dir}: already holds files (a previous search?); give --resume to continue "
                          "it, --overwrite to replace it, or a new --out")
    for entry in entries:
        if entry.name in RUN_FILES and entry.is_file():
            entry.unlink()
        elif entry.name.startswith("run") and entry.name[3:].isdigit() and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)


def run_recipe(
    recipe: SearchRecipe, out_dir: Path | None, problem_for: ProblemFactory, *, describe: Mapping[str, Any],
    resume: bool = False, overwrite: bool = False, callback: GenerationCallback | None = None,
    test_progress: TestProgress | None = None,
) -> SearchResult:
    """All runs of ``recipe``, each on ``problem_for(seed)``; writes ``out_dir`` (when given) and
    returns the Pareto sets with the ``pareto.json`` payload, which starts with ``describe`` (what
    the source is: ``source``, ``backbone``, ...).

    ``callback(run, record, counters)`` follows every generation (``counters``: the work done
    against a naive evaluator's); ``test_progress(run, done, total)`` every task run of the test
    phase. ``resume`` with a recipe that changes the objective is refused (:func:`check_resume`);
    a new search into a used ``out_dir`` needs ``overwrite`` (:func:`prepare_out_dir`).
    """
    baselines = baseline_figures(recipe.baselines, recipe.call().method)
    if out_dir is not None:
        check_resume(recipe, out_dir, resume)
        prepare_out_dir(out_dir, resume=resume, overwrite=overwrite)
    # G1's bar is F on the whole model measured on this search's own validation subset (the
    # baselines file may use other hyperparameters or another subset); G2's is the file's best.
    base_p: float | None = None
    records, histories, results = [], [], []
    problem: MergeProblem | None = None
    test_limit = getattr(recipe.source, "test_limit", None)
    for i in range(recipe.runs):
        seed = recipe.seed + i
        problem = None  # drop the previous run's tensors and caches before building the next
        problem = problem_for(seed)
        if out_dir is not None and i == 0:  # the source opened: the search starts
            save_recipe(recipe, out_dir)
        run_dir = None if out_dir is None else out_dir / f"run{i}"
        state = run_one(recipe, problem, problem_for, run_dir, seed, resume=resume,
                        callback=None if callback is None else functools.partial(callback, i))
        if base_p is None:
            base_p = whole_model_performance(problem)
        pareto = state.pareto()
        tests = None
        if problem.split_runners is not None:
            tests = test_metrics(problem, [r.grouping for r in pareto], test_limit, run_dir, recipe=recipe, seed=seed,
                                 progress=None if test_progress is None else functools.partial(test_progress, i))
        per_solution = None if tests is None else tests.per_solution
        records.append(run_record(problem, state, seed=seed, tests=per_solution, base_performance=base_p,
                                  best_baseline_performance=baselines.best,
                                  test_cost=None if tests is None else tests.cost))
        histories.append(history_record(state, seed))
        results.append([ParetoSolution(r.grouping, r.storage_cost, r.performance, dict(r.per_task),  # type: ignore[arg-type]
                                       None if per_solution is None else per_solution[j], i, r.generation)
                        for j, r in enumerate(pareto)])
    assert problem is not None  # runs >= 1 (validated)
    backbone = {"name": problem.label, "model_type": (problem.config or {}).get("model_type"), "self_pretrained": False}
    payload = {
        "backbone": backbone,
        **describe,
        "tasks": problem.task_names,
        "recipe": recipe.model_dump(),
        "units": problem.unit_ids,
        "hv_reference": {"storage": float(problem.n_tasks), "performance": 0.0},
        "bars": {"base_method_validation": base_p, "best_baseline_validation": baselines.best,
                 "best_baseline_validation_limit": baselines.val_limit},
        "runs": records,
    }
    if out_dir is not None:
        write_run_dir(out_dir, payload, histories, baselines.rows)
    return SearchResult(tasks=problem.task_names, units=problem.unit_ids, runs=results, payload=payload,
                        out_dir=out_dir)


def run_one(
    recipe: SearchRecipe, problem: MergeProblem, problem_for: ProblemFactory, run_dir: Path | None, seed: int, *,
    resume: bool, callback: Callable[[GenerationRecord, EvaluationCounters], None] | None = None,
) -> SearchState:
    """One seeded search of ``problem`` (built by ``problem_for(seed)``, which Ray workers call
    too); without the test phase or run-set outputs (see :func:`run_recipe`). With ``run_dir`` its state lives in ``run_dir/state.json`` and the
    evaluation counters in ``run_dir/evaluation_cost.json`` (both rewritten every generation), so
    the cost a resumed run reports covers every process that worked on it (a process killed
    between the two writes loses that one generation's counts)."""
    if resume and run_dir is not None and (run_dir / "state.json").is_file():
        saved = _saved_counters(run_dir, seed)
        if saved is not None:
            problem.counters = saved
    executor = None
    if recipe.executor == "ray":
        from modmerge.search.executors import RayExecutor

        executor = RayExecutor(problem_for, seed=seed, workers=recipe.workers, address=recipe.ray_address)
    before = problem.counters  # Ray workers count their own work; it is added to this

    def counted() -> EvaluationCounters:
        return problem.counters if executor is None else before.plus(executor.counters())

    def on_generation(rec: GenerationRecord) -> None:
        if run_dir is not None:
            write_json(run_dir / "evaluation_cost.json", counted().cost_record())
        if callback is not None:
            callback(rec, counted())

    try:
        state = run_seeded(
            problem, seed=seed, budget=recipe.budget, population=recipe.population, surrogate=recipe.surrogate,
            init=recipe.init, run_dir=run_dir, resume=resume, executor=executor, callback=on_generation,
        )
    finally:
        if executor is not None:
            problem.counters = counted()
            executor.close()
    return state


def _saved_counters(run_dir: Path, seed: int) -> EvaluationCounters | None:
    """A resumed run's counters: its ``evaluation_cost.json``, or for a run saved before those
    existed, its entry in the set's earlier ``pareto.json`` (then written to the file, so that a
    rewrite of the outputs keeps them). None when neither has them. A damaged file is one line."""
    cost_path = run_dir / "evaluation_cost.json"
    if cost_path.is_file():
        record = read_json_file(cost_path, what="evaluation counters")
        try:
            return EvaluationCounters.from_record(record)
        except TypeError:
            raise RecipeError(f"{cost_path}: damaged (not the counters a search writes); "
                              "delete it to resume without them") from None
    pareto = run_dir.parent / "pareto.json"
    try:
        runs = json.loads(pareto.read_text())["runs"] if pareto.is_file() else []
    except (ValueError, KeyError, TypeError):
        return None
    record = next((r.get("evaluation_cost") for r in runs if isinstance(r, dict) and r.get("seed") == seed), None)
    if not record:
        return None
    write_json(cost_path, record)
    return EvaluationCounters.from_record(record)


def run_search_recipe(
    recipe: SearchRecipe, out_dir: Path, *, source: TaskSource | None = None, resume: bool = False,
    overwrite: bool = False, callback: GenerationCallback | None = None, test_progress: TestProgress | None = None,
) -> dict[str, Any]:
    """All runs of a recipe; writes the outputs and returns the ``pareto.json`` payload.

    A ``suite:`` or ``zoo:`` recipe runs on ``source``, the task source the caller opened from it
    (the CLI opens both kinds); a recipe with ``pretrained:`` + ``models:`` + ``evaluators:`` runs
    on its evaluator callables, imported by dotted path. See :func:`run_recipe` for the rest.
    """
    form = recipe.source
    if isinstance(form, ModelsForm):
        evaluators = resolve_evaluators(form.evaluators)
        tests = None if form.test_evaluators is None else resolve_evaluators(form.test_evaluators,
                                                                               source="test_evaluators")
        factory = functools.partial(models_problem, recipe, form.pretrained, dict(form.models), evaluators, tests)
        describe = models_description(form.pretrained, dict(form.models))
    else:
        if source is None:
            raise RecipeError(f"recipe names {form.form} {getattr(form, form.form)}: no task source given")
        factory = functools.partial(source_problem, recipe, source)
        describe = source_description(source)
    result = run_recipe(recipe, out_dir, factory, describe=describe, resume=resume, overwrite=overwrite,
                        callback=callback, test_progress=test_progress)
    return result.payload


def source_description(source: TaskSource) -> dict[str, Any]:
    """The head of a task source's ``pareto.json``: what ``library build`` reopens it from."""
    described = source.describe()
    return {"zoo": source.name if "zoo" in described else None, "source": described,
            "backbone": source.backbone_info.model_dump()}


def models_description(pretrained: str, models: Mapping[str, str]) -> dict[str, Any]:
    """The head of an evaluator-form ``pareto.json``: the checkpoints as given (its backbone entry
    is the pretrained checkpoint's label and model type)."""
    return {"zoo": None, "pretrained": pretrained, "models": dict(models)}
