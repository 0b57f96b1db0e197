"""Surrogate features of a grouping matrix that do not change when groups are renumbered.

Per unit, one bit per task pair ``(i, j)``, ``i < j``: 1 when both tasks share a group in that
unit. The bits determine the partition exactly, so nothing is lost, and renumbering groups
cannot change them. Optionally each unit also contributes its normalised group count
``(N_l - 1) / (T - 1)``, which is a sum of the bits' information but helps tree models (the
storage cost grows with it).

Example::

    >>> from modmerge.experts.grouping import GroupingMatrix
    >>> encode(GroupingMatrix.from_array([[0], [0], [1]]), with_counts=False).tolist()
    [1.0, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modmerge.experts.grouping import GroupingMatrix

__all__ = ["encode", "encode_labels", "encode_many", "encoding_size"]


def encoding_size(n_tasks: int, n_units: int, *, with_counts: bool = True) -> int:
    """Length of :func:`encode`'s vector.

    >>> encoding_size(4, 6)
    42
    """
    per_unit = n_tasks * (n_tasks - 1) // 2 + (1 if with_counts else 0)
    return per_unit * n_units


def encode_labels(labels: np.ndarray, *, with_counts: bool = True) -> np.ndarray:
    """Encode a raw ``T x L`` label array (any numbering per column) as a float64 vector.

    >>> a = np.array([[0, 2], [0, 5]])
    >>> b = np.array([[9, 1], [9, 3]])
    >>> bool(np.array_equal(encode_labels(a), encode_labels(b)))
    True
    """
    labels = np.asarray(labels)
    n_tasks, n_units = labels.shape
    rows, cols = np.triu_indices(n_tasks, k=1)
    # same[l, p] = 1 when the p-th task pair shares a group in unit l
    same = (labels[rows, :] == labels[cols, :]).T.astype(np.float64)
    if not with_counts:
        return same.reshape(-1)
    counts = np.array([len(np.unique(labels[:, u])) for u in range(n_units)], dtype=np.float64)
    scaled = (counts - 1.0) / max(n_tasks - 1, 1)
    return np.concatenate([same, scaled[:, None]], axis=1).reshape(-1)


def encode(g: GroupingMatrix, *, with_counts: bool = True) -> np.ndarray:
    """Feature vector of one grouping matrix (see the module docstring).

    >>> encode(GroupingMatrix.individual(3, 1)).tolist()
    [0.0, 0.0, 0.0, 1.0]
    """
    return encode_labels(g.to_array(), with_counts=with_counts)


def encode_many(gs: Sequence[GroupingMatrix], *, with_counts: bool = True) -> np.ndarray:
    """Stack :func:`encode` over ``gs`` into an ``n x D`` matrix (``n`` may be 0).

    >>> encode_many([GroupingMatrix.all_merged(2, 2)] * 3).shape
    (3, 4)
    """
    if not gs:
        return np.zeros((0, 0), dtype=np.float64)
    return np.stack([encode(g, with_counts=with_counts) for g in gs])
