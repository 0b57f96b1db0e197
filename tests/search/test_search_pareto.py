"""Pareto helpers on (C, -P): sorting, crowding, survival, hypervolume."""

from __future__ import annotations

import numpy as np

from modmerge.search import hypervolume, non_dominated, rank_and_crowding, survival
from modmerge.search.pareto import crowding_distance, objectives


def test_objectives_negate_performance():
    np.testing.assert_array_equal(objectives([1.0, 2.0], [0.5, 0.7]), [[1.0, -0.5], [2.0, -0.7]])
    assert objectives([], []).shape == (0, 2)


def test_non_dominated_keeps_duplicates_and_drops_dominated():
    F = np.array([[1.0, -0.5], [1.0, -0.5], [2.0, -0.4], [0.5, -0.1], [3.0, -0.9]])
    assert non_dominated(F).tolist() == [0, 1, 3, 4]
    assert non_dominated(np.zeros((0, 2))).tolist() == []


def test_rank_and_crowding():
    F = np.array([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0], [1.0, 3.0], [3.0, 1.0]])
    rank, crowd = rank_and_crowding(F)
    assert rank.tolist() == [0, 0, 0, 1, 1]
    assert np.isinf(crowd[[0, 2]]).all() and crowd[1] == 1.0
    assert crowding_distance(F[:2]).tolist() == [np.inf, np.inf]


def test_survival_fills_by_front_then_crowding():
    F = np.array([[0.0, 4.0], [1.0, 2.0], [1.5, 1.9], [4.0, 0.0], [5.0, 5.0]])
    keep = survival(F, 3)
    assert set(keep.tolist()) == {0, 3, 1} or set(keep.tolist()) == {0, 3, 2}
    assert keep[:2].tolist() == [0, 3]  # the extremes of the front (inf crowding) first
    assert survival(F, 5)[-1] == 4  # the dominated point comes last


def test_hypervolume_by_hand():
    # two points against ref (3, 0): boxes 2.5 x 0.6 and 2 x 0.9 overlapping in 2 x 0.6
    F = np.array([[0.5, -0.6], [1.0, -0.9]])
    assert abs(hypervolume(F, (3.0, 0.0)) - (1.5 + 0.6)) < 1e-12
    assert hypervolume(np.array([[4.0, -1.0]]), (3.0, 0.0)) == 0.0  # outside the box
    assert hypervolume(np.zeros((0, 2)), (3.0, 0.0)) == 0.0
