"""Image tasks and the pretraining split on tiny fake IDX / JSON assets."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from modmerge.zoo.assets import AssetError
from modmerge.zoo.datasets import IMAGE_TASKS, load_vision_pretraining
from modmerge.zoo.datasets.digits import read_mnist_json, sklearn_digits_task
from modmerge.zoo.datasets.fashion import COARSE_OF_CLASS, read_fashion, read_idx


def _keys(images: torch.Tensor) -> set[bytes]:
    """Images as 8-bit byte strings, robust to float round-off (e.g. 1 - (1 - x))."""
    return {img.tobytes() for img in np.rint(images.numpy() * 255).astype(np.uint8)}


def test_read_idx_roundtrip_and_rejects_garbage(fake_store, tmp_path):
    data = read_fashion(fake_store.fashion_mnist())
    assert data["train_x"].shape == (600, 28, 28) and data["train_x"].dtype == np.uint8
    assert data["test_y"].shape == (100,) and set(data["test_y"].tolist()) == set(range(10))
    bad = tmp_path / "bad-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab"))  # float IDX: unsupported
    with pytest.raises(AssetError, match="not an unsigned-byte IDX"):
        read_idx(bad)


@pytest.mark.parametrize("name", sorted(IMAGE_TASKS))
def test_image_tasks_shape_range_determinism(fake_store, small_image_sizes, name):
    spec = IMAGE_TASKS[name]
    first, again = spec.load(fake_store, 1, small_image_sizes), spec.load(fake_store, 1, small_image_sizes)
    other = spec.load(fake_store, 2, small_image_sizes)
    assert first.modality == "image" and first.derived == spec.derived
    for split, split_again in zip(first.splits().values(), again.splits().values(), strict=True):
        assert split.inputs.dtype == torch.float32 and split.inputs.shape[1:] == (28, 28)
        assert float(split.inputs.min()) >= 0.0 and float(split.inputs.max()) <= 1.0
        assert torch.equal(split.inputs, split_again.inputs) and split.labels == split_again.labels
        assert max(split.labels) < first.num_classes
    assert not torch.equal(first.train.inputs, other.train.inputs)
    train, val, test = (_keys(s.inputs) for s in first.splits().values())
    assert not (train & val or train & test or val & test)


def test_fashion_tasks_sizes_and_coarse_labels(fake_store, small_image_sizes):
    fine = IMAGE_TASKS["fashion"].load(fake_store, 0, small_image_sizes)
    coarse = IMAGE_TASKS["fashion_coarse"].load(fake_store, 0, small_image_sizes)
    assert [len(s) for s in fine.splits().values()] == [50, 10, 100]
    assert fine.summary()["test"] == [10] * 10
    data = read_fashion(fake_store.fashion_mnist())
    fine_of = {img.tobytes(): int(y) for img, y in zip(data["test_x"], data["test_y"], strict=True)}
    for img, y in zip(coarse.test.inputs, coarse.test.labels, strict=True):
        raw = np.rint(img.numpy() * 255).astype(np.uint8).tobytes()
        assert COARSE_OF_CLASS[fine_of[raw]] == y


def test_inverted_fashion_is_one_minus_pixels(fake_store, small_image_sizes):
    task = IMAGE_TASKS["fashion_inverted"].load(fake_store, 0, small_image_sizes)
    plain = _keys(IMAGE_TASKS["fashion"].load(fake_store, 0, small_image_sizes).test.inputs)
    assert _keys(1.0 - task.test.inputs) == plain  # full test set, same images, inverted


def test_pretraining_split_is_disjoint_from_every_task_split(fake_store, small_image_sizes):
    pre = load_vision_pretraining(fake_store)
    assert pre.inputs.shape == (480, 28, 28)
    pre_keys = _keys(pre.inputs)
    for seed in (0, 1, 2):
        for name, spec in IMAGE_TASKS.items():
            task = spec.load(fake_store, seed, small_image_sizes)
            splits = task.splits().items() if name.startswith("fashion") else [("test", task.test)]
            for split_name, split in splits:
                images = 1.0 - split.inputs if name == "fashion_inverted" else split.inputs
                assert not pre_keys & _keys(images), (name, seed, split_name)
    assert torch.equal(load_vision_pretraining(fake_store).inputs, pre.inputs)  # seed-free


def test_mnist_tasks_share_pools_and_relabel(fake_store, small_image_sizes):
    images, labels = read_mnist_json(fake_store.mnist_json())
    assert images.shape == (300, 28, 28) and labels.tolist() == sorted(labels.tolist())
    digit = IMAGE_TASKS["mnist"].load(fake_store, 0, small_image_sizes)
    parity = IMAGE_TASKS["mnist_parity"].load(fake_store, 0, small_image_sizes)
    rotated = IMAGE_TASKS["mnist_rot90"].load(fake_store, 0, small_image_sizes)
    for name in ("train", "validation", "test"):
        d, p, r = digit.splits()[name], parity.splits()[name], rotated.splits()[name]
        assert torch.equal(d.inputs, p.inputs) and p.labels == [y % 2 for y in d.labels]
        assert torch.equal(torch.rot90(d.inputs, 1, dims=(1, 2)), r.inputs) and r.labels == d.labels
    assert parity.label_names == ("even", "odd") and parity.derived and not digit.derived


def test_sklearn_digits_are_padded_like_mnist():
    task = sklearn_digits_task()
    assert [len(s) for s in task.splits().values()] == [900, 200, 697]
    images = task.train.inputs
    assert images.shape[1:] == (28, 28)
    assert float(images[:, :4].abs().max()) == 0.0 and float(images[:, :, -4:].abs().max()) == 0.0
    assert float(images.max()) > 0.9
