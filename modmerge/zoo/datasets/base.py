"""Typed task data and the seeded sampling helpers every source loader shares.

A task is three labelled splits with fixed maximum sizes (:class:`SplitSizes`). Loaders draw
them with :func:`task_rng`, so the same seed gives the same splits on every machine, and
sample classes "balanced-ish" with :func:`balanced_counts` (as equal as the data allow, with
an optional cap on the largest class's share).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from modmerge.zoo.assets import AssetError

DEFAULT_SEED = 0
Modality = Literal["text", "image"]
SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitSizes:
    """Largest train / validation / test sizes; ``min_test`` is kept when data run short.

    When fewer than ``train + validation + min_test`` examples exist, see :func:`fit_sizes`.
    """

    train: int
    validation: int
    test: int
    min_test: int = 1000

    def __post_init__(self) -> None:
        if min(self.train, self.validation, self.test) < 1 or self.min_test > self.test:
            raise ValueError(f"bad split sizes {self}: all must be >= 1 and min_test <= test")


TEXT_SIZES = SplitSizes(train=2000, validation=500, test=2000)
IMAGE_SIZES = SplitSizes(train=5000, validation=1000, test=10000)


@dataclass(frozen=True)
class Split:
    """One split: ``inputs`` are strings (text) or a float32 N x H x W tensor in [0, 1] (image)."""

    inputs: list[str] | torch.Tensor
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> list[int]:
        """Examples per class id, ``0 .. num_classes - 1``."""
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=num_classes).tolist()


@dataclass(frozen=True)
class TaskData:
    """A classification task with fixed splits.

    ``derived`` marks tasks built by relabelling or transforming another task's inputs
    (e.g. MNIST parity); ``source`` names the asset(s) the data come from.

    Example::

        >>> split = Split(["a", "b"], [0, 1])
        >>> task = TaskData("toy", "text", ("neg", "pos"), split, split, split, "toy", "none")
        >>> task.summary()["train"]
        [1, 1]
    """

    name: str
    modality: Modality
    label_names: tuple[str, ...]
    train: Split
    validation: Split
    test: Split
    description: str
    source: str
    derived: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def splits(self) -> dict[str, Split]:
        """``{"train": ..., "validation": ..., "test": ...}``."""
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def summary(self) -> dict[str, list[int]]:
        """Class counts per split name."""
        return {name: split.class_counts(self.num_classes) for name, split in self.splits().items()}


def task_rng(seed: int, key: str) -> np.random.Generator:
    """A generator determined by ``seed`` and a stable key (crc32 of the key, not ``hash``).

    Example::

        >>> task_rng(0, "sotu").integers(1000) == task_rng(0, "sotu").integers(1000)
        np.True_
    """
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def fit_sizes(available: int, sizes: SplitSizes) -> tuple[int, int, int]:
    """Split sizes for ``available`` examples: full train/validation, test as large as allowed.

    When data run short, test keeps ``min_test`` and train/validation shrink together, as long
    as they keep at least half their budget; with even less, all three shrink in proportion.

    Example::

        >>> fit_sizes(10_000, SplitSizes(2000, 500, 2000))
        (2000, 500, 2000)
        >>> fit_sizes(3000, SplitSizes(2000, 500, 2000))   # short: test keeps min_test
        (1600, 400, 1000)
        >>> fit_sizes(1400, SplitSizes(2000, 500, 2000))   # very short: all shrink
        (800, 200, 400)
    """
    budget = sizes.train + sizes.validation
    if available >= budget + sizes.min_test:
        return sizes.train, sizes.validation, min(sizes.test, available - budget)
    rest = available - sizes.min_test
    if 2 * rest >= budget:
        train = round(rest * sizes.train / budget)
        return train, rest - train, sizes.min_test
    scale = available / (budget + sizes.min_test)
    train, validation = int(sizes.train * scale), round(sizes.validation * scale)
    return train, validation, available - train - validation


def balanced_counts(available: Sequence[int], total: int, max_share: float = 1.0) -> list[int]:
    """Per-class sample counts summing to at most ``total``, as equal as availability allows.

    Water-filling: every class gets the same quota, classes with fewer examples give their
    leftover to the others. With ``max_share < 1`` the total shrinks until no class holds more
    than that share (a nearly one-class source then yields a small but usable task).

    Example::

        >>> balanced_counts([100, 1000, 1000], 900)
        [100, 400, 400]
        >>> balanced_counts([10, 10, 1000], 1000, max_share=0.6)
        [10, 10, 30]
    """
    counts = [0] * len(available)
    remaining, open_classes = min(total, sum(available)), list(range(len(available)))
    while remaining > 0 and open_classes:
        quota = max(remaining // len(open_classes), 1)
        for c in list(open_classes):
            take = min(quota, available[c] - counts[c], remaining)
            counts[c] += take
            remaining -= take
            if counts[c] == available[c]:
                open_classes.remove(c)
            if remaining == 0:
                break
    if not 0 < max_share <= 1:
        raise ValueError(f"max_share must be in (0, 1], got {max_share}")
    # Capping one class shrinks the total and can push another over the share: repeat until stable.
    while counts and max(counts) > max_share * sum(counts) + 1e-9:
        rest = sum(counts) - max(counts)
        cap = int(max_share * rest / (1 - max_share) + 1e-9)
        counts = [min(count, cap) for count in counts]
    return counts


def stratified_partition(labels: Sequence[int], sizes: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle indices of ``labels`` into consecutive groups of ``sizes``, each with the same class mix.

    Per class, indices go to groups in proportion to the group sizes (largest remainder);
    exact group sizes are then met by moving the few rounding leftovers.

    Example::

        >>> parts = stratified_partition([0] * 6 + [1] * 6, [6, 4, 2], np.random.default_rng(0))
        >>> [len(p) for p in parts], [int(sum(np.isin(p, range(6)))) for p in parts]
        ([6, 4, 2], [3, 2, 1])
    """
    labels_arr = np.asarray(labels)
    if sum(sizes) > len(labels_arr):
        raise ValueError(f"cannot take {sum(sizes)} examples from {len(labels_arr)}")
    fractions = np.asarray(sizes, dtype=np.float64) / max(len(labels_arr), 1)
    groups: list[list[int]] = [[] for _ in sizes]
    spare: list[int] = []
    for cls in np.unique(labels_arr):
        idx = rng.permutation(np.flatnonzero(labels_arr == cls))
        want = fractions * len(idx)
        alloc = np.floor(want).astype(int)
        for g in np.argsort(-(want - alloc), kind="stable")[: int(np.rint(want.sum())) - alloc.sum()]:
            alloc[g] += 1
        start = 0
        for g, n in enumerate(alloc):
            groups[g].extend(idx[start : start + n].tolist())
            start += n
        spare.extend(idx[start:].tolist())
    # Rounding can leave groups over or under their size by a few; settle from/into the spare pool.
    spare = rng.permutation(np.asarray(spare, dtype=np.int64)).tolist()
    for g, size in enumerate(sizes):
        while len(groups[g]) > size:
            spare.append(groups[g].pop(int(rng.integers(len(groups[g])))))
    for g, size in enumerate(sizes):
        while len(groups[g]) < size:
            groups[g].append(spare.pop())
    return [rng.permutation(np.asarray(group, dtype=np.int64)) for group in groups]


def sample_balanced(labels: Sequence[int], total: int, rng: np.random.Generator, max_share: float = 1.0) -> np.ndarray:
    """Indices of a balanced-ish sample (see :func:`balanced_counts`) of at most ``total``."""
    labels_arr = np.asarray(labels)
    num_classes = int(labels_arr.max()) + 1 if len(labels_arr) else 0
    available = np.bincount(labels_arr, minlength=num_classes).tolist() if num_classes else []
    counts = balanced_counts(available, total, max_share)
    chosen = [rng.choice(np.flatnonzero(labels_arr == c), size=n, replace=False) for c, n in enumerate(counts)]
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def build_splits(
    inputs: Sequence[str], labels: Sequence[int], sizes: SplitSizes, rng: np.random.Generator,
    max_share: float = 1.0,
) -> tuple[Split, Split, Split]:
    """Balanced-ish sample of a text pool, cut into stratified train / validation / test splits."""
    budget = sizes.train + sizes.validation + sizes.test
    chosen = sample_balanced(labels, budget, rng, max_share)
    chosen_labels = [int(labels[i]) for i in chosen]
    parts = stratified_partition(chosen_labels, fit_sizes(len(chosen), sizes), rng)
    return tuple(  # type: ignore[return-value]
        Split([inputs[chosen[i]] for i in part], [chosen_labels[i] for i in part]) for part in parts
    )


def require(condition: bool, asset: str, message: str) -> None:
    """Raise a one-line :class:`AssetError` about ``asset`` unless ``condition`` holds."""
    if not condition:
        raise AssetError(f"asset '{asset}': {message}")
