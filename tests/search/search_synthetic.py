"""A synthetic, model-free MergeProblem for the search tests (fast and deterministic).

Tasks fall into two planted families (first half / second half). Sharing a unit with a task of
the other family costs a task a lot of performance; sharing within the family costs little.
Units differ in how much conflicts matter. Storage mimics 8-bit modules: each module of a unit
costs ``0.25 / L``, so ``C = sum_l N_l / L * 0.25``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modmerge.search import Evaluation, GroupingMatrix, random_grouping


class SyntheticProblem:
    def __init__(self, n_tasks: int = 4, n_units: int = 6, seed: int = 0) -> None:
        self.n_tasks, self.n_units = n_tasks, n_units
        rng = np.random.default_rng(seed)
        self.family = np.array([0 if t < n_tasks // 2 else 1 for t in range(n_tasks)])
        same = self.family[:, None] == self.family[None, :]
        unit_scale = rng.uniform(0.1, 1.0, size=n_units)
        noise = rng.uniform(0.5, 1.5, size=(n_units, n_tasks, n_tasks))
        # conflict[l, i, j]: what task i loses in unit l when it shares a module with task j
        self.conflict = unit_scale[:, None, None] * np.where(same, 0.05, 1.0)[None] * noise
        self.batches: list[int] = []

    def task_scores(self, g: GroupingMatrix) -> list[float]:
        scores = []
        for t in range(self.n_tasks):
            loss = 0.0
            for unit, column in enumerate(g.columns):
                mates = [j for j in range(self.n_tasks) if j != t and column[j] == column[t]]
                if mates:
                    loss += max(self.conflict[unit, t, j] for j in mates)
            scores.append(1.0 - loss / self.n_units)
        return scores

    def storage_cost(self, g: GroupingMatrix) -> float:
        return sum(g.n_groups_per_unit()) / self.n_units * 0.25

    def evaluate(self, gs: Sequence[GroupingMatrix]) -> list[Evaluation]:
        self.batches.append(len(gs))
        out = []
        for g in gs:
            scores = self.task_scores(g)
            per_task = {f"task{t}": s for t, s in enumerate(scores)}
            out.append(Evaluation(float(np.mean(scores)), per_task, self.storage_cost(g), 0.0))
        return out

    def unit_vectors(self, dim: int = 16, seed: int = 1) -> list[np.ndarray]:
        """Task vectors per unit: one direction per family plus a little noise."""
        rng = np.random.default_rng(seed)
        vectors = []
        for _ in range(self.n_units):
            directions = rng.normal(size=(2, dim))
            noise = 0.05 * rng.normal(size=(self.n_tasks, dim))
            vectors.append(directions[self.family] + noise)
        return vectors

    def planted(self) -> GroupingMatrix:
        """Families merged, nothing shared across them."""
        return GroupingMatrix.from_columns([self.family.tolist()] * self.n_units)


def random_search_hv(problem: SyntheticProblem, budget: int, seed: int, reference) -> float:
    """Hypervolume of ``budget`` distinct random matrices (the baseline a search must beat)."""
    from modmerge.search import hypervolume, non_dominated
    from modmerge.search.pareto import objectives

    rng = np.random.default_rng(seed)
    seen: list[GroupingMatrix] = []
    while len(seen) < budget:
        g = random_grouping(problem.n_tasks, problem.n_units, rng)
        if g not in seen:
            seen.append(g)
    evals = problem.evaluate(seen)
    F = objectives([e.storage_cost for e in evals], [e.performance for e in evals])
    return hypervolume(F[non_dominated(F)], reference)
