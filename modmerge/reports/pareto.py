"""Reports of a MERGE search: the Table I-style summary and the Fig. 3-style Pareto plot.

Both parse what they are given as :class:`~modmerge.run_files.ParetoFile` (a payload dict or
the parsed file).

>>> summary_markdown(read_pareto_file("run/pareto.json"), baseline_rows)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modmerge.atomic import atomic_file
from modmerge.run_files import Bars, CostRecord, HistoryRun, ParetoFile


def _mean_std(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"  # sample std over runs


def parsed(payload: ParetoFile | Mapping[str, Any]) -> ParetoFile:
    """``payload`` as the typed ``pareto.json``."""
    return payload if isinstance(payload, ParetoFile) else ParetoFile.model_validate(payload)


def _precision_note(recipe: dict[str, Any]) -> str:
    precision = recipe.get("precision", "float32")
    if precision == "float32":
        return ""
    return (f"; every MERGE figure (validation and test) was evaluated at {precision} under torch.autocast, "
            "the baselines' rows at float32")


def summary_markdown(payload: ParetoFile | Mapping[str, Any], baseline_rows: Sequence[dict[str, Any]]) -> str:
    """G1/G2/G3 (mean ± std over runs) against the baselines: storage cost C and test P (x100)."""
    pareto = parsed(payload)
    tasks, backbone, recipe, runs = pareto.tasks, pareto.backbone, pareto.recipe, pareto.runs
    lines = [
        f"# MERGE-{recipe['method']} on {pareto.subject}",
        "",
        f"Backbone: {backbone.name}"
        + (" — **pretrained inside this project**, not a public checkpoint." if backbone.self_pretrained else "."),
        f"Search: budget {recipe['budget']}, population {recipe['population']}, granularity {recipe['granularity']}, "
        f"{len(runs)} run(s){' (mean ± sample std over runs)' if len(runs) > 1 else ''}, "
        f"quantisation {recipe['quantization']}. "
        f"C = eq. (8) over the mergeable body (task heads apart); P = {pareto.split} metric x100"
        + _precision_note(recipe) + ".",
        "",
        "| Method | C | " + " | ".join(tasks) + " | Mean |",
        "|---|---|" + "---|" * len(tasks) + "---|",
    ]
    for row in baseline_rows:
        cells = " | ".join(f"{100 * row['test'][t]:.1f}" for t in tasks)
        lines.append(f"| {row['name']} | {row['storage_cost']:.2f} | {cells} | {100 * row['test_mean']:.1f} |")
    for name in ("G1", "G2", "G3"):
        picked = [p for r in runs if (p := r.representatives.get(name)) is not None]
        label = f"MERGE-{recipe['method']} ({name})"
        if not picked:
            bar = {"G1": "base_method_validation", "G2": "best_baseline_validation"}.get(name)
            why = "no baselines given" if bar and getattr(pareto.bars, bar) is None else "none qualified"
            lines.append(f"| {label} | - | " + " | ".join("-" for _ in tasks) + f" | {why} |")
            continue
        cost = _mean_std([p.storage_cost for p in picked], digits=4)
        cells = " | ".join(_mean_std([100 * p.figures.per_task[t] for p in picked]) for t in tasks)
        lines.append(f"| {label} | {cost} | {cells} | {_mean_std([100 * p.figures.mean for p in picked])} |")
    lines += [
        "",
        "G1: least storage whose validation P beats the base method on the whole model; "
        "G2: least storage beating the best baseline's validation P; G3: highest validation P.",
        _bars_line(pareto.bars, recipe.get("validation_limit")),
    ]
    lines += _search_cost_lines([r.evaluation_cost for r in runs])
    tests = [r.test_cost for r in runs]
    if tests and all(tests):  # runs tested before the cost was recorded have none
        done = [c for c in tests if c is not None]
        layers, layers_naive = sum(c.layer_forwards for c in done), sum(c.layer_forwards_naive for c in done)
        lines.append(
            f"Test metrics of the Pareto set{'s' if len(done) > 1 else ''}: {sum(c.real_evaluations for c in done)} "
            f"solutions, {sum(c.task_runs for c in done)} task runs against {sum(c.task_runs_naive for c in done)}, "
            f"{layers} encoder layer forwards against {layers_naive} ({_saved(layers, layers_naive)} "
            f"saved), {sum(c.seconds for c in done) / 60:.1f} min."
        )
    return "\n".join(lines) + "\n"


def _search_cost_lines(recorded: Sequence[CostRecord | Mapping[str, Any] | None]) -> list[str]:
    """The search's evaluation cost, summed over the runs whose work was counted (a run resumed
    from a state saved before its counters were, or evaluated by Ray workers, has None)."""
    costs = [c if isinstance(c, CostRecord) else CostRecord.model_validate(c) for c in recorded if c]
    if not costs:
        return ["Evaluation cost of the search: not recorded for these runs."]
    scope = "" if len(costs) == len(recorded) else f" over the {len(costs)} of {len(recorded)} runs whose work was counted"
    runs = sum(c.task_runs for c in costs)
    naive = sum(c.task_runs_naive for c in costs)
    lines = [
        f"Evaluation cost of the search (test metrics apart{scope}): {sum(c.real_evaluations for c in costs)} real "
        f"evaluations, {runs} task runs "
        f"against {naive} for a naive evaluator ({_saved(runs, naive)} saved by the chain cache); "
        f"{sum(c.modules_built for c in costs)} modules built against {sum(c.modules_naive for c in costs)}."
    ]
    if all(c.layer_forwards_naive for c in costs):  # older runs and own-models runs have none
        layers, layers_naive = sum(c.layer_forwards for c in costs), sum(c.layer_forwards_naive for c in costs)
        lines.append(
            f"Encoder layer forwards (one = one layer over a task's whole validation subset): {layers} against "
            f"{layers_naive} for a naive evaluator ({_saved(layers, layers_naive)} saved by the "
            f"chain and prefix caches; {sum(c.prefix_hits for c in costs)} task runs resumed from cached hidden states)."
        )
    return lines


def _saved(done: int, naive: int) -> str:
    """The share of a naive evaluator's work that was not done, as a percentage.

    >>> _saved(3, 4)
    '25%'
    """
    return f"{100 * (1 - done / max(naive, 1)):.0f}%"


def _bars_line(bars: Bars, validation_limit: int | None) -> str:
    """Where G1's and G2's bars come from, and whether they were measured on the same subset.

    >>> _bars_line(Bars(base_method_validation=0.5, best_baseline_validation=0.6,
    ...                 best_baseline_validation_limit=100), 200)[:40]
    'Bars (validation P x100): F on the whole'
    """
    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    line = (f"Bars (validation P x100): F on the whole model {pct(bars.base_method_validation)} "
            f"(this search's subset); best baseline {pct(bars.best_baseline_validation)}")
    limit = bars.best_baseline_validation_limit
    if limit is not None and limit != validation_limit:
        line += f" (measured on the first {limit} validation examples per task, this search uses {validation_limit})"
    return line + "."


def plot_front(payload: ParetoFile | Mapping[str, Any], baseline_rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Pareto fronts (test P against C) of every run, with the baselines as points."""
    pareto = parsed(payload)
    fig, ax = _figure()
    for i, run in enumerate(pareto.runs):
        sols = sorted(run.solutions, key=lambda s: s.storage_cost)
        ax.step(
            [s.storage_cost for s in sols], [100 * s.figures.mean for s in sols], where="post",
            marker="o", markersize=3, label=f"MERGE-{pareto.recipe['method']} run {i}",
        )
    for row in baseline_rows:
        ax.scatter(row["storage_cost"], 100 * row["test_mean"], marker="x")
        ax.annotate(row["name"], (row["storage_cost"], 100 * row["test_mean"]), fontsize=7)
    ax.set_xlabel("normalised storage cost C (eq. 8)")
    ax.set_ylabel(f"{pareto.split} performance P (x100)")
    ax.set_title(pareto.subject.removeprefix("the ").replace("`", ""))
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_hypervolume(histories: Sequence[HistoryRun | Mapping[str, Any]], path: Path) -> None:
    """Each run's hypervolume against the real evaluations it had used (``history.json``'s runs)."""
    fig, ax = _figure()
    for entry in histories:
        run = entry if isinstance(entry, HistoryRun) else HistoryRun.model_validate(entry)
        gens = run.generations
        ax.step([g["evaluations"] for g in gens], [g["hypervolume"] for g in gens], where="post",
                marker="o", markersize=2, label=f"seed {run.seed}")
    ax.set_xlabel("real evaluations")
    ax.set_ylabel("hypervolume")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def _figure() -> tuple[Any, Any]:
    """A new 6 x 4 in figure and its axes, drawn off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4))


def _save(fig: Any, path: Path) -> None:
    """Write ``fig`` to ``path`` atomically (format from the suffix) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
