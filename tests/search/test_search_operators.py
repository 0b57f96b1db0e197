"""Crossover, mutation, tournaments and offspring: always valid, canonical and new."""

from __future__ import annotations

import numpy as np

from modmerge.experts.grouping import canonical_column
from modmerge.search import GroupingMatrix, binary_tournament, crossover, make_offspring, mutate
from modmerge.search.operators import mutate_column


def test_crossover_takes_each_column_from_a_parent():
    rng = np.random.default_rng(0)
    a = GroupingMatrix.from_array(rng.integers(0, 3, size=(4, 8)))
    b = GroupingMatrix.from_array(rng.integers(0, 3, size=(4, 8)))
    for _ in range(20):
        c, d = crossover(a, b, rng)
        for u in range(8):
            assert {c.column(u), d.column(u)} == {a.column(u), b.column(u)}


def test_crossover_extremes():
    rng = np.random.default_rng(0)
    a, b = GroupingMatrix.all_merged(3, 5), GroupingMatrix.individual(3, 5)
    assert crossover(a, b, rng, swap_prob=0.0) == (a, b)
    assert crossover(a, b, rng, swap_prob=1.0) == (b, a)


def test_mutate_column_always_changes_the_partition():
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(2, 7))
        column = canonical_column(rng.integers(0, n, size=n))
        out = mutate_column(column, rng)
        assert out == canonical_column(out)
        assert len(out) == n
        assert out != column
    assert mutate_column((0,), rng) == (0,)


def test_mutate_column_uses_all_moves():
    rng = np.random.default_rng(1)
    start = (0, 0, 1, 1)
    outcomes = {mutate_column(start, rng) for _ in range(300)}
    groups = {max(o) + 1 for o in outcomes}
    assert 1 in groups  # merge
    assert 3 in groups  # split or move to a new singleton
    assert (0, 0, 0, 1) in outcomes  # move to another group


def test_mutate_changes_the_matrix_with_the_default_rate():
    rng = np.random.default_rng(0)
    g = GroupingMatrix.from_array(rng.integers(0, 3, size=(4, 6)))
    for _ in range(50):
        m = mutate(g, rng)
        assert m != g
        assert (m.n_tasks, m.n_units) == (4, 6)
    assert mutate(g, rng, rate=1.0) != g


def test_binary_tournament_prefers_rank_then_crowding():
    rng = np.random.default_rng(0)
    rank = np.array([0, 1, 1])
    crowd = np.array([0.0, np.inf, 0.5])
    winners = binary_tournament(rank, crowd, rng, 2000)
    counts = np.bincount(winners, minlength=3)
    # 0 wins every duel it is in; 1 beats 2 on crowding
    assert counts[0] > counts[1] > counts[2]
    assert counts[2] == np.sum(winners == 2)
    assert counts[2] < 300  # 2 wins only against itself: about 1/9 of the draws


def test_make_offspring_is_new_distinct_and_seeded():
    pop = [GroupingMatrix.all_merged(4, 5), GroupingMatrix.individual(4, 5)]
    exclude = set(pop) | {GroupingMatrix.from_array([[0] * 5, [0] * 5, [1] * 5, [1] * 5])}
    kids = make_offspring(
        pop, np.zeros(2), np.ones(2), 30, np.random.default_rng(0), exclude=exclude
    )
    assert len(kids) == 30
    assert len(set(kids)) == 30
    assert not set(kids) & exclude
    again = make_offspring(
        pop, np.zeros(2), np.ones(2), 30, np.random.default_rng(0), exclude=exclude
    )
    assert kids == again


def test_make_offspring_may_come_back_short_when_space_is_used_up():
    # 1 task: exactly one matrix exists
    pop = [GroupingMatrix.all_merged(1, 3)]
    kids = make_offspring(pop, np.zeros(1), np.ones(1), 5, np.random.default_rng(0), exclude=pop)
    assert kids == []
