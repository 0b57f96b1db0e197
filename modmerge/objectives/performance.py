"""Performance P (eq. 7): expert chains, and the counters of the work its evaluations do.

A task's **expert chain** under a grouping matrix G is, per unit, the module of the group the
task belongs to; theta~_t recombines those modules. The merge problem
(:mod:`modmerge.objectives.problem`) scores chains and caches the results by (task, chain);
:class:`EvaluationCounters` say how much work its caches saved against a naive evaluator that
rebuilds and re-runs everything.

>>> from modmerge.experts.grouping import GroupingMatrix
>>> [m.members for m in chain(GroupingMatrix.all_merged(2, 2), 0, ["u0", "u1"])]
[(0, 1), (0, 1)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from modmerge.experts.grouping import GroupingMatrix
from modmerge.experts.modules import ModuleKey
from modmerge.tasks.taskpool import StagedRun

Chain = tuple[ModuleKey, ...]


@dataclass
class EvaluationCounters:
    """Work done, and what a naive evaluator (no caches) would have done."""

    configurations: int = 0
    task_runs: int = 0  # tasks actually run through a model
    task_runs_naive: int = 0  # T per configuration
    modules_built: int = 0
    modules_naive: int = 0  # sum over configurations of their distinct modules
    # Encoder layers run, counted once per task run (a layer over all of the task's batches);
    # naive: every layer for every task of every configuration.
    layer_forwards: int = 0
    layer_forwards_naive: int = 0
    prefix_hits: int = 0  # task runs that started from cached hidden states
    seconds: float = 0.0
    per_config_seconds: list[float] = field(default_factory=list)

    def cost_record(self) -> dict[str, float | int]:
        """The ``evaluation_cost`` entry of a search's ``pareto.json``.

        >>> EvaluationCounters(configurations=2, layer_forwards=9, layer_forwards_naive=12).cost_record()["layer_forwards"]
        9
        """
        return {
            "real_evaluations": self.configurations, "task_runs": self.task_runs,
            "task_runs_naive": self.task_runs_naive, "layer_forwards": self.layer_forwards,
            "layer_forwards_naive": self.layer_forwards_naive, "prefix_hits": self.prefix_hits,
            "modules_built": self.modules_built, "modules_naive": self.modules_naive, "seconds": round(self.seconds, 2),
        }

    def plus(self, other: EvaluationCounters) -> EvaluationCounters:
        """Both counts summed (the driver's saved counts plus its Ray workers' work).

        >>> EvaluationCounters(task_runs=2).plus(EvaluationCounters(task_runs=3)).task_runs
        5
        """
        return EvaluationCounters(**{
            f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)
        })

    @classmethod
    def from_record(cls, record: Mapping[str, float | int]) -> EvaluationCounters:
        """Inverse of :meth:`cost_record` (a resumed run starts from its saved counters).

        >>> EvaluationCounters.from_record({"real_evaluations": 2, "task_runs": 5}).configurations
        2
        """
        names = {"real_evaluations": "configurations"}
        return cls(**{names.get(k, k): v for k, v in record.items()})

    def count_run(self, run: StagedRun, resumed: bool) -> None:
        """One task run: the encoder layers it ran, and whether it started from cached hidden states."""
        self.task_runs += 1
        self.layer_forwards += run.layers_run
        self.prefix_hits += resumed

    def progress(self) -> str:
        """One line for a progress display: how much of the naive work was done.

        >>> EvaluationCounters(task_runs=3, task_runs_naive=4, layer_forwards=9, layer_forwards_naive=24).progress()
        'task runs 3/4, layer forwards 9/24 (62% saved)'
        """
        saved = 1 - self.layer_forwards / self.layer_forwards_naive if self.layer_forwards_naive else 0.0
        return (f"task runs {self.task_runs}/{self.task_runs_naive}, "
                f"layer forwards {self.layer_forwards}/{self.layer_forwards_naive} ({100 * saved:.0f}% saved)")


def chain(g: GroupingMatrix, task: int, units: Sequence[str]) -> Chain:
    """Task ``task``'s expert chain: per unit, the module of the group it belongs to."""
    return tuple(
        ModuleKey(unit=u, members=next(m for m in g.groups(i) if task in m)) for i, u in enumerate(units)
    )


def modules_of(g: GroupingMatrix, units: Sequence[str]) -> list[ModuleKey]:
    """Every distinct module J(G) needs (one per unit and group)."""
    return [ModuleKey(unit=u, members=tuple(m)) for i, u in enumerate(units) for m in g.groups(i)]
