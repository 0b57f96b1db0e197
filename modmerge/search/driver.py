"""`modmerge search RECIPE.yaml --out RUN_DIR`: one MERGE offline optimisation on a zoo, end to end.

The recipe names the zoo, the intra-group method F and its parameters, quantisation, granularity
and the search settings. Each run (``runs`` seeds) writes ``RUN_DIR/run<i>/state.json`` after
every generation (``--resume`` continues it), and at the end the Pareto set is evaluated once on
the test splits. ``RUN_DIR`` gets ``pareto.json``, ``history.json``, ``summary.md`` and
``pareto.png``.

Example recipe::

    zoo: vision
    method: ties
    parameters: {density: 0.2, scaling: 1.0}
    quantization: {bits: 8, granularity: tensor, mode: conditional}
    granularity: component
    budget: 300
    population: 20
    runs: 1
    baselines: out/baselines/baselines.json   # optional: for G2 and the plot
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modmerge.errors import RecipeError
from modmerge.objectives.performance import ZooMergeProblem, chain
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.recipes.schema import _one_line
from modmerge.search.config import SearchConfig
from modmerge.search.grouping import GroupingMatrix
from modmerge.search.nsga import resume_search, run_search
from modmerge.search.representatives import select_representatives
from modmerge.search.state import GenerationRecord, SearchState
from modmerge.zoo.store import Zoo, ZooStore
from modmerge.zoo.taskpool import TaskPool

logger = logging.getLogger(__name__)


class SearchRecipe(BaseModel):
    """A search recipe; every field has the paper's default where the paper gives one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zoo: str
    method: str = "task_arithmetic"
    parameters: dict[str, Any] = Field(default_factory=dict)
    quantization: dict[str, Any] = Field(default_factory=lambda: {"bits": 8, "granularity": "tensor", "mode": "conditional"})
    granularity: Literal["model", "layer", "component"] = "component"
    budget: int = Field(default=300, ge=1)
    population: int = Field(default=20, ge=2)
    seed: int = 0
    runs: int = Field(default=1, ge=1)
    surrogate: bool = True
    init: Literal["kmeans", "random"] = "kmeans"
    validation_limit: int | None = Field(default=200, ge=1)
    test_limit: int | None = Field(default=None, ge=1)
    executor: Literal["local", "ray"] = "local"
    workers: int = Field(default=2, ge=1, description="Ray workers (executor: ray)")
    ray_address: str | None = None
    device: str = "cpu"
    baselines: str | None = None
    cache_bytes: int = Field(default=2 * 2**30, gt=0)

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
    data = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    if data.get("baselines") and not Path(data["baselines"]).is_absolute():
        data["baselines"] = str(path.parent / data["baselines"])
    try:
        recipe = SearchRecipe.model_validate(data)
        recipe.call()
        recipe.quant()
    except ValidationError as err:
        raise RecipeError(f"{path}: {_one_line(err)}") from None
    except Exception as err:  # method / quantisation errors already carry one line
        raise RecipeError(f"{path}: {err}") from None
    if recipe.budget < recipe.population:
        raise RecipeError(f"{path}: budget {recipe.budget} is smaller than the population {recipe.population}")
    return recipe


def _baseline_figures(path: str | None, method: str) -> tuple[float | None, float | None, list[dict]]:
    """(validation P of F on the whole model, best merged baseline's validation P, baseline rows)."""
    if not path:
        return None, None, []
    rows = json.loads(Path(path).read_text())["methods"]
    merged = [r for r in rows if r.get("method") and r.get("validation_mean") is not None]
    base = next((r["validation_mean"] for r in merged if r["method"] == method), None)
    best = max((r["validation_mean"] for r in merged), default=None)
    return base, best, rows


def run_one(
    recipe: SearchRecipe, zoo: Zoo, run_dir: Path, seed: int, *, resume: bool,
    callback: Callable[[GenerationRecord], None] | None = None,
) -> tuple[SearchState, ZooMergeProblem]:
    """One seeded search; its state lives in ``run_dir/state.json``."""
    problem = ZooMergeProblem(
        zoo, recipe.call(), recipe.quant(), granularity=recipe.granularity, limit=recipe.validation_limit,
        seed=seed, cache_bytes=recipe.cache_bytes, device=recipe.device,
    )
    executor = None
    if recipe.executor == "ray":
        from modmerge.search.executors import RayExecutor

        executor = RayExecutor(zoo.root.parent.parent, recipe.model_dump(), seed=seed, workers=recipe.workers,
                               address=recipe.ray_address, device=recipe.device)
    config = SearchConfig(
        hv_storage_ref=float(problem.n_tasks), hv_performance_ref=0.0, population_size=recipe.population,
        budget=recipe.budget, seed=seed, surrogate=recipe.surrogate, init=recipe.init,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.json"
    if resume and state_path.exists():
        state = resume_search(problem, state_path, executor=executor, callback=callback)
    else:
        vectors = problem.unit_task_vectors() if recipe.init == "kmeans" else None
        state = run_search(problem, config, unit_vectors=vectors, state_path=state_path, callback=callback,
                           executor=executor)
    if executor is not None:
        executor.close()
    return state, problem


def test_metrics(problem: ZooMergeProblem, gs: list[GroupingMatrix], limit: int | None) -> list[dict[str, float]]:
    """Each solution's per-task test metric, with results shared between equal expert chains."""
    pool = TaskPool(problem.zoo, split="test", limit=limit)
    cache: dict[tuple, float] = {}
    out = []
    for g in gs:
        per_task = {}
        for t, name in enumerate(problem.task_names):
            key = (t, chain(g, t, problem.unit_ids))
            if key not in cache:
                state: dict = {}
                for module in key[1]:
                    state.update(problem.builder.dense(module))
                cache[key] = pool.evaluate(name, state)
            per_task[name] = cache[key]
        out.append(per_task)
    return out


def run_search_recipe(
    recipe: SearchRecipe, out_dir: Path, *, store: ZooStore, resume: bool = False,
    callback: Callable[[int, GenerationRecord], None] | None = None,
) -> dict[str, Any]:
    """All runs of a recipe; writes the outputs and returns the ``pareto.json`` payload."""
    from modmerge.reports.pareto import plot_front, summary_markdown

    zoo = store.load(recipe.zoo)
    base_p, best_p, baseline_rows = _baseline_figures(recipe.baselines, recipe.call().method)
    runs, histories = [], []
    for i in range(recipe.runs):
        seed = recipe.seed + i
        state, problem = run_one(
            recipe, zoo, out_dir / f"run{i}", seed, resume=resume,
            callback=None if callback is None else (lambda rec, i=i: callback(i, rec)),
        )
        if base_p is None:
            # F applied to the whole model without quantisation: G1's bar (one evaluation, off budget).
            whole = problem.evaluate([GroupingMatrix.all_merged(problem.n_tasks, problem.n_units)])[0]
            base_p = whole.performance
        pareto = state.pareto()
        tests = test_metrics(problem, [r.grouping for r in pareto], recipe.test_limit)
        solutions = [
            {
                "grouping": r.grouping.to_list(),
                "storage_cost": r.storage_cost,
                "validation": {"mean": r.performance, "per_task": r.per_task},
                "test": {"mean": float(np.mean(list(t.values()))), "per_task": t},
                "generation": r.generation,
            }
            for r, t in zip(pareto, tests, strict=True)
        ]
        reps = select_representatives(
            [_Sol(s) for s in solutions], base_performance=base_p, best_baseline_performance=best_p
        )
        c = problem.counters
        runs.append({
            "seed": seed,
            "solutions": solutions,
            "representatives": {n: (None if r is None else r.payload) for n, r in zip(("G1", "G2", "G3"), reps.__dict__.values(), strict=True)},
            "evaluation_cost": {
                "real_evaluations": c.configurations, "task_runs": c.task_runs, "task_runs_naive": c.task_runs_naive,
                "modules_built": c.modules_built, "modules_naive": c.modules_naive, "seconds": round(c.seconds, 2),
            },
        })
        histories.append({"seed": seed, "generations": [vars(h) for h in state.history]})
    payload = {
        "zoo": zoo.name,
        "backbone": zoo.manifest.backbone.model_dump(),
        "tasks": zoo.tasks,
        "recipe": recipe.model_dump(),
        "units": problem.unit_ids,
        "hv_reference": {"storage": float(problem.n_tasks), "performance": 0.0},
        "bars": {"base_method_validation": base_p, "best_baseline_validation": best_p},
        "runs": runs,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "pareto.json", payload)
    _write_json(out_dir / "history.json", {"runs": histories})
    (out_dir / "summary.md").write_text(summary_markdown(payload, baseline_rows))
    plot_front(payload, baseline_rows, out_dir / "pareto.png")
    return payload


class _Sol:
    """Adapter so representative selection sees ``performance``/``storage_cost`` (validation P)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.performance = payload["validation"]["mean"]
        self.storage_cost = payload["storage_cost"]


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    os.replace(tmp, path)
