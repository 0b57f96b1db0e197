"""One real evaluation of a grouping matrix: what every merge problem returns to the search."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Evaluation"]


@dataclass(frozen=True)
class Evaluation:
    """The result of one real evaluation of a grouping matrix.

    ``performance`` is ``P`` (eq. 7, higher is better); ``per_task`` the per-task validation
    metrics (by task name, or in task order); ``storage_cost`` is ``C`` (eq. 8); ``seconds`` the
    wall time the evaluation took (informative only: it never steers the search).

    >>> Evaluation(0.8, {"sst2": 0.8}, 1.0, 2.5).performance
    0.8
    """

    performance: float
    per_task: Mapping[str, float] | Sequence[float]
    storage_cost: float
    seconds: float = 0.0
