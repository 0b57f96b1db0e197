"""Every baseline row on a source, hyperparameters chosen on validation (Table I / IV style).

Rows (:mod:`modmerge.objectives.baseline_rows`): Individual (T bodies), Pretrained body + task
heads, one row per static merge method, AdaMerging (task-wise and layer-wise) and EMR-Merging.
Merged methods merge the task bodies' non-head components (heads are task-specific, never
merged). Static methods pick their hyperparameters on the validation split (first
``val_limit`` examples per task) over grids read from the merge registry's ``search`` ranges,
so the search space has one source; AdaMerging learns its coefficients from unlabeled inputs of
the split its settings name (:class:`~modmerge.objectives.adamerging.AdaMergingSettings`);
EMR-Merging has nothing to tune and selects each task's model by its oracle task label. Every
row is then evaluated once on the test split.

>>> report = run_baselines(open_suite("suite.yaml"))  # doctest: +SKIP
>>> print(markdown_table(report))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from modmerge.checkpoints import in_memory
from modmerge.components.task_vectors import task_vector
from modmerge.errors import ModmergeError
from modmerge.merging import get_method
from modmerge.merging.emr import emr_merge
from modmerge.merging.fisher_statistics import compute_fisher
from modmerge.merging.statistics import StatisticsCache, compute_gram, strip_prefix
from modmerge.objectives.adamerging import (
    AdaMergingSettings,
    adapt,
    coefficient_units,
    entropy_tasks,
)
from modmerge.objectives.baseline_rows import BASELINES, Baseline
from modmerge.objectives.storage import emr_storage_cost
from modmerge.recipes.execute import merged_tensors, model_scope_thresholds
from modmerge.recipes.plan import MethodCall
from modmerge.tasks.models import checkpoint_key_map
from modmerge.tasks.source import TaskSource, entries
from modmerge.tasks.taskpool import TaskPool

logger = logging.getLogger(__name__)
State = dict[str, torch.Tensor]


__all__ = ["BASELINES", "Baseline", "BaselineResult", "body_keys", "markdown_table", "merge_bodies",
           "report_json", "run_baselines", "task_statistics"]


@dataclass
class BaselineResult:
    """One row's figures. ``details`` holds what a row learned beyond its parameters (AdaMerging's
    coefficients, EMR's rescalers); ``notes`` says in words how the row was run;
    ``adaptation_seconds`` is AdaMerging's coefficient learning alone (``seconds``: the whole row)."""

    name: str
    method: str | None
    parameters: dict[str, Any]
    storage_cost: float
    validation_mean: float | None
    test: dict[str, float]
    grid: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    adaptation_seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

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


@dataclass
class RowInputs:
    """What every row of one `run_baselines` call shares: the pools and the bodies, loaded once."""

    source: TaskSource
    val_pool: TaskPool
    test_pool: TaskPool
    keys: list[str]
    pretrained: State
    own: dict[str, State]

    def evaluate(self, states: Mapping[str, State]) -> tuple[float, dict[str, float]]:
        """(validation mean, test metric per task) of one body per task."""
        validation = self.val_pool.evaluate_many(states)
        return float(np.mean(list(validation.values()))), self.test_pool.evaluate_many(states)


def run_baselines(
    source: TaskSource,
    *,
    baselines: Sequence[Baseline] = BASELINES,
    val_limit: int | None = 200,
    test_limit: int | None = None,
    points: int | None = None,
    seed: int = 0,
    statistics_examples: int = 256,
    adamerging: AdaMergingSettings | None = None,
    on_row: Callable[[BaselineResult], None] | None = None,
) -> list[BaselineResult]:
    """Evaluate every baseline; see the module docstring for the protocol. ``adamerging`` sets
    the AdaMerging rows' adaptation (split, steps, lr, batch size; each row its granularity).
    A row that cannot run on the source (a two-model method on more tasks, AdaMerging on
    regression tasks only) is left out with a warning."""
    val_pool = TaskPool(source, split="validation", limit=val_limit)
    test_pool = TaskPool(source, split="test", limit=test_limit)
    rows = RowInputs(source, val_pool, test_pool, body_keys(source), test_pool.pretrained_state(),
                 {task: test_pool.own_state(task) for task in source.tasks})
    stats_cache = StatisticsCache(source.cache_dir / "statistics") if source.cache_dir is not None else None
    results = []
    for baseline in baselines:
        started = time.perf_counter()
        if baseline.kind in ("individual", "pretrained"):
            individual = baseline.kind == "individual"
            states = {t: (rows.own[t] if individual else rows.pretrained) for t in source.tasks}
            cost = float(len(source.tasks)) if individual else 1.0
            result: BaselineResult | None = BaselineResult(baseline.name, None, {}, cost, None, test_pool.evaluate_many(states))
        elif baseline.kind == "adamerging":
            result = adamerging_row(baseline, rows, adamerging or AdaMergingSettings(seed=seed))
        elif baseline.kind == "emr":
            result = emr_row(baseline, rows)
        else:
            result = static_row(baseline, rows, points=points, seed=seed, statistics_examples=statistics_examples,
                                stats_cache=stats_cache)
        if result is None:
            continue
        result.seconds = time.perf_counter() - started
        results.append(result)
        if on_row is not None:
            on_row(result)
    return results


def static_row(
    baseline: Baseline, rows: RowInputs, *, points: int | None, seed: int, statistics_examples: int,
    stats_cache: StatisticsCache | None,
) -> BaselineResult | None:
    """A registry method's row: its grid tried on validation, the best setting run on test."""
    assert baseline.method is not None
    source = rows.source
    limit = get_method(baseline.method).max_models
    if limit is not None and len(source.tasks) > limit:
        logger.warning("%s skipped: %s merges at most %d models, '%s' has %d tasks",
                       baseline.name, baseline.method, limit, source.name, len(source.tasks))
        return None
    needs = get_method(baseline.method).needs
    stats = task_statistics(source, needs[0], examples=statistics_examples, cache=stats_cache) if needs else None
    tasks = [rows.own[t] for t in source.tasks]
    tried = []
    best: tuple[float, dict[str, Any], State] | None = None
    for params in baseline.grid(points):
        call = MethodCall.build(baseline.method, params)
        merged = merge_bodies(rows.pretrained, tasks, rows.keys, call, statistics=stats, seed=seed)
        score = float(np.mean(list(rows.val_pool.evaluate_many(dict.fromkeys(source.tasks, merged)).values())))
        tried.append({"parameters": params, "validation_mean": score})
        logger.info("%s %s: validation mean %.4f", baseline.name, params, score)
        if best is None or score > best[0]:
            best = (score, params, merged)
    assert best is not None
    test = rows.test_pool.evaluate_many(dict.fromkeys(source.tasks, best[2]))
    return BaselineResult(baseline.name, baseline.method, best[1], 1.0, best[0], test, tried)


def adamerging_row(baseline: Baseline, rows: RowInputs, settings: AdaMergingSettings) -> BaselineResult | None:
    """An AdaMerging row: coefficients learned on the settings' split (the row fixes the
    granularity), the one merged body run on validation and test. C = 1 (one body; the
    coefficients are folded into it)."""
    source = rows.source
    settings = replace(settings, granularity=baseline.fixed.get("granularity", settings.granularity))
    pool = rows.val_pool if settings.split == "validation" else rows.test_pool
    classified, regression = entropy_tasks(pool, source.tasks)
    if not classified:
        logger.warning("%s skipped: every task of '%s' is a regression task, and prediction entropy is "
                       "undefined for them", baseline.name, source.name)
        return None
    cmap = None if settings.granularity in ("model", "tensor") else source.component_map()
    units = coefficient_units(rows.keys, settings.granularity, cmap)
    learned = adapt(pool, rows.pretrained, [rows.own[t] for t in source.tasks], units, settings)
    validation, test = rows.evaluate(dict.fromkeys(source.tasks, learned.state))
    sizes = sorted({len(pool.inputs(t, pool.split)) for t in classified})
    per_task = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    notes = (f"coefficients ({len(units)} per task) learned on unlabeled {settings.split} inputs ({per_task} "
             f"per task), {settings.steps} Adam steps at lr {settings.lr:g}, {settings.batch_size} "
             f"inputs per task per step; entropy {learned.entropy_before:.4f} -> {learned.entropy_after:.4f}; "
             f"{learned.seconds:.1f} s")
    if regression:
        notes += f"; regression tasks left out of the loss: {', '.join(regression)}"
    details = {"coefficients": learned.coefficients, "entropy_before": learned.entropy_before,
               "entropy_after": learned.entropy_after, "left_out_of_loss": regression}
    return BaselineResult(baseline.name, baseline.reported_method, settings.as_dict(), 1.0, validation, test,
                          adaptation_seconds=learned.seconds, details=details, notes=notes)


def emr_row(baseline: Baseline, rows: RowInputs) -> BaselineResult | None:
    """EMR-Merging with oracle task labels: task t's inputs run on ``theta_0 + lambda_t M_t tau_uni``.
    C = the unified vector at float32 + a 1-bit mask per task + T rescalers, over the body."""
    source = rows.source
    emr = emr_merge([task_vector(rows.pretrained, rows.own[t], rows.keys) for t in source.tasks])
    states = {t: emr.task_state(rows.pretrained, i) for i, t in enumerate(source.tasks)}
    validation, test = rows.evaluate(states)
    d = sum(rows.pretrained[k].numel() for k in rows.keys)
    cost = emr_storage_cost(d, tasks=len(source.tasks), rescalers=len(source.tasks))
    density = {t: sum(int(m.sum()) for m in emr.masks[i].values()) / d for i, t in enumerate(source.tasks)}
    details = {"rescalers": dict(zip(source.tasks, emr.rescalers, strict=True)), "mask_density": density,
               "routing": "oracle"}
    notes = ("oracle task labels select each task's masked, rescaled model (no router); one rescaler per "
             "task over the whole body (the authors' code); C counts the unified vector at 32 bits, one "
             "1-bit mask per task and the rescalers, not the pretrained body")
    return BaselineResult(baseline.name, baseline.reported_method, {}, cost, validation, test,
                          details=details, notes=notes)


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
            "adamerging": "coefficients learned on unlabeled inputs of the split named in each row's parameters",
            "emr": "oracle task labels (no router)",
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
                "adaptation_seconds": None if r.adaptation_seconds is None else round(r.adaptation_seconds, 2),
                "details": r.details,
                "notes": r.notes,
            }
            for r in results
        ],
    }


def markdown_table(report: Mapping[str, Any]) -> str:
    """``baselines.md``: one row per method, test metric per task (x100), mean, storage cost and the
    row's seconds; then the chosen parameters and each row's notes."""
    tasks = report["tasks"]
    lines = [
        f"# Baselines on the `{report['zoo']}` tasks (test split)",
        "",
        f"Backbone: {report['backbone']['name']}"
        + (" — **pretrained inside this project**, not a public checkpoint." if report["backbone"]["self_pretrained"] else "."),
        "Hyperparameters chosen on validation; storage cost C = stored body / pretrained body (task heads apart).",
        "",
        "| Method | C | " + " | ".join(tasks) + " | Mean | Seconds |",
        "|---|---|" + "---|" * len(tasks) + "---|---|",
    ]
    for m in report["methods"]:
        cells = " | ".join(f"{100 * m['test'][t]:.1f}" for t in tasks)
        seconds = m.get("seconds")
        time_cell = "" if seconds is None else f"{seconds:.1f}"
        lines.append(f"| {m['name']} | {m['storage_cost']:.2f} | {cells} | {100 * m['test_mean']:.1f} | {time_cell} |")
    lines.append("")
    lines.append("Chosen parameters: " + "; ".join(f"{m['name']}: {m['parameters']}" for m in report["methods"] if m["parameters"]))
    notes = [f"- {m['name']}: {m['notes']}" for m in report["methods"] if m.get("notes")]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"
