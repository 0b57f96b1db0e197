"""Variation operators on grouping matrices: column crossover, partition mutations, tournaments.

Crossover swaps whole columns (units) between two parents, so every child column is a valid
partition taken from a parent. Mutation edits the partition of a few units with one of three
moves: move one task to another group or to a new singleton, merge two groups, or split one group
in two. Every result is a canonical :class:`GroupingMatrix`; :func:`make_offspring` drops
children already evaluated or already proposed.

Example::

    >>> rng = np.random.default_rng(0)
    >>> a, b = GroupingMatrix.all_merged(3, 4), GroupingMatrix.individual(3, 4)
    >>> c, d = crossover(a, b, rng)
    >>> sorted(c.n_groups_per_unit() + d.n_groups_per_unit()) == [1] * 4 + [3] * 4
    True
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from modmerge.experts.grouping import GroupingMatrix, canonical_column

__all__ = ["binary_tournament", "crossover", "make_offspring", "mutate", "mutate_column"]


def crossover(
    a: GroupingMatrix, b: GroupingMatrix, rng: np.random.Generator, *, swap_prob: float = 0.5
) -> tuple[GroupingMatrix, GroupingMatrix]:
    """Uniform column crossover: each unit's column is swapped between the parents with ``swap_prob``.

    >>> g = GroupingMatrix.individual(2, 3)
    >>> crossover(g, g, np.random.default_rng(1)) == (g, g)
    True
    """
    swap = rng.random(a.n_units) < swap_prob
    first = [cb if s else ca for ca, cb, s in zip(a.columns, b.columns, swap, strict=True)]
    second = [ca if s else cb for ca, cb, s in zip(a.columns, b.columns, swap, strict=True)]
    return GroupingMatrix.from_columns(first), GroupingMatrix.from_columns(second)


def mutate_column(column: Sequence[int], rng: np.random.Generator) -> tuple[int, ...]:
    """Apply one random move (move a task, merge two groups, split a group) to one partition.

    Only moves that change the partition are drawn; a one-task column is returned as is.

    >>> mutate_column((0, 0, 0), np.random.default_rng(0)) != (0, 0, 0)
    True
    """
    labels = np.asarray(column, dtype=np.int64).copy()
    n_tasks = len(labels)
    n_groups = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=n_groups)
    if n_tasks == 1:
        return (0,)
    # With two or more tasks some task can always move (to another group or out on its own).
    moves = ["move"]
    if n_groups < n_tasks:
        moves.append("split")  # some group has two or more members
    if n_groups > 1:
        moves.append("merge")
    move = moves[int(rng.integers(len(moves)))]
    if move == "merge":
        keep, drop = rng.choice(n_groups, size=2, replace=False)
        labels[labels == drop] = keep
    elif move == "split":
        group = int(rng.choice(np.flatnonzero(sizes >= 2)))
        members = np.flatnonzero(labels == group)
        # A random non-empty proper subset leaves for a new group.
        while True:
            leave = rng.random(len(members)) < 0.5
            if 0 < leave.sum() < len(members):
                break
        labels[members[leave]] = n_groups
    else:
        task = int(rng.integers(n_tasks))
        own = int(labels[task])
        targets = [g for g in range(n_groups) if g != own]
        if sizes[own] >= 2:
            targets.append(n_groups)  # a new singleton; pointless when already alone
        labels[task] = int(rng.choice(targets))
    return canonical_column(labels)


def mutate(
    g: GroupingMatrix, rng: np.random.Generator, *, rate: float | None = None
) -> GroupingMatrix:
    """Mutate each unit with probability ``rate`` (default ``1 / L``), at least one unit.

    >>> g = GroupingMatrix.all_merged(3, 5)
    >>> mutate(g, np.random.default_rng(0)) != g
    True
    """
    p = 1.0 / g.n_units if rate is None else rate
    chosen = np.flatnonzero(rng.random(g.n_units) < p)
    if len(chosen) == 0:
        chosen = np.array([rng.integers(g.n_units)])
    columns = list(g.columns)
    for unit in chosen:
        columns[int(unit)] = mutate_column(columns[int(unit)], rng)
    return GroupingMatrix.from_columns(columns)


def binary_tournament(
    rank: np.ndarray, crowding: np.ndarray, rng: np.random.Generator, n: int
) -> np.ndarray:
    """``n`` parent indices by binary tournament: lower rank wins, then larger crowding, then a coin.

    >>> binary_tournament(np.array([0, 1]), np.array([1.0, 1.0]), np.random.default_rng(0), 3).shape
    (3,)
    """
    size = len(rank)
    a = rng.integers(size, size=n)
    b = rng.integers(size, size=n)
    coin = rng.random(n) < 0.5
    a_wins = (rank[a] < rank[b]) | (
        (rank[a] == rank[b]) & ((crowding[a] > crowding[b]) | ((crowding[a] == crowding[b]) & coin))
    )
    return np.where(a_wins, a, b)


def make_offspring(
    population: Sequence[GroupingMatrix],
    rank: np.ndarray,
    crowding: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    exclude: Collection[GroupingMatrix] = (),
    crossover_prob: float = 0.9,
    swap_prob: float = 0.5,
    mutation_rate: float | None = None,
    max_tries: int | None = None,
) -> list[GroupingMatrix]:
    """Up to ``n`` distinct new children of ``population`` (tournament, crossover, mutation).

    Children in ``exclude`` (everything evaluated so far) or already proposed are dropped; after
    ``max_tries`` pairs (default ``20 n``) the list may be shorter than ``n``, e.g. when the space
    is nearly exhausted.

    >>> pop = [GroupingMatrix.all_merged(3, 4), GroupingMatrix.individual(3, 4)]
    >>> kids = make_offspring(pop, np.zeros(2), np.ones(2), 5, np.random.default_rng(0), exclude=pop)
    >>> len(kids), any(k in pop for k in kids)
    (5, False)
    """
    seen = set(exclude)
    children: list[GroupingMatrix] = []
    tries = 20 * n if max_tries is None else max_tries
    for _ in range(tries):
        if len(children) >= n:
            break
        i, j = binary_tournament(rank, crowding, rng, 2)
        a, b = population[int(i)], population[int(j)]
        if rng.random() < crossover_prob:
            a, b = crossover(a, b, rng, swap_prob=swap_prob)
        for child in (mutate(a, rng, rate=mutation_rate), mutate(b, rng, rate=mutation_rate)):
            if len(children) < n and child not in seen:
                seen.add(child)
                children.append(child)
    return children
