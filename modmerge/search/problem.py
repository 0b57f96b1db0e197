"""What the search needs from the outside world: a problem to evaluate and an executor.

The search knows nothing about models. A :class:`SearchProblem` gives the two objectives of the
paper for a grouping matrix: the storage cost ``C`` (eq. 8, exact and cheap, used for every
candidate) and the performance ``P`` (eq. 7, expensive, only for the candidates that are really
evaluated). An :class:`Executor` runs batches of real evaluations; :class:`LocalExecutor` simply
hands the batch to the problem in this process (a Ray executor can replace it).

Example::

    >>> from modmerge.experts.grouping import GroupingMatrix
    >>> from modmerge.objectives.evaluation import Evaluation
    >>> class Toy:
    ...     n_tasks, n_units = 2, 1
    ...     def storage_cost(self, g): return float(g.n_groups(0))
    ...     def evaluate(self, gs):
    ...         return [Evaluation(1.0 / g.n_groups(0), [1.0, 1.0], self.storage_cost(g), 0.0) for g in gs]
    >>> LocalExecutor(Toy()).evaluate([GroupingMatrix.individual(2, 1)])[0].performance
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from modmerge.experts.grouping import GroupingMatrix
from modmerge.objectives.evaluation import Evaluation

__all__ = ["Evaluation", "Executor", "LocalExecutor", "SearchProblem"]


@runtime_checkable
class SearchProblem(Protocol):
    """The bi-objective problem over ``T x L`` grouping matrices (see the module docstring)."""

    n_tasks: int
    n_units: int

    def storage_cost(self, g: GroupingMatrix) -> float:
        """``C`` of eq. (8) for ``g``; exact, called for every candidate, so it must be cheap."""
        ...

    def evaluate(self, gs: Sequence[GroupingMatrix]) -> list[Evaluation]:
        """Real evaluations of ``gs``, one :class:`Evaluation` each, in order."""
        ...


@runtime_checkable
class Executor(Protocol):
    """Runs a batch of real evaluations (locally, or on workers that hold the models)."""

    def evaluate(self, gs: Sequence[GroupingMatrix]) -> list[Evaluation]:
        """Evaluate the batch ``gs``; return one :class:`Evaluation` per matrix, in order."""
        ...


class LocalExecutor:
    """The default executor: evaluate in this process by calling ``problem.evaluate``.

    >>> LocalExecutor.__name__
    'LocalExecutor'
    """

    def __init__(self, problem: SearchProblem) -> None:
        self.problem = problem

    def evaluate(self, gs: Sequence[GroupingMatrix]) -> list[Evaluation]:
        """Hand the whole batch to the problem (it may parallelise internally)."""
        return list(self.problem.evaluate(list(gs)))
