"""The surrogate encoding is invariant to group renumbering and separates partitions."""

from __future__ import annotations

import itertools

import numpy as np

from modmerge.search import GroupingMatrix, encode, encode_labels, encode_many, encoding_size


def test_size_and_values():
    g = GroupingMatrix.from_array([[0, 0], [0, 1], [1, 1]])
    assert encode(g).shape == (encoding_size(3, 2),)
    # unit 0: pairs (0,1)=same, (0,2)=no, (1,2)=no, count (2-1)/2; unit 1: no, no, same, 0.5
    assert encode(g).tolist() == [1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 1.0, 0.5]
    assert encode(g, with_counts=False).shape == (encoding_size(3, 2, with_counts=False),)


def test_invariant_to_renumbering_raw_labels():
    rng = np.random.default_rng(0)
    for _ in range(100):
        labels = rng.integers(0, 5, size=(5, 4))
        renumbered = labels.copy()
        for u in range(labels.shape[1]):
            renumbered[:, u] = rng.permutation(20)[labels[:, u]]
        np.testing.assert_array_equal(encode_labels(labels), encode_labels(renumbered))
        assert np.array_equal(encode(GroupingMatrix.from_array(labels)), encode_labels(renumbered))


def test_distinct_partitions_get_distinct_codes():
    # every partition of 4 tasks in one unit (15 of them) has its own code
    codes = set()
    for labels in itertools.product(range(4), repeat=4):
        g = GroupingMatrix.from_array(np.array(labels)[:, None])
        codes.add((g, tuple(encode(g, with_counts=False))))
    assert len({g for g, _ in codes}) == 15
    assert len({c for _, c in codes}) == 15


def test_encode_many_stacks():
    gs = [GroupingMatrix.all_merged(3, 2), GroupingMatrix.individual(3, 2)]
    m = encode_many(gs)
    assert m.shape == (2, encoding_size(3, 2))
    np.testing.assert_array_equal(m[1], encode(gs[1]))
