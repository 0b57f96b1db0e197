"""Fashion-MNIST tasks and the vision backbone's pretraining split (Debian ``dataset-fashion-mnist``).

The 60k official training images are cut ONCE, with a fixed seed that does not depend on the
task seed, into three disjoint pools (stratified by class):

- task-train pool (1/6, 10k images): every Fashion-MNIST task samples its train split here;
- task-validation pool (1/30, 2k images): every Fashion-MNIST task samples validation here;
- pretraining pool (the other 48k images): :func:`vision_pretraining_split`, for pretraining
  the zoo's ViT backbone inside the project.

Every Fashion-MNIST task's test split comes from the official 10k test set, so the
pretraining split is disjoint from every task's test split (and from Fashion tasks' train and
validation splits, whatever their seed). The MNIST and scikit-learn digit tasks come from
other sources (:mod:`modmerge.zoo.datasets.digits`) and share no images with it.
Images are float32 tensors N x 28 x 28 in [0, 1].
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from modmerge.zoo.assets import AssetError
from modmerge.zoo.datasets.base import (
    DEFAULT_SEED,
    IMAGE_SIZES,
    Split,
    SplitSizes,
    TaskData,
    require,
    sample_balanced,
    stratified_partition,
    task_rng,
)

FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle boot")  # fmt: skip
COARSE_CLASSES = ("tops", "bottoms & dresses", "footwear", "bags")
COARSE_OF_CLASS = (0, 1, 0, 1, 0, 2, 0, 2, 3, 2)  # Fashion-MNIST class id -> coarse group
POOL_SEED = 20200523  # fixed: the pretraining split must not move when a task seed changes
TASK_TRAIN_FRACTION, TASK_VALIDATION_FRACTION = 1 / 6, 1 / 30
_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (``.gz`` or raw) as numpy; only unsigned-byte IDX files are supported.

    Example::

        >>> read_idx(store.fashion_mnist() / "t10k-labels-idx1-ubyte.gz").shape   # doctest: +SKIP
        (10000,)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise AssetError(f"asset 'fashion_mnist': cannot read {path} ({err})") from err
    require(len(data) >= 4 and data[:2] == b"\x00\x00" and data[2] in _IDX_DTYPES, "fashion_mnist",
            f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    require(body.size == int(np.prod(dims)), "fashion_mnist", f"{path}: header says {dims}, got {body.size} values")
    return body.reshape(dims)


def read_fashion(fashion_dir: Path) -> dict[str, np.ndarray]:
    """``{"train_x", "train_y", "test_x", "test_y"}`` as uint8 arrays (images N x 28 x 28)."""
    d = Path(fashion_dir)
    arrays = {
        "train_x": read_idx(d / "train-images-idx3-ubyte.gz"),
        "train_y": read_idx(d / "train-labels-idx1-ubyte.gz"),
        "test_x": read_idx(d / "t10k-images-idx3-ubyte.gz"),
        "test_y": read_idx(d / "t10k-labels-idx1-ubyte.gz"),
    }
    for part in ("train", "test"):
        require(len(arrays[f"{part}_x"]) == len(arrays[f"{part}_y"]), "fashion_mnist",
                f"{part} images and labels differ in count in {d}")
    return arrays


def fashion_pools(train_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into the official train set: (task-train pool, task-validation pool, pretraining pool)."""
    n = len(train_labels)
    n_train, n_val = int(n * TASK_TRAIN_FRACTION), int(n * TASK_VALIDATION_FRACTION)
    parts = stratified_partition(train_labels, [n_train, n_val, n - n_train - n_val],
                                 np.random.default_rng(POOL_SEED))
    return parts[0], parts[1], parts[2]


def to_float_images(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W -> float32 tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0)


def vision_pretraining_split(fashion_dir: Path) -> Split:
    """The 48k Fashion-MNIST train images no task uses, with their 10-class labels.

    Example::

        >>> pre = vision_pretraining_split(store.fashion_mnist())   # doctest: +SKIP
        >>> pre.inputs.shape                                         # doctest: +SKIP
        torch.Size([48000, 28, 28])
    """
    data = read_fashion(fashion_dir)
    pool = np.sort(fashion_pools(data["train_y"])[2])
    return Split(to_float_images(data["train_x"][pool]), data["train_y"][pool].astype(int).tolist())


def _fashion_task(
    fashion_dir: Path, name: str, label_names: tuple[str, ...], relabel: np.ndarray,
    transform: Callable[[torch.Tensor], torch.Tensor], description: str, derived: bool,
    seed: int, sizes: SplitSizes,
) -> TaskData:
    data = read_fashion(fashion_dir)
    train_pool, val_pool, _ = fashion_pools(data["train_y"])
    rng = task_rng(seed, f"fashion/{name}")
    sources = (
        (data["train_x"], data["train_y"], train_pool, sizes.train),
        (data["train_x"], data["train_y"], val_pool, sizes.validation),
        (data["test_x"], data["test_y"], np.arange(len(data["test_y"])), sizes.test),
    )
    splits = []
    for images, labels, pool, size in sources:
        pool_labels = relabel[labels[pool]]
        chosen = pool[rng.permutation(sample_balanced(pool_labels, size, rng))]
        splits.append(Split(transform(to_float_images(images[chosen])), relabel[labels[chosen]].astype(int).tolist()))
    return TaskData(name=name, modality="image", label_names=label_names, train=splits[0],
                    validation=splits[1], test=splits[2], description=description,
                    source="fashion_mnist", derived=derived)


def fashion_task(fashion_dir: Path, seed: int = DEFAULT_SEED, sizes: SplitSizes = IMAGE_SIZES) -> TaskData:
    """Fashion-MNIST, 10 classes.

    Example::

        >>> fashion_task(store.fashion_mnist()).train.inputs.shape   # doctest: +SKIP
        torch.Size([5000, 28, 28])
    """
    return _fashion_task(fashion_dir, "fashion", FASHION_CLASSES, np.arange(10), _identity,
                         "Fashion-MNIST clothing type (10 classes)", False, seed, sizes)


def fashion_coarse_task(fashion_dir: Path, seed: int = DEFAULT_SEED, sizes: SplitSizes = IMAGE_SIZES) -> TaskData:
    """Derived: Fashion-MNIST grouped into tops / bottoms & dresses / footwear / bags.

    Example::

        >>> fashion_coarse_task(store.fashion_mnist()).label_names   # doctest: +SKIP
        ('tops', 'bottoms & dresses', 'footwear', 'bags')
    """
    return _fashion_task(fashion_dir, "fashion_coarse", COARSE_CLASSES, np.asarray(COARSE_OF_CLASS),
                         _identity, "derived: Fashion-MNIST coarse group (4 classes, balanced-ish)",
                         True, seed, sizes)


def fashion_inverted_task(fashion_dir: Path, seed: int = DEFAULT_SEED, sizes: SplitSizes = IMAGE_SIZES) -> TaskData:
    """Derived: Fashion-MNIST, 10 classes, with intensities inverted (1 - x): an input shift.

    Example::

        >>> float(fashion_inverted_task(store.fashion_mnist()).test.inputs.mean()) > 0.5   # doctest: +SKIP
        True
    """
    return _fashion_task(fashion_dir, "fashion_inverted", FASHION_CLASSES, np.arange(10), _invert,
                         "derived: Fashion-MNIST with inverted intensities (10 classes)", True, seed, sizes)


def _identity(images: torch.Tensor) -> torch.Tensor:
    return images


def _invert(images: torch.Tensor) -> torch.Tensor:
    return 1.0 - images
