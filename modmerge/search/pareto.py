"""Pareto machinery on the objective pairs ``(C, -P)`` (both minimised), built on pymoo.

Non-dominated sorting and crowding distance come from pymoo; this module fixes the conventions
(objective matrix layout, deterministic tie-breaks) that the search loop relies on.

Example::

    >>> F = objectives([1.0, 0.5, 2.0], [0.9, 0.6, 0.8])
    >>> non_dominated(F).tolist()
    [0, 1]
    >>> round(hypervolume(F, (3.0, 0.0)), 3)
    2.1
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.operators.survival.rank_and_crowding.metrics import get_crowding_function
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

__all__ = [
    "crowding_distance",
    "hypervolume",
    "non_dominated",
    "objectives",
    "rank_and_crowding",
    "survival",
]


def objectives(storage_costs: Sequence[float], performances: Sequence[float]) -> np.ndarray:
    """The ``n x 2`` matrix ``[C, -P]`` that every function here minimises.

    >>> objectives([1.0], [0.5]).tolist()
    [[1.0, -0.5]]
    """
    c = np.asarray(storage_costs, dtype=np.float64)
    p = np.asarray(performances, dtype=np.float64)
    return np.stack([c, -p], axis=1) if len(c) else np.zeros((0, 2))


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Sorted indices of the rows of ``F`` that no other row dominates (duplicates all kept).

    >>> non_dominated(np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])).tolist()
    [0, 1]
    """
    if len(F) == 0:
        return np.zeros(0, dtype=np.int64)
    front = NonDominatedSorting().do(np.asarray(F, dtype=np.float64), only_non_dominated_front=True)
    return np.sort(np.asarray(front, dtype=np.int64))


def crowding_distance(F: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of the rows of one front (extremes get ``inf``).

    >>> crowding_distance(np.array([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0]])).tolist()
    [inf, 1.0, inf]
    """
    if len(F) == 0:
        return np.zeros(0)
    return np.asarray(
        get_crowding_function("cd").do(np.asarray(F, dtype=np.float64)), dtype=np.float64
    )


def rank_and_crowding(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: its non-domination rank (0 = best front) and its crowding distance within its front.

    >>> rank, crowd = rank_and_crowding(np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]]))
    >>> rank.tolist()
    [0, 0, 1]
    """
    n = len(F)
    rank = np.zeros(n, dtype=np.int64)
    crowd = np.zeros(n, dtype=np.float64)
    if n == 0:
        return rank, crowd
    fronts = NonDominatedSorting().do(np.asarray(F, dtype=np.float64))
    for r, front in enumerate(fronts):
        front = np.asarray(front, dtype=np.int64)
        rank[front] = r
        crowd[front] = crowding_distance(F[front])
    return rank, crowd


def survival(F: np.ndarray, n: int) -> np.ndarray:
    """NSGA-II environmental selection: indices of the ``n`` rows kept, best first.

    Whole fronts are taken in rank order; the front that does not fit is cut by descending
    crowding distance, ties broken by row index so the choice is deterministic.

    >>> survival(np.array([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0], [3.0, 3.0]]), 2).tolist()
    [0, 2]
    """
    F = np.asarray(F, dtype=np.float64)
    rank, crowd = rank_and_crowding(F)
    # lexsort sorts by the last key first: rank, then -crowding, then index.
    order = np.lexsort((np.arange(len(F)), -crowd, rank))
    return order[:n]


def hypervolume(F: np.ndarray, reference: Sequence[float]) -> float:
    """Hypervolume of the rows of ``F`` against the fixed ``reference`` point ``(C_ref, -P_ref)``.

    Rows that do not dominate the reference contribute nothing; an empty set has volume 0.

    >>> hypervolume(np.array([[1.0, -1.0]]), (2.0, 0.0))
    1.0
    """
    if len(F) == 0:
        return 0.0
    return float(
        HV(ref_point=np.asarray(reference, dtype=np.float64))(np.asarray(F, dtype=np.float64))
    )
