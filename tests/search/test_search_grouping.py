"""Grouping matrices: canonical form, equality/hashing by partition, views and round trips."""

from __future__ import annotations

import numpy as np
import pytest

from modmerge.errors import ModmergeError
from modmerge.search import GroupingMatrix, canonical_column, count_configurations


def test_canonical_column_numbers_by_first_appearance():
    assert canonical_column([7, 3, 7, 9]) == (0, 1, 0, 2)
    assert canonical_column([2, 2, 2]) == (0, 0, 0)
    assert canonical_column([4, 3, 2, 1]) == (0, 1, 2, 3)


def test_renumbered_matrices_are_equal_and_hash_equal():
    a = GroupingMatrix.from_array([[0, 2], [0, 1], [1, 1]])
    b = GroupingMatrix.from_array([[5, 9], [5, 4], [3, 4]])
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a.to_list() == [[0, 0], [0, 1], [1, 1]]
    assert a.key() == b.key()


def test_different_partitions_differ():
    a = GroupingMatrix.from_array([[0], [0], [1]])
    b = GroupingMatrix.from_array([[0], [1], [1]])
    assert a != b
    assert a.key() != b.key()


def test_random_relabelling_keeps_identity():
    rng = np.random.default_rng(0)
    for _ in range(50):
        arr = rng.integers(0, 4, size=(5, 3))
        g = GroupingMatrix.from_array(arr)
        relabelled = arr.copy()
        for u in range(arr.shape[1]):
            perm = rng.permutation(10)
            relabelled[:, u] = perm[arr[:, u]]
        assert GroupingMatrix.from_array(relabelled) == g


def test_views():
    g = GroupingMatrix.from_array([[0, 0, 0], [0, 1, 1], [1, 0, 2]])
    assert (g.n_tasks, g.n_units) == (3, 3)
    assert g.chains() == ((0, 0, 0), (0, 1, 1), (1, 0, 2))
    assert g.groups(0) == ((0, 1), (2,))
    assert g.groups(1) == ((0, 2), (1,))
    assert g.groups(2) == ((0,), (1,), (2,))
    assert [g.n_groups(u) for u in range(3)] == [2, 2, 3]
    assert g.n_groups_per_unit() == (2, 2, 3)
    assert g.column(1) == (0, 1, 0)
    np.testing.assert_array_equal(g.to_array(), [[0, 0, 0], [0, 1, 1], [1, 0, 2]])


def test_special_matrices():
    merged = GroupingMatrix.all_merged(4, 3)
    alone = GroupingMatrix.individual(4, 3)
    assert merged.n_groups_per_unit() == (1, 1, 1)
    assert alone.n_groups_per_unit() == (4, 4, 4)
    assert merged.groups(2) == ((0, 1, 2, 3),)
    assert alone.chains()[2] == (2, 2, 2)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (6, 2)])
def test_round_trips(shape):
    g = GroupingMatrix.from_array(np.random.default_rng(1).integers(0, 3, size=shape))
    assert GroupingMatrix.from_json(g.to_json()) == g
    assert GroupingMatrix.from_json(g.to_list()) == g
    assert GroupingMatrix.from_key(g.key()) == g
    assert GroupingMatrix.from_array(g.to_array()) == g
    assert GroupingMatrix.from_columns(g.columns) == g


@pytest.mark.parametrize(
    "bad",
    [
        [[0, -1]],
        [[0, 0], [1]],
        [],
        [[0.5, 1.0]],
    ],
)
def test_bad_input_is_one_clear_error(bad):
    with pytest.raises(ModmergeError):
        GroupingMatrix.from_json(bad)


def test_bad_key():
    with pytest.raises(ModmergeError, match="bad key"):
        GroupingMatrix.from_key("0.x|1")


def test_count_configurations_is_bell_power():
    assert [count_configurations(t, 1) for t in range(1, 7)] == [1, 2, 5, 15, 52, 203]
    assert count_configurations(4, 6) == 15**6
