"""Split sizing, balanced-ish sampling and stratified partitions."""

from __future__ import annotations

import numpy as np
import pytest

from modmerge.zoo.datasets.base import (
    SplitSizes,
    balanced_counts,
    build_splits,
    fit_sizes,
    sample_balanced,
    stratified_partition,
    task_rng,
)


@pytest.mark.parametrize(
    ("available", "total", "max_share", "expected"),
    [
        ([100, 100, 100], 90, 1.0, [30, 30, 30]),
        ([5, 100, 100], 65, 1.0, [5, 30, 30]),
        ([100, 1000, 1000], 900, 1.0, [100, 400, 400]),
        ([10, 10, 1000], 5000, 1.0, [10, 10, 1000]),
        ([10, 10, 1000], 5000, 0.6, [10, 10, 30]),
        ([10, 1000, 1000], 5000, 0.4, [10, 20, 20]),  # two big classes: cap until stable
        ([0, 50], 40, 1.0, [0, 40]),
    ],
)
def test_balanced_counts(available, total, max_share, expected):
    counts = balanced_counts(available, total, max_share)
    assert counts == expected
    assert all(c <= a for c, a in zip(counts, available, strict=True))
    assert max(counts) <= max_share * sum(counts) + 1e-9


def test_balanced_counts_rejects_bad_share():
    with pytest.raises(ValueError, match="max_share"):
        balanced_counts([1, 2], 3, 0.0)


@pytest.mark.parametrize(
    ("available", "expected"),
    [(10_000, (2000, 500, 2000)), (4000, (2000, 500, 1500)), (3000, (1600, 400, 1000)), (1400, (800, 200, 400))],
)
def test_fit_sizes(available, expected):
    sizes = fit_sizes(available, SplitSizes(2000, 500, 2000))
    assert sizes == expected and sum(sizes) <= available


def test_split_sizes_validate():
    with pytest.raises(ValueError, match="min_test"):
        SplitSizes(10, 5, 10, min_test=20)


def test_stratified_partition_sizes_disjoint_and_mixed():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    parts = stratified_partition(labels, [50, 20, 30], np.random.default_rng(3))
    assert [len(p) for p in parts] == [50, 20, 30]
    assert len(np.unique(np.concatenate(parts))) == 100
    for part in parts:  # every group keeps the 5:3:2 class mix, up to rounding
        share = np.bincount(labels[part], minlength=3) / len(part)
        assert np.allclose(share, [0.5, 0.3, 0.2], atol=0.06)


def test_stratified_partition_can_leave_a_remainder():
    parts = stratified_partition([0] * 7 + [1] * 3, [4, 2], np.random.default_rng(0))
    assert [len(p) for p in parts] == [4, 2]
    with pytest.raises(ValueError, match="cannot take 11"):
        stratified_partition([0] * 10, [6, 5], np.random.default_rng(0))


def test_sample_balanced_respects_share():
    labels = np.array([0] * 500 + [1] * 40 + [2] * 60)
    chosen = sample_balanced(labels, 300, np.random.default_rng(0), max_share=0.5)
    counts = np.bincount(labels[chosen], minlength=3)
    assert counts.tolist() == [100, 40, 60] and len(set(chosen.tolist())) == len(chosen)


def test_task_rng_is_stable_and_keyed():
    a = task_rng(0, "tweets/airline").integers(1 << 30, size=4)
    assert a.tolist() == task_rng(0, "tweets/airline").integers(1 << 30, size=4).tolist()
    assert a.tolist() != task_rng(0, "tweets/apple").integers(1 << 30, size=4).tolist()
    assert a.tolist() != task_rng(1, "tweets/airline").integers(1 << 30, size=4).tolist()


def test_build_splits_deterministic_disjoint_and_sized():
    texts = [f"text {i}" for i in range(300)]
    labels = [i % 3 for i in range(300)]
    sizes = SplitSizes(100, 30, 100, min_test=50)
    first = build_splits(texts, labels, sizes, task_rng(7, "k"))
    again = build_splits(texts, labels, sizes, task_rng(7, "k"))
    other = build_splits(texts, labels, sizes, task_rng(8, "k"))
    assert [s.inputs for s in first] == [s.inputs for s in again]
    assert first[0].inputs != other[0].inputs
    assert [len(s) for s in first] == [100, 30, 100]
    seen = [set(s.inputs) for s in first]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    for split in first:
        assert all(labels[int(t.split()[1])] == y for t, y in zip(split.inputs, split.labels, strict=True))
