"""Representative solutions of a Pareto set, as in the paper's Table I.

- ``G1``: the least storage cost among solutions whose ``P`` beats the base method ``F`` applied
  to the whole model (e.g. Task Arithmetic for MERGE-TA);
- ``G2``: the least storage cost among solutions whose ``P`` beats the best merging baseline;
- ``G3``: the highest ``P``.

"Beats" is strictly greater. Ties on storage go to the higher ``P``, ties on ``P`` to the lower
storage. Each is ``None`` when nothing qualifies (or, for G1/G2, no reference was given).

Example::

    >>> from types import SimpleNamespace as S
    >>> front = [S(storage_cost=0.3, performance=0.6), S(storage_cost=0.8, performance=0.75),
    ...          S(storage_cost=1.7, performance=0.84)]
    >>> reps = select_representatives(front, base_performance=0.55, best_baseline_performance=0.7)
    >>> reps.g1.storage_cost, reps.g2.storage_cost, reps.g3.storage_cost
    (0.3, 0.8, 1.7)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["Representatives", "Solution", "select_representatives"]


class Solution(Protocol):
    """Anything with the two objectives (e.g. :class:`~modmerge.search.state.EvaluatedConfig`)."""

    @property
    def storage_cost(self) -> float: ...

    @property
    def performance(self) -> float: ...


S = TypeVar("S", bound=Solution)


@dataclass(frozen=True)
class Representatives(Generic[S]):
    """G1, G2, G3 of Table I (see the module docstring); any may be ``None``."""

    g1: S | None
    g2: S | None
    g3: S | None


def _least_storage_beating(solutions: Sequence[S], threshold: float | None) -> S | None:
    if threshold is None:
        return None
    winners = [s for s in solutions if s.performance > threshold]
    return min(winners, key=lambda s: (s.storage_cost, -s.performance), default=None)


def select_representatives(
    solutions: Sequence[S],
    *,
    base_performance: float | None,
    best_baseline_performance: float | None,
) -> Representatives[S]:
    """Pick G1, G2 and G3 from ``solutions`` (usually the Pareto set of a search).

    >>> from types import SimpleNamespace as S
    >>> select_representatives([S(storage_cost=1.0, performance=0.5)], base_performance=0.9,
    ...                        best_baseline_performance=None).g1 is None
    True
    """
    best = max(solutions, key=lambda s: (s.performance, -s.storage_cost), default=None)
    return Representatives(
        g1=_least_storage_beating(solutions, base_performance),
        g2=_least_storage_beating(solutions, best_baseline_performance),
        g3=best,
    )
