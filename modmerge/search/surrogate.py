"""The random-forest surrogate of performance ``P`` (paper Sec. III-C2).

It is refitted from scratch each generation on every real evaluation so far (features from
:mod:`modmerge.search.encoding`), then predicts ``P`` for the candidate offspring; the storage
cost is exact and never predicted. ``random_state`` is an int drawn from the search's generator
and the forest runs on one thread, so predictions are reproducible.

Example::

    >>> from modmerge.experts.grouping import GroupingMatrix
    >>> gs = [GroupingMatrix.all_merged(3, 2), GroupingMatrix.individual(3, 2)]
    >>> model = fit_surrogate(gs, [0.5, 0.9], random_state=0, n_estimators=10)
    >>> model.predict(gs).shape
    (2,)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from modmerge.errors import ModmergeError
from modmerge.experts.grouping import GroupingMatrix
from modmerge.search.encoding import encode_many

__all__ = ["PerformanceSurrogate", "fit_surrogate"]


@dataclass(frozen=True)
class PerformanceSurrogate:
    """A fitted forest mapping :func:`~modmerge.search.encoding.encode` features to ``P``."""

    forest: RandomForestRegressor
    with_counts: bool = True

    def predict(self, gs: Sequence[GroupingMatrix]) -> np.ndarray:
        """Predicted ``P`` for each matrix (an empty array for no matrices)."""
        if not gs:
            return np.zeros(0)
        return np.asarray(self.forest.predict(encode_many(gs, with_counts=self.with_counts)))


def fit_surrogate(
    gs: Sequence[GroupingMatrix],
    performances: Sequence[float],
    *,
    random_state: int,
    n_estimators: int = 100,
    with_counts: bool = True,
) -> PerformanceSurrogate:
    """Fit a :class:`PerformanceSurrogate` on real evaluations ``(gs[i], performances[i])``.

    >>> g = GroupingMatrix.all_merged(2, 1)
    >>> float(fit_surrogate([g], [0.7], random_state=0, n_estimators=5).predict([g])[0])
    0.7
    """
    if len(gs) != len(performances):
        raise ModmergeError(f"surrogate: {len(gs)} matrices but {len(performances)} performances")
    if not gs:
        raise ModmergeError("surrogate: cannot fit on zero evaluations")
    forest = RandomForestRegressor(n_estimators=n_estimators, random_state=random_state, n_jobs=1)
    forest.fit(encode_many(gs, with_counts=with_counts), np.asarray(performances, dtype=np.float64))
    return PerformanceSurrogate(forest, with_counts)
