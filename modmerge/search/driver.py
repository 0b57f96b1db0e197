"""`modmerge search RECIPE.yaml --out RUN_DIR`: one MERGE offline optimisation on a task suite, end to end.

The recipe names the task suite (or a benchmark zoo), the intra-group method F and its parameters, quantisation, granularity
and the search settings. Each run (``runs`` seeds) writes ``RUN_DIR/run<i>/state.json`` after
every generation (``--resume`` continues it), and at the end the Pareto set is evaluated once on
the test splits. ``RUN_DIR`` gets ``pareto.json``, ``history.json``, ``summary.md``,
``pareto.png`` and ``hypervolume.png``.

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

Or, for what no data file expresses (generation, custom metrics), instead of ``suite:`` (paths relative to the recipe file; each
evaluator is ``package.module:function`` taking a state dict and returning a score, see
:mod:`modmerge.objectives.models_problem`)::

    pretrained: models/base            # HF dir, .safetensors, hub id
    models: {sst2: models/sst2, mrpc: models/mrpc-lora}   # PEFT adapter dirs work too
    evaluators: {sst2: "my_evals:sst2", mrpc: "my_evals:mrpc"}
    test_evaluators: {sst2: "my_evals:sst2_test", mrpc: "my_evals:mrpc_test"}   # optional
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modmerge.atomic import write_json
from modmerge.errors import RecipeError, validation_line
from modmerge.experts.modules import ModuleKey
from modmerge.objectives.performance import EvaluationCounters, TaskMergeProblem, chain
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.recipes.schema import Rule
from modmerge.search.grouping import GroupingMatrix
from modmerge.search.outputs import (
    history_record,
    run_record,
    run_seeded,
    whole_model_performance,
    write_run_dir,
)
from modmerge.search.state import GenerationRecord, SearchState
from modmerge.tasks.source import TaskSource

logger = logging.getLogger(__name__)


class SearchRecipe(BaseModel):
    """A search recipe; every field has the paper's default where the paper gives one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str | None = Field(default=None, description="a task suite file (the user's models and data)")
    zoo: str | None = Field(default=None, description="a built benchmark zoo's name (the CLI opens it)")
    # The evaluator form (instead of ``zoo``): checkpoints and one evaluator per task.
    pretrained: str | None = None
    models: dict[str, str] | None = None
    evaluators: dict[str, str] | None = Field(default=None, description="task -> 'package.module:function'")
    test_evaluators: dict[str, str] | None = Field(default=None, description="optional, same form, for the test figures")
    statistics: dict[str, str] | None = Field(default=None, description="task -> statistics file (Fisher, RegMean)")
    architecture: str | None = None
    rules: list[Rule] = Field(default_factory=list)
    allow_pickle: bool = False
    method: str = "task_arithmetic"
    parameters: dict[str, Any] = Field(default_factory=dict)
    quantization: dict[str, Any] = Field(default_factory=lambda: {"bits": 8, "granularity": "tensor", "mode": "conditional"})
    granularity: Literal["model", "layer", "component"] = "component"
    budget: int = Field(default=300, ge=1)
    population: int = Field(default=20, ge=2)
    seed: int = 0
    runs: int = Field(default=1, ge=1)
    surrogate: bool = True
    init: Literal["kmeans", "random", "mixed"] = Field(
        default="kmeans", description="initial population: K-means (the paper), random (ablation), mixed (half each)")
    validation_limit: int | None = Field(default=200, ge=1)
    test_limit: int | None = Field(default=None, ge=1)
    executor: Literal["local", "ray"] = "local"
    workers: int = Field(default=2, ge=1, description="Ray workers (executor: ray)")
    ray_address: str | None = None
    device: str = "cpu"
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="what every evaluation forward runs at; the lower ones under torch.autocast "
        "(approximate metrics; faster only on hardware with units for them: bfloat16 evaluated MiniLM tasks "
        "1.9x faster on an AVX-512-BF16 CPU, 2.4x slower without BF16; the task pool warns when slower)")
    baselines: str | None = None
    cache_bytes: int = Field(default=2 * 2**30, gt=0)
    prefix_cache_bytes: int = Field(default=512 * 2**20, ge=0, description="hidden states by chain prefix; 0 disables")

    @model_validator(mode="after")
    def _one_form(self) -> SearchRecipe:
        own = {"pretrained": self.pretrained, "models": self.models, "evaluators": self.evaluators}
        if self.suite is not None and self.zoo is not None:
            raise ValueError("give either suite or zoo, not both")
        if self.suite is not None or self.zoo is not None:
            form = "suite" if self.suite is not None else "zoo"
            given = [k for k, v in {**own, "test_evaluators": self.test_evaluators, "statistics": self.statistics,
                                    "architecture": self.architecture, "rules": self.rules or None,
                                    "allow_pickle": self.allow_pickle or None}.items() if v]
            if given:
                raise ValueError(f"{given[0]}: means nothing with {form} (it is a field of the evaluator form)")
            return self
        missing = [k for k, v in own.items() if v is None]
        if len(missing) == len(own):
            raise ValueError("give suite (or zoo), or pretrained + models + evaluators")
        if missing:
            raise ValueError(f"{missing[0]}: required with pretrained/models (the own-models form)")
        tasks = list(self.models or {})
        for field_name in ("evaluators", "test_evaluators", "statistics"):
            names = getattr(self, field_name)
            if names is None:
                continue
            absent = [t for t in tasks if t not in names]
            if absent:
                raise ValueError(f"{field_name}: task '{absent[0]}' of models has none")
            unknown = [t for t in names if t not in tasks]
            if unknown:
                raise ValueError(f"{field_name}: '{unknown[0]}' is not a task of models ({', '.join(tasks)})")
        if self.executor != "local":
            raise ValueError("executor: only 'local' runs the evaluator form so far")
        # Settings the evaluator callables decide themselves: refused, never recorded as used.
        for name in ("precision", "validation_limit", "test_limit", "prefix_cache_bytes"):
            if name in self.model_fields_set:
                raise ValueError(f"{name}: means nothing in the evaluator form (evaluator callables run their own "
                                 "forwards on their own data); use a task suite, or set it inside the evaluators")
        return self

    @property
    def has_source(self) -> bool:
        """The recipe runs on a task source (a suite or a zoo), not on evaluator callables."""
        return self.suite is not None or self.zoo is not None

    def call(self) -> MethodCall:
        return MethodCall.build(self.method, self.parameters)

    def quant(self) -> QuantConfig:
        return QuantConfig.from_dict(self.quantization)


def load_search_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchRecipe:
    """Read and validate a search recipe; ``overrides`` (from CLI flags) win over the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except yaml.YAMLError:
        raise RecipeError(f"{path}: not valid YAML") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a search recipe must be a mapping of fields, got {type(data).__name__}")
    data = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    if data.get("baselines") and not Path(data["baselines"]).is_absolute():
        data["baselines"] = str(path.parent / data["baselines"])
    _resolve_model_paths(data, path.parent)
    try:
        recipe = SearchRecipe.model_validate(data)
        recipe.call()
        recipe.quant()
    except ValidationError as err:
        raise RecipeError(f"{path}: {validation_line(err)}") from None
    except Exception as err:  # method / quantisation errors already carry one line
        raise RecipeError(f"{path}: {err}") from None
    if recipe.budget < recipe.population:
        raise RecipeError(f"{path}: budget {recipe.budget} is smaller than the population {recipe.population}")
    if not recipe.has_source:
        from modmerge.search.api import resolve_evaluators

        # Imported now so a wrong dotted path fails before any checkpoint is opened.
        resolve_evaluators(recipe.evaluators or {}, source=f"{path}: evaluators")
        resolve_evaluators(recipe.test_evaluators or {}, source=f"{path}: test_evaluators")
    return recipe


def _resolve_model_paths(data: dict[str, Any], root: Path) -> None:
    """Local checkpoint paths are relative to the recipe file (hub ids and absolute paths untouched)."""

    def fix(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        candidate = root / Path(value).expanduser()
        return str(candidate) if not Path(value).expanduser().is_absolute() and candidate.exists() else value

    for field_name in ("pretrained", "suite"):
        if field_name in data:
            data[field_name] = fix(data[field_name])
    for field_name in ("models", "statistics"):
        if isinstance(data.get(field_name), dict):
            data[field_name] = {k: fix(v) for k, v in data[field_name].items()}
    if isinstance(data.get("architecture"), str) and data["architecture"].endswith((".yaml", ".yml")):
        data["architecture"] = fix(data["architecture"])


@dataclass(frozen=True)
class BaselineFigures:
    """What a search takes from a ``baselines.json``: validation P of F on the whole model, the
    best merged baseline's validation P, the rows (for the summary and plot), and the validation
    subset size the file chose hyperparameters on."""

    base: float | None = None
    best: float | None = None
    rows: tuple[dict, ...] = ()
    val_limit: int | None = None


def _baseline_figures(path: str | None, method: str) -> BaselineFigures:
    """The figures of the baselines file at ``path`` (read once); empty without a file."""
    if not path:
        return BaselineFigures()
    payload = json.loads(Path(path).read_text())
    rows = payload["methods"]
    merged = [r for r in rows if r.get("method") and r.get("validation_mean") is not None]
    return BaselineFigures(
        base=next((r["validation_mean"] for r in merged if r["method"] == method), None),
        best=max((r["validation_mean"] for r in merged), default=None),
        rows=tuple(rows),
        val_limit=payload.get("protocol", {}).get("val_limit"),
    )


def source_problem(recipe: SearchRecipe, source: TaskSource, seed: int) -> TaskMergeProblem:
    """The MERGE problem of one seeded run on a task source; the expert library rebuilds modules
    with it.

    >>> problem = source_problem(load_search_recipe("search.yaml"), open_suite("suite.yaml"), seed=0)  # doctest: +SKIP
    """
    return TaskMergeProblem(
        source, recipe.call(), recipe.quant(), granularity=recipe.granularity, limit=recipe.validation_limit,
        seed=seed, cache_bytes=recipe.cache_bytes, prefix_cache_bytes=recipe.prefix_cache_bytes, device=recipe.device,
        precision=recipe.precision,
    )


def run_one(
    recipe: SearchRecipe, source: TaskSource, run_dir: Path, seed: int, *, resume: bool,
    callback: Callable[[GenerationRecord, EvaluationCounters], None] | None = None,
) -> tuple[SearchState, TaskMergeProblem]:
    """One seeded search; its state lives in ``run_dir/state.json`` and the evaluation counters
    in ``run_dir/evaluation_cost.json`` (both rewritten every generation), so the cost a resumed
    run reports covers every process that worked on it (a process killed between the two writes
    loses that one generation's counts)."""
    problem = source_problem(recipe, source, seed)
    cost_path = run_dir / "evaluation_cost.json"
    if resume and (run_dir / "state.json").is_file() and (saved := _saved_counters(run_dir, seed)) is not None:
        problem.counters = saved
    executor = None
    if recipe.executor == "ray":
        from modmerge.search.executors import RayExecutor

        executor = RayExecutor(source, recipe.model_dump(), seed=seed, workers=recipe.workers,
                               address=recipe.ray_address, device=recipe.device)
    before = problem.counters  # Ray workers count their own work; it is added to this

    def counted() -> EvaluationCounters:
        return problem.counters if executor is None else before.plus(executor.counters())

    def on_generation(rec: GenerationRecord) -> None:
        write_json(cost_path, counted().cost_record())
        if callback is not None:
            callback(rec, counted())

    state = run_seeded(
        problem, seed=seed, budget=recipe.budget, population=recipe.population, surrogate=recipe.surrogate,
        init=recipe.init, run_dir=run_dir, resume=resume, executor=executor, callback=on_generation,
    )
    if executor is not None:
        problem.counters = counted()
        executor.close()
    return state, problem


def _saved_counters(run_dir: Path, seed: int) -> EvaluationCounters | None:
    """A resumed run's counters: its ``evaluation_cost.json``, or for a run saved before those
    existed, its entry in the set's earlier ``pareto.json`` (then written to the file, so that a
    rewrite of the outputs keeps them). None when neither has them."""
    cost_path = run_dir / "evaluation_cost.json"
    if cost_path.is_file():
        return EvaluationCounters.from_record(json.loads(cost_path.read_text()))
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


class ParetoTestMetrics(NamedTuple):
    """The Pareto set's test figures: per solution, task -> metric; and the work they took
    (None for a run whose test metrics were stored before their cost was recorded)."""

    per_solution: list[dict[str, float]]
    cost: EvaluationCounters | None


def test_metrics(
    problem: TaskMergeProblem, gs: list[GroupingMatrix], limit: int | None, run_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None, save_every: float = 60.0,
) -> ParetoTestMetrics:
    """Each solution's per-task test metric (staged forwards with prefix reuse, results shared
    between equal expert chains), and the work it took. With ``run_dir``, metrics already in its
    ``test_metrics.json`` (same limit and precision) are reused and the new ones written there:
    every ``save_every`` seconds the task runs measured so far (by task and expert chain) with
    their cost, at the end each solution's metrics. So a resumed search neither measures a
    finished run's Pareto set again nor loses more than ``save_every`` seconds of a test phase
    that was cut off, and the cost covers every process that worked on it."""
    path = None if run_dir is None else run_dir / "test_metrics.json"
    precision = problem.pool.precision
    stored: dict[GroupingMatrix, dict[str, float]] = {}
    known: dict[tuple[int, tuple[ModuleKey, ...]], float] = {}
    cost: EvaluationCounters | None = EvaluationCounters()
    if path is not None and path.is_file():
        payload = json.loads(path.read_text())
        if payload.get("limit") == limit and payload.get("precision", "float32") == precision:
            stored = {GroupingMatrix.from_array(e["grouping"]): e["test"] for e in payload["solutions"]}
            tasks = {name: t for t, name in enumerate(problem.task_names)}
            known = {(tasks[e["task"]], tuple(map(ModuleKey.from_id, e["chain"]))): e["metric"]
                     for e in payload.get("task_runs", []) if e["task"] in tasks}
            if payload.get("cost"):
                cost = EvaluationCounters.from_record(payload["cost"])
            elif stored or known:  # measured before costs were recorded: unknown
                cost = None
    known.update({(t, chain(g, t, problem.unit_ids)): per_task[name]
                  for g, per_task in stored.items() for t, name in enumerate(problem.task_names)})

    def record(task_runs: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"split": "test", "limit": limit, "precision": precision,
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


# Recipe fields that do not change what a run's objective values mean: a resumed search may change them.
RECIPE_FILE = "search_recipe.json"
RESUMABLE_CHANGES = frozenset({"runs", "budget", "executor", "workers", "ray_address", "device", "baselines",
                               "cache_bytes", "prefix_cache_bytes", "test_limit"})


def check_resume(recipe: SearchRecipe, out_dir: Path, resume: bool) -> None:
    """Refuse ``--resume`` of ``out_dir`` with a recipe whose objective differs from the one saved
    there by :func:`save_recipe` (method, parameters, quantisation, granularity, validation subset,
    precision, seed, ...); fields in :data:`RESUMABLE_CHANGES` may change. Reads only.

    >>> check_resume(recipe, Path("runs/a"), resume=True)  # doctest: +SKIP
    RecipeError: --resume runs/a: it was searched with precision='float32', the recipe gives 'bfloat16'; ...
    """
    path = out_dir / RECIPE_FILE
    if not (resume and path.is_file()):
        return
    saved = json.loads(path.read_text())
    defaults = SearchRecipe.model_construct().model_dump(mode="json")
    for name, value in recipe.model_dump(mode="json").items():
        before = saved.get(name, defaults.get(name))
        if name not in RESUMABLE_CHANGES and before != value:
            raise RecipeError(
                f"--resume {out_dir}: it was searched with {name}={before!r}, the recipe gives {value!r}; "
                "resume with the same settings or search into a new --out"
            )


def save_recipe(recipe: SearchRecipe, out_dir: Path) -> None:
    """Keep the recipe a search runs with as ``out_dir/search_recipe.json`` (for :func:`check_resume`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RECIPE_FILE, recipe.model_dump(mode="json"))


def run_search_recipe(
    recipe: SearchRecipe, out_dir: Path, *, source: TaskSource | None = None, resume: bool = False,
    callback: Callable[..., None] | None = None, test_progress: Callable[[int, int, int], None] | None = None,
) -> dict[str, Any]:
    """All runs of a recipe; writes the outputs and returns the ``pareto.json`` payload.

    ``callback(run, record)`` follows every generation; runs on a task source also pass the
    evaluator's :class:`EvaluationCounters` as a third argument (layer forwards done against naive
    ones). ``test_progress(run, done, total)`` follows the task runs of the test metrics.

    A ``suite:`` or ``zoo:`` recipe runs on ``source``, the task source the caller opened from it
    (the CLI opens both kinds); a recipe with ``pretrained:`` + ``models:`` + ``evaluators:`` runs
    on evaluator callables (:func:`modmerge.search.api.run_models_recipe`). ``resume`` with a
    recipe that changes the objective is refused (:func:`check_resume`).
    """
    check_resume(recipe, out_dir, resume)
    if not recipe.has_source:
        from modmerge.search.api import run_models_recipe

        return run_models_recipe(recipe, out_dir, resume=resume, callback=callback).payload
    if source is None:
        raise RecipeError(f"recipe names {'suite ' + str(recipe.suite) if recipe.suite else 'zoo ' + str(recipe.zoo)}: "
                          "no task source given")
    save_recipe(recipe, out_dir)  # the source opened: the search starts
    # G1's bar is F on the whole model measured on this search's own validation subset (the
    # baselines file may use other hyperparameters or another subset); G2's is the file's best.
    baselines = _baseline_figures(recipe.baselines, recipe.call().method)
    base_p: float | None = None
    runs, histories = [], []
    for i in range(recipe.runs):
        seed = recipe.seed + i
        state, problem = run_one(
            recipe, source, out_dir / f"run{i}", seed, resume=resume,
            callback=None if callback is None else (lambda rec, counters, i=i: callback(i, rec, counters)),
        )
        if base_p is None:
            base_p = whole_model_performance(problem)
        tests = test_metrics(problem, [r.grouping for r in state.pareto()], recipe.test_limit, out_dir / f"run{i}",
                             progress=None if test_progress is None else (lambda d, n, i=i: test_progress(i, d, n)))
        runs.append(run_record(problem, state, seed=seed, tests=tests.per_solution, base_performance=base_p,
                               best_baseline_performance=baselines.best, test_cost=tests.cost))
        histories.append(history_record(state, seed))
        units = problem.unit_ids
        del problem  # its module and prefix caches go before the next run builds its own
    payload = {
        "zoo": source.name,
        "source": source.describe(),
        "backbone": source.backbone_info.model_dump(),
        "tasks": source.tasks,
        "recipe": recipe.model_dump(),
        "units": units,
        "hv_reference": {"storage": float(len(source.tasks)), "performance": 0.0},
        "bars": {"base_method_validation": base_p, "best_baseline_validation": baselines.best,
                 "best_baseline_validation_limit": baselines.val_limit},
        "runs": runs,
    }
    write_run_dir(out_dir, payload, histories, baselines.rows)
    return payload
