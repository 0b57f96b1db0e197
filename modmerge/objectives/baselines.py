"""Every static-merging baseline on a source, hyperparameters chosen on validation (Table IV style).

Rows: Individual (T bodies), Pretrained body + task heads, and one row per static merge method.
Merged methods merge the task bodies' non-head components (heads are task-specific, never
merged), pick their hyperparameters on the validation split (first ``val_limit`` examples per
task), then are evaluated once on the test split. Grids come from the merge registry's
``search`` ranges, so the search space has one source.

>>> report = run_baselines(open_suite("suite.yaml"))  # doctest: +SKIP
>>> print(markdown_table(report))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from modmerge.checkpoints import in_memory
from modmerge.errors import ModmergeError
from modmerge.merging import get_method
from modmerge.merging.fisher_statistics import compute_fisher
from modmerge.merging.statistics import StatisticsCache, compute_gram, strip_prefix
from modmerge.recipes.execute import merged_tensors, model_scope_thresholds
from modmerge.recipes.plan import MethodCall
from modmerge.tasks.models import checkpoint_key_map
from modmerge.tasks.source import TaskSource, entries
from modmerge.tasks.taskpool import TaskPool

logger = logging.getLogger(__name__)
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Baseline:
    """A table row: a registry method with fixed settings and the parameters tuned on validation."""

    name: str
    method: str | None  # None: the Individual / Pretrained rows
    fixed: Mapping[str, Any] = field(default_factory=dict)
    tune: tuple[str, ...] = ()
    points: int = 4

    def grid(self, points: int | None = None) -> list[dict[str, Any]]:
        """Parameter settings to try: an even grid over each tuned parameter's search range."""
        if self.method is None:
            return [{}]
        method = get_method(self.method)
        axes = []
        for name in self.tune:
            spec = method.spec(name)
            lo, hi = spec.search or (spec.low, spec.high)
            values = np.linspace(float(lo), float(hi), points or self.points)
            axes.append([round(float(v), 4) for v in values])
        return [{**self.fixed, **dict(zip(self.tune, combo, strict=True))} for combo in itertools.product(*axes)]


BASELINES: tuple[Baseline, ...] = (
    Baseline("Individual", None),
    Baseline("Pretrained", None),
    Baseline("Weight Averaging", "weight_averaging"),
    Baseline("Task Arithmetic", "task_arithmetic", tune=("scaling",), points=10),
    Baseline("TIES", "ties", fixed={"scope": "model"}, tune=("density", "scaling")),
    Baseline("Breadcrumbs", "breadcrumbs", tune=("density", "scaling")),
    Baseline("DARE (TA)", "dare", fixed={"consensus": "none"}, tune=("drop_rate", "scaling")),
    Baseline("DARE (TIES)", "dare", fixed={"consensus": "ties"}, tune=("drop_rate", "scaling")),
    Baseline("PCB", "pcb", tune=("drop_ratio", "scaling")),
    Baseline("Fisher", "fisher"),
    Baseline("RegMean", "regmean", tune=("alpha",)),
    # mergekit's methods; those defined on two models run only on two-task zoos
    Baseline("Breadcrumbs (TIES)", "breadcrumbs_ties", tune=("density", "lambda")),
    Baseline("DARE linear (mergekit)", "dare_linear", tune=("density", "lambda")),
    Baseline("DARE TIES (mergekit)", "dare_ties", tune=("density", "lambda")),
    Baseline("DELLA", "della", tune=("density", "lambda")),
    Baseline("DELLA (linear)", "della_linear", tune=("density", "lambda")),
    Baseline("SCE", "sce", tune=("select_topk",)),
    Baseline("Model Stock", "model_stock"),
    Baseline("Multi-SLERP", "multislerp"),
    Baseline("Karcher", "karcher"),
    Baseline("SLERP", "slerp", tune=("t",)),
    Baseline("NuSLERP", "nuslerp"),
    Baseline("NearSwap", "nearswap", tune=("t",)),
    Baseline("Arcee Fusion", "arcee_fusion"),
)


@dataclass
class BaselineResult:
    name: str
    method: str | None
    parameters: dict[str, Any]
    storage_cost: float
    validation_mean: float | None
    test: dict[str, float]
    grid: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def test_mean(self) -> float:
        return float(np.mean(list(self.test.values())))


def body_keys(source: TaskSource) -> list[str]:
    """The mergeable body parameters: everything but ``head``-kind components (e.g. BERT's pooler)."""
    cmap = source.component_map()
    return [k for k in cmap.keys() if cmap.component_of(k).kind != "head"]


def merge_bodies(
    pretrained: Mapping[str, torch.Tensor],
    tasks: Sequence[Mapping[str, torch.Tensor]],
    keys: Sequence[str],
    call: MethodCall,
    *,
    statistics: Sequence[Mapping[str, torch.Tensor]] | None = None,
    seed: int = 0,
) -> State:
    """One merged body from in-memory states, through the same executor as `modmerge merge`."""
    base = in_memory({k: pretrained[k] for k in keys}, label="pretrained")
    models = [in_memory({k: t[k] for k in keys}, label=f"task{i}") for i, t in enumerate(tasks)]
    plan = dict.fromkeys(keys, call)
    thresholds = model_scope_thresholds(base, models, plan)
    return dict(merged_tensors(base, models, plan, statistics=statistics, seed=seed, thresholds=thresholds))


def task_statistics(
    source: TaskSource, kind: str, *, examples: int = 256, cache: StatisticsCache | None = None
) -> list[dict[str, torch.Tensor]]:
    """Per task, Fisher diagonals (``kind="fisher"``: the expected Fisher under the task model's own
    predictions, a Gaussian likelihood for regression heads) or RegMean Gram matrices (``"gram"``)
    of the task's own model on the first ``examples`` training examples, cached."""
    pool = TaskPool(source, split="train", limit=examples, batch_size=16)
    out = []
    for task in source.tasks:
        digest = source.entry(task).sha256
        model_id = f"{source.name}/{task}/{sorted(digest.items())}"
        # the estimator is part of the data id: a cached empirical Fisher is not the expected one
        data_id = f"train[:{examples}]/checkpoint-names" + ("/expected" if kind == "fisher" else "")

        def compute(task: str = task) -> dict[str, torch.Tensor]:
            model = pool.task_model(task)
            batches = pool.labeled_batches(task)
            if kind == "fisher":
                with torch.enable_grad():
                    stats = compute_fisher(model, batches)
            else:
                stats = compute_gram(model, batches)
            # Statistics come keyed by in-memory parameter names; bodies use checkpoint names
            # (transformers 5 renames ViT modules in memory).
            key_map = checkpoint_key_map(model.body)
            return {key_map.get(k, k): v for k, v in strip_prefix(stats, "body.").items()}

        stats = dict(cache.get_or_compute(kind, model_id, data_id, compute) if cache else compute())
        if not set(stats) & set(body_keys(source)):
            raise ModmergeError(f"{kind} statistics of task '{task}' match no body parameter of '{source.name}'")
        out.append(stats)
    return out


def run_baselines(
    source: TaskSource,
    *,
    baselines: Sequence[Baseline] = BASELINES,
    val_limit: int | None = 200,
    test_limit: int | None = None,
    points: int | None = None,
    seed: int = 0,
    statistics_examples: int = 256,
    on_row: Callable[[BaselineResult], None] | None = None,
) -> list[BaselineResult]:
    """Evaluate every baseline; see the module docstring for the protocol."""
    val_pool = TaskPool(source, split="validation", limit=val_limit)
    test_pool = TaskPool(source, split="test", limit=test_limit)
    keys = body_keys(source)
    pretrained = test_pool.pretrained_state()
    own = {task: test_pool.own_state(task) for task in source.tasks}
    stats_cache = StatisticsCache(source.cache_dir / "statistics") if source.cache_dir is not None else None
    results = []
    for baseline in baselines:
        started = time.perf_counter()
        if baseline.method is None:
            states = {t: (own[t] if baseline.name == "Individual" else pretrained) for t in source.tasks}
            cost = float(len(source.tasks)) if baseline.name == "Individual" else 1.0
            test = test_pool.evaluate_many(states)
            result = BaselineResult(baseline.name, None, {}, cost, None, test)
        else:
            limit = get_method(baseline.method).max_models
            if limit is not None and len(source.tasks) > limit:
                logger.warning("%s skipped: %s merges at most %d models, '%s' has %d tasks",
                               baseline.name, baseline.method, limit, source.name, len(source.tasks))
                continue
            needs = get_method(baseline.method).needs
            stats = task_statistics(source, needs[0], examples=statistics_examples, cache=stats_cache) if needs else None
            tasks = [own[t] for t in source.tasks]
            tried = []
            best: tuple[float, dict[str, Any], State] | None = None
            for params in baseline.grid(points):
                call = MethodCall.build(baseline.method, params)
                merged = merge_bodies(pretrained, tasks, keys, call, statistics=stats, seed=seed)
                score = float(np.mean(list(val_pool.evaluate_many(dict.fromkeys(source.tasks, merged)).values())))
                tried.append({"parameters": params, "validation_mean": score})
                logger.info("%s %s: validation mean %.4f", baseline.name, params, score)
                if best is None or score > best[0]:
                    best = (score, params, merged)
            assert best is not None
            test = test_pool.evaluate_many(dict.fromkeys(source.tasks, best[2]))
            result = BaselineResult(baseline.name, baseline.method, best[1], 1.0, best[0], test, tried)
        result.seconds = time.perf_counter() - started
        results.append(result)
        if on_row is not None:
            on_row(result)
    return results


def report_json(source: TaskSource, results: Sequence[BaselineResult], *, val_limit: int | None, test_limit: int | None) -> dict:
    """The machine-readable report (``baselines.json``)."""
    backbone = source.backbone_info
    heads = {t.name: t.head_parameters for t in entries(source)}
    return {
        "zoo": source.name,
        "source": source.describe(),
        "backbone": backbone.model_dump(),
        "tasks": source.tasks,
        "metrics": {t.name: t.metric for t in entries(source)},
        "protocol": {
            "hyperparameters": "chosen on the validation split (first val_limit examples per task)",
            "val_limit": val_limit,
            "test_limit": test_limit,
            "storage_cost": "stored body parameters / pretrained body parameters (heads apart)",
        },
        "head_parameters": heads,
        "methods": [
            {
                "name": r.name,
                "method": r.method,
                "parameters": r.parameters,
                "storage_cost": r.storage_cost,
                "validation_mean": r.validation_mean,
                "test": r.test,
                "test_mean": r.test_mean,
                "grid": r.grid,
                "seconds": round(r.seconds, 2),
            }
            for r in results
        ],
    }


def markdown_table(report: Mapping[str, Any]) -> str:
    """``baselines.md``: one row per method, test metric per task (x100), mean and storage cost."""
    tasks = report["tasks"]
    lines = [
        f"# Baselines on the `{report['zoo']}` tasks (test split)",
        "",
        f"Backbone: {report['backbone']['name']}"
        + (" — **pretrained inside this project**, not a public checkpoint." if report["backbone"]["self_pretrained"] else "."),
        "Hyperparameters chosen on validation; storage cost C = stored body / pretrained body (task heads apart).",
        "",
        "| Method | C | " + " | ".join(tasks) + " | Mean |",
        "|---|---|" + "---|" * len(tasks) + "---|",
    ]
    for m in report["methods"]:
        cells = " | ".join(f"{100 * m['test'][t]:.1f}" for t in tasks)
        lines.append(f"| {m['name']} | {m['storage_cost']:.2f} | {cells} | {100 * m['test_mean']:.1f} |")
    lines.append("")
    lines.append("Chosen parameters: " + "; ".join(f"{m['name']}: {m['parameters']}" for m in report["methods"] if m["parameters"]))
    return "\n".join(lines) + "\n"
