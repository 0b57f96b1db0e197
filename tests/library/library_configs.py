"""Grouping matrices the library tests build libraries from (a module, not conftest: several test folders have a conftest)."""

from __future__ import annotations

from modmerge.experts.grouping import GroupingMatrix
from modmerge.objectives.problem import MergeProblem


def individual_and_mixed(problem: MergeProblem) -> tuple[GroupingMatrix, GroupingMatrix]:
    """Every task alone; and the same but unit 0 merged over all tasks (they share T x (L-1) modules)."""
    ind = GroupingMatrix.individual(problem.n_tasks, problem.n_units)
    arr = ind.to_array()
    arr[:, 0] = 0
    return ind, GroupingMatrix.from_array(arr)
